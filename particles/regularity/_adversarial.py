r"""Clouds with large local Lipschitz constants: built by hand, or found by gradient ascent.

`adversarial_cloud` builds the configuration behind the $\sqrt{n}$ lower bound of Castin,
Ablin, Peyré (*How Smooth Is Attention?*, ICML 2024): one leader attended by the $n - 1$
other tokens, so that moving it moves $n - 1$ outputs and $\|DF\|_2 \gtrsim \sqrt{n - 1}$.
The logit gap that makes the followers follow is derived for both signs of the dominant
eigenvalue of $\mathrm{sym}(Q^\top K)$ (`best_gap` chooses it). `worst_cloud` searches for
clouds with a larger constant by projected gradient ascent on the top singular value of
$DF(X)$, over the ball of radius $R$ or the unit sphere.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_positive, check_supported, is_concrete
from ..attention import Attention, DotProduct
from ..flows import AttentionFlow
from ..spaces import Sphere
from ._jacobian import Model, _prepare, _unit

__all__ = ["CloudSearch", "adversarial_cloud", "best_gap", "worst_cloud"]


def _leader_direction(Q, K):
    """Unit eigenvector $u$ of the symmetric part of $Q^\\top K$ of largest $|\\lambda|$,
    and $\\lambda = \\langle Q u, K u\\rangle$."""
    M = Q.T @ K
    vals, vecs = jnp.linalg.eigh((M + M.T) / 2)
    i = jnp.argmax(jnp.abs(vals))
    return vecs[:, i], vals[i]


def best_gap(n, top=None) -> Float[Array, ""]:
    r"""The logit gap $\Delta^*$ that maximises $p\,(1 + (1 - p)\Delta)$,
    $p = 1/(1 + (n - 1)e^{-\Delta})$, over $0 < \Delta \le$ `top` (`None`: no cap).

    Setting the derivative $p(1-p)\,(2 + (1 - 2p)\Delta)$ to zero gives the unique root of
    $(2p - 1)\Delta = 2$, so $p^* = 1/2 + 1/\Delta^*$, and $\Delta^* \approx \log(n - 1) +
    4/\log(n - 1)$ for large $n$: $p^*$ tends to $1/2$ only like $1/\log n$. Measured (float64):
    $\Delta^*$ = 2.399, 3.333, 3.857, 4.412, 5.593 and $p^*$ = 0.917, 0.800, 0.759, 0.727,
    0.679 at $n$ = 2, 8, 16, 32, 128 (against $\log(n - 1)$ = 0, 1.95, 2.71, 3.43, 4.84). Solved
    by bisection to rounding; capped at `top` (the largest gap the ball allows), where the
    estimate still increases.
    """
    n = jnp.asarray(n, dtype=jnp.result_type(float))
    log_m = jnp.log(n - 1)

    def excess(g):
        # (2p - 1) g - 2 with 2p - 1 = tanh((g - log(n - 1)) / 2), stable for large n
        return jnp.tanh((g - log_m) / 2) * g - 2

    # excess(0) = -2 < 0 and excess(log(n - 1) + 4) >= tanh(2) * 4 - 2 > 0
    lo, hi = jnp.zeros_like(log_m), log_m + 4
    for _ in range(80):
        mid = (lo + hi) / 2
        below = excess(mid) < 0
        lo, hi = jnp.where(below, mid, lo), jnp.where(below, hi, mid)
    gap = (lo + hi) / 2
    return gap if top is None else jnp.minimum(gap, top)


def adversarial_cloud(
    attention: Attention,
    n: int,
    radius: float,
    *,
    offset: float | None = None,
    head: int = 0,
) -> Float[Array, "n d"]:
    r"""A cloud in the ball of radius $R$ where one token is attended by all the others.

    The mechanism behind the $\sqrt{n}$ lower bound of Castin, Ablin, Peyré (2024): one
    token attended by all the others. The exact positions below are ours. Let $u$ be a unit
    eigenvector of the symmetric part of $Q^\top K$ (of head `head`) with eigenvalue
    $\lambda$ of largest modulus. The leader is $x_1 = R u$ (first, so that causal
    attention sees it too) and the $n - 1$ followers sit together at $x_i = s u$. A
    follower's logits are $\beta\lambda s R$ towards the leader and $\beta\lambda s^2$
    towards every follower (itself included), so its gap towards the leader is
    $\Delta = \beta\lambda\, s (R - s)$, positive when $s$ has the sign of $\lambda$:

    - $\lambda > 0$: $s = oR$, $\Delta = \beta|\lambda| R^2\, o(1 - o) \le \beta|\lambda|R^2/4$
      (at $o = 1/2$);
    - $\lambda < 0$: $s = -oR$, $\Delta = \beta|\lambda| R^2\, o(1 + o) \le 2\beta|\lambda|R^2$
      (at $o = 1$: the followers opposite the leader).

    The followers attend to the leader with weight $p = 1/(1 + (n-1)e^{-\Delta})$, and
    moving the leader by $\delta$ along $u$ moves each follower's output by exactly
    $p\,(1 + (1 - p)\Delta)\, V u\, \delta$ (differentiate $p$: $\partial_\delta
    \sum_j P_{ij} x_j = p u + p(1-p)\beta\lambda s (R - s) u$), so
    $\|DF\|_2 \ge \sqrt{n - 1}\, p\,(1 + (1 - p)\Delta)\,|V u|$. This grows like
    $\sqrt{n}$ while $(n - 1)e^{-\Delta} \ll 1$ and stops once $n$ passes $e^{\Delta_{\max}}$.

    With `offset=None` the gap is `best_gap(n, top)`, the maximiser of
    $p(1 + (1 - p)\Delta)$ over the gaps the ball allows ($\Delta^*$ solves
    $(2p - 1)\Delta = 2$, so $p^* = 1/2 + 1/\Delta^*$: 0.92, 0.80, 0.73, 0.68 at $n$ = 2,
    8, 32, 128), and $o$ solves $o(1 \mp o) = \Delta^* / (\beta|\lambda|R^2)$ (the root in
    $(0, 1/2]$ for $\lambda > 0$, in $(0, 1]$ for $\lambda < 0$). The realised gap equals
    $\Delta^*$ for either sign.

    Args:
        attention: dot-product `Attention`; the cloud is built from head `head` (the other
            heads act on it as they will).
        n: number of tokens, at least 2.
        radius: radius $R$ of the ball.
        offset: $o = |s| / R$ in $(0, 1]$, placed on the side that makes the gap positive
            (the sign is applied for you); `None` for the choice above.
        head: the head whose $Q^\top K$ sets the direction.
    """
    if not isinstance(attention, Attention):
        raise TypeError(f"attention must be an Attention; got {type(attention).__name__}")
    check_supported(attention.kernel, (DotProduct,), "kernel", "the adversarial cloud")
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an int >= 2; got {n!r}")
    if not isinstance(head, (int, np.integer)) or not 0 <= head < attention.heads:
        raise ValueError(f"head must be an int in [0, {attention.heads}); got {head!r}")
    radius = check_positive(radius, "radius")
    if offset is not None and is_concrete(offset) and not 0 < float(offset) <= 1:
        raise ValueError(f"offset must lie in (0, 1]; got {offset}")
    dtype = attention.Q.dtype
    u, lam = _leader_direction(attention.Q[head], attention.K[head])
    negative = lam < 0
    if offset is None:
        scale = attention.beta * jnp.abs(lam) * radius**2
        safe = jnp.where(scale > 0, scale, 1)
        top = jnp.where(negative, 2.0, 0.25) * safe
        g = best_gap(n, top) / safe
        # o (1 - o) = g (lambda > 0, root in (0, 1/2]) or o (1 + o) = g (lambda < 0)
        offset = jnp.where(
            negative,
            2 * g / (1 + jnp.sqrt(1 + 4 * g)),
            2 * g / (1 + jnp.sqrt(jnp.clip(1 - 4 * g, 0, 1))),
        )
        offset = jnp.where(scale > 0, offset, 0.5)
    s = jnp.where(negative, -1.0, 1.0).astype(dtype) * offset * radius
    x = jnp.broadcast_to(s * u.astype(dtype), (n, u.shape[0]))
    return x.at[0].set(radius * u.astype(dtype))


class CloudSearch(eqx.Module):
    """Result of `worst_cloud`.

    Attributes:
        cloud: the cloud with the largest constant met during the ascent.
        value: its constant (estimated with the fixed number of power iterations).
        history: the constant at every step, shape `(steps,)`.
        clouds: the cloud at every step, shape `(steps, n, d)` (for animations).
    """

    cloud: Float[Array, "n d"]
    value: Float[Array, ""]
    history: Float[Array, " steps"]
    clouds: Float[Array, "steps n d"]


def worst_cloud(
    model: Model,
    x0: Float[Array, "n d"],
    radius: float | None = None,
    *,
    weights: Float[Array, " n"] | None = None,
    t: float = 0.0,
    steps: int = 100,
    step_size: float = 0.05,
    power_iters: int = 8,
    key: PRNGKeyArray | None = None,
) -> CloudSearch:
    r"""Search for a cloud with a large Lipschitz constant by projected gradient ascent.

    Maximises $\sigma(X) = \|DF(X) v_k\|$, where $v_k$ comes from `power_iters` power
    iterations on $DF^\top DF$ started from the previous step's vector (warm start, so a few
    iterations track the top singular vector); the gradient flows through those iterations.
    Step $k$ moves the cloud by $\eta_k = $ `step_size` $\cdot R\sqrt{n}\,(1 - k/\text{steps})$
    (Frobenius norm) along the normalised gradient and projects back onto the constraint set: the ball $|x_i| \le R$ or, for an
    `AttentionFlow` on `Sphere()`, the unit sphere.

    Args:
        model: as in `lipschitz`.
        x0: starting cloud.
        radius: radius $R$ of the ball (required in Euclidean space; must be `None` or 1 on
            the sphere).
        weights, t: as in `lipschitz`.
        steps: ascent steps.
        step_size: step length relative to $R$.
        power_iters: power iterations per step.
        key: start vector of the first power iteration (`None`: `jax.random.key(0)`).

    Returns:
        A `CloudSearch` with the best cloud found, its constant and the ascent history.
    """
    on_sphere = isinstance(model, AttentionFlow) and isinstance(model.space, Sphere)
    if on_sphere:
        if radius is not None and is_concrete(radius) and float(radius) != 1:
            raise ValueError(f"radius must be None or 1 for a flow on the sphere; got {radius}")
        radius = 1.0
    elif radius is None:
        raise ValueError("radius is required: the constant is unbounded on all of R^d")
    radius = check_positive(radius, "radius")
    for name, value in (("steps", steps), ("power_iters", power_iters)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if is_concrete(step_size) and not float(step_size) > 0:
        raise ValueError(f"step_size must be > 0; got {step_size}")
    f, x0 = _prepare(model, x0, weights, t)
    key = jax.random.key(0) if key is None else key

    def project(x):
        norms = jnp.linalg.norm(x, axis=-1, keepdims=True)
        if on_sphere:
            return x / norms
        return x * jnp.minimum(1, radius / jnp.where(norms > 0, norms, 1))

    def sigma(x, v):
        def iterate(v, _):
            jv = jax.jvp(f, (x,), (v,))[1]
            return _unit(jax.vjp(f, x)[1](jv)[0]), None

        v, _ = jax.lax.scan(iterate, v, None, length=power_iters)
        v = jax.lax.stop_gradient(v)
        jv = jax.jvp(f, (x,), (v,))[1]
        return jnp.sqrt(jnp.sum(jv * jv)), v

    def ascend(state, k):
        x, v = state
        (value, v), g = jax.value_and_grad(sigma, has_aux=True)(x, v)
        # Linearly decaying steps: large moves explore, small ones settle on a peak.
        eta = step_size * radius * math.sqrt(x.shape[0]) * (1 - k / steps)
        return (project(x + eta * _unit(g)), v), (value, x)

    x0 = project(x0)
    v0 = _unit(jax.random.normal(key, x0.shape, x0.dtype))
    _, (history, clouds) = jax.lax.scan(ascend, (x0, v0), jnp.arange(steps, dtype=x0.dtype))
    best = jnp.argmax(history)
    return CloudSearch(cloud=clouds[best], value=history[best], history=history, clouds=clouds)
