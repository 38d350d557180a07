"""TODO docstring."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_positive, is_concrete
from ..attention import Attention, DotProduct
from ..flows import AttentionFlow
from ..spaces import Sphere
from ._jacobian import Model, _prepare, _unit


def _leader_direction(attention: Attention):
    """Unit eigenvector $u$ of the symmetric part of $Q^\\top K$ of largest $|\\lambda|$,
    and $\\lambda = \\langle Q u, K u\\rangle$."""
    M = attention.Q.T @ attention.K
    vals, vecs = jnp.linalg.eigh((M + M.T) / 2)
    i = jnp.argmax(jnp.abs(vals))
    return vecs[:, i], vals[i]


def _leader_cloud(u, radius, offset, n):
    x = jnp.broadcast_to(offset * radius * u, (n, u.shape[0]))
    return x.at[0].set(radius * u)


def adversarial_cloud(
    attention: Attention,
    n: int,
    radius: float,
    *,
    offset: float | None = None,
) -> Float[Array, "n d"]:
    r"""A cloud in the ball of radius $R$ where one token is attended by all the others.

    The mechanism behind the $\sqrt{n}$ lower bound of Castin, Ablin, Peyré (2024): one token
    attended by all the others, placed along an extreme eigenvector of $K^\top Q$. The exact
    positions below are ours (we could not check the paper's). Let $u$ be a unit eigenvector
    of the symmetric part of $K^\top Q$ with eigenvalue $\lambda$ of largest modulus. The
    leader is $x_1 = R u$ (first, so that causal attention sees it too) and the $n - 1$
    others sit at $x_i = a u$, $a = R\,\cdot$ `offset`. Their logit gap towards the leader is
    $\Delta = \beta\langle Q x_i, K x_1\rangle - \beta\langle Q x_i, K x_i\rangle
    = \beta \lambda a (R - a) \le \beta|\lambda| R^2 / 4$ (at $a = R/2$), so with $a$ of the
    sign of $\lambda$ they attend to the leader with weight $p = 1/(1 + (n-1)e^{-\Delta})$,
    and moving the leader by $u$ moves $n - 1$ outputs by about
    $|V u|\,p\,(1 + (1 - p)\Delta)$ each: $\|DF\|_2 \gtrsim \sqrt{n - 1}\,p(1 + (1-p)\Delta)$.
    This grows like $\sqrt{n}$ while $(n - 1) e^{-\Delta} \ll 1$ and stops growing once $n$
    passes $e^{\beta|\lambda|R^2/4}$.

    With `offset=None` the gap is chosen to maximise that estimate,
    $\Delta^* = \arg\max_{0 < \Delta \le \beta|\lambda|R^2/4} p(1 + (1-p)\Delta)$ (our choice:
    $\Delta^* \approx \log(n - 1)$, $p \approx 1/2$, for moderate $n$), and $a$ is the root
    in $(0, R/2]$ of $\beta|\lambda| a (R - a) = \Delta^*$. `offset=0.5` gives the largest
    gap, $p \to 1$ for small $n$.

    Args:
        attention: single-head dot-product `Attention`.
        n: number of tokens, at least 2.
        radius: radius $R$ of the ball.
        offset: $a / R$ in $(0, 1)$, on the side of $\operatorname{sign}\lambda$ (the sign
            is applied for you); `None` for the choice above.
    """
    if not isinstance(attention, Attention):
        raise TypeError(
            f"attention must be a single-head Attention; got {type(attention).__name__} "
            "(use Attention.head(h) for one head)"
        )
    if not isinstance(attention.kernel, DotProduct):
        raise NotImplementedError(
            "the adversarial construction needs the DotProduct kernel; got "
            f"{type(attention.kernel).__name__}"
        )
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an int >= 2; got {n!r}")
    radius = check_positive(radius, "radius")
    if offset is not None and is_concrete(offset) and not 0 < float(offset) < 1:
        raise ValueError(f"offset must lie in (0, 1); got {offset}")
    u, lam = _leader_direction(attention)
    dtype = attention.Q.dtype
    side = jnp.where(lam >= 0, 1.0, -1.0).astype(dtype)
    if offset is None:
        top = attention.beta * jnp.abs(lam) * radius**2 / 4
        gaps = top * jnp.linspace(0, 1, 4097, dtype=dtype)[1:]
        p = 1 / (1 + (n - 1) * jnp.exp(-gaps))
        gap = gaps[jnp.argmax(p * (1 + (1 - p) * gaps))]
        offset = (1 - jnp.sqrt(jnp.clip(1 - gap / jnp.where(top > 0, top, 1), 0, 1))) / 2
        offset = jnp.where(top > 0, offset, 0.5)
    return _leader_cloud(u.astype(dtype), radius, side * offset, n)


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
