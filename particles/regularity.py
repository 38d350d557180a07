r"""Regularity of attention: local Lipschitz constants, their upper bounds, and Wasserstein
stability of the flow.

**Local Lipschitz constant.** Self-attention maps a cloud $X = (x_1, \dots, x_n)$ to the
velocities $F(X) = (v[\mu_X](x_i))_i$, a map $\mathbb{R}^{nd} \to \mathbb{R}^{nd}$. Its local
Lipschitz constant at $X$ is the spectral norm $\|DF(X)\|_2$ of the Jacobian, computed here
matrix-free by LOBPCG or power iteration on $DF^\top DF$ (one `jvp` and one `vjp` per step), so no
$nd \times nd$ matrix is formed and $n \sim 10^3$ is cheap. On the sphere the map is
$X \mapsto (P_{x_i} v[\mu_X](x_i))_i$, $P_x = I - x x^\top$, taken as a map of the ambient
$\mathbb{R}^{nd}$ (pass an `AttentionFlow` with `Sphere()`).

Castin, Ablin, Peyré (*How Smooth Is Attention?*, ICML 2024) show that on a ball of radius
$R$ the constant can grow like $\sqrt{n}$ (one token attended by all the others) and stays
bounded for i.i.d. tokens (the mean-field regime); Kim, Papamakarios, Mnih (*The Lipschitz
Constant of Self-Attention*, ICML 2021) show that dot-product attention is not globally
Lipschitz while L2 attention with tied keys $K = Q$ is, with an explicit bound that grows with
$n$.

**Bounds.** `castin_bound` (Castin et al., Theorem 3.3) and `kim_bound` (Kim et al.,
Theorem 3.2) implement the papers' formulas, written in this package's notation.
`softmax_bound`, `l2_bound`, `unnormalized_bound` and the sphere and Wasserstein constants are
our own derivations (each proof is in its docstring); the first two are sharper than, and
never exceed, the papers' bounds. The tests check that every measured constant stays below
them.

**Wasserstein regularity** (Vuckovic, Baratin, Tachet des Combes, *A Mathematical Theory of
Attention*, 2020): on a compact set, $\mu \mapsto v[\mu]$ is Lipschitz from $W_1$ to the
sup norm, so two solutions of the flow separate at most like
$W_1(\mu_t, \nu_t) \le e^{L t} W_1(\mu_0, \nu_0)$. Exact $W_1$ between weighted clouds
comes from POT (`ot.emd2`, Euclidean cost), imported when first used.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from . import analysis
from ._checks import check_cloud, check_positive, check_weights, is_concrete
from .attention import AbstractAttention, MultiHeadAttention, SelfAttention
from .flows import AttentionFlow
from .spaces import Euclidean, Sphere

# ---------------------------------------------------------------------------------------
# The map X -> F(X) and its Jacobian
# ---------------------------------------------------------------------------------------

Model = AbstractAttention | AttentionFlow | Callable


def velocity_map(
    model: Model, weights: Float[Array, " n"] | None = None, t: float = 0.0
) -> Callable[[Float[Array, "n d"]], Float[Array, "n d"]]:
    r"""The map $X \mapsto F(X) \in \mathbb{R}^{n \times d}$ whose Lipschitz constant is measured.

    Args:
        model: an attention operator ($F(X)_i = v[\mu_X](x_i)$), an `AttentionFlow`
            ($F(X)_i = P_{x_i}(v[\mu_X](x_i) + f(x_i))$ at time `t`, so with `Sphere()` this is
            the projected field), or any function of the cloud.
        weights: token weights (`None`: uniform), held fixed.
        t: time at which a (layered) flow is evaluated.
    """
    if isinstance(model, AttentionFlow):
        return lambda x: model(t, x, weights)
    if isinstance(model, AbstractAttention):
        return lambda x: model(x, weights)
    if callable(model):
        return model
    raise TypeError(
        f"model must be an attention operator, an AttentionFlow or a function of the cloud; "
        f"got {type(model).__name__}"
    )


def _prepare(model, x, weights, t):
    x = check_cloud(x, "x")
    weights = check_weights(weights, x.shape[0])
    f = velocity_map(model, weights, t)
    out = jax.eval_shape(f, x)
    if out.shape != x.shape:
        raise ValueError(f"the model maps a cloud of shape {x.shape} to shape {out.shape}")
    return f, x


def jacobian(
    model: Model, x: Float[Array, "n d"], weights: Float[Array, " n"] | None = None, *, t=0.0
) -> Float[Array, "nd nd"]:
    r"""Dense Jacobian $DF(X)$ as an $nd \times nd$ matrix (row-major: index $i d + a$).

    Forward-mode (`jax.jacfwd`): $O(n^2 d^2)$ memory, for small clouds and cross-checks.
    """
    _, x = _prepare(model, x, weights, t)
    return _dense_jacobian(model, x, weights, t)


@eqx.filter_jit
def _dense_jacobian(model, x, weights, t):
    n, d = x.shape
    return jax.jacfwd(velocity_map(model, weights, t))(x).reshape(n * d, n * d)


def lipschitz_dense(
    model: Model, x: Float[Array, "n d"], weights: Float[Array, " n"] | None = None, *, t=0.0
) -> Float[Array, ""]:
    r"""$\|DF(X)\|_2$ from the dense Jacobian's singular values (small clouds only)."""
    return jnp.linalg.norm(jacobian(model, x, weights, t=t), 2)


class LipschitzEstimate(eqx.Module):
    """Result of the matrix-free power iteration.

    Attributes:
        value: the estimate of $\\|DF(X)\\|_2$.
        iterations: power iterations used.
        converged: whether the relative eigen-residual reached `tol` within `max_iters`.
        residual: $\\|G v - \\rho v\\| / \\rho$ at the end, $G = DF^\\top DF$, $\\rho = v^\\top G v$.
        vector: the unit right singular vector $v$ (shape of the cloud): the perturbation of
            the cloud that the velocities amplify most.
    """

    value: Float[Array, ""]
    iterations: Int[Array, ""]
    converged: Bool[Array, ""]
    residual: Float[Array, ""]
    vector: Float[Array, "n d"]


def _unit(v):
    norm = jnp.sqrt(jnp.sum(v * v))
    return v / jnp.where(norm > 0, norm, 1)


def _check_iteration_options(tol, max_iters):
    if not isinstance(max_iters, (int, np.integer)) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive int; got {max_iters!r}")
    if is_concrete(tol) and not float(tol) > 0:
        raise ValueError(f"tol must be > 0; got {tol}")


METHODS = ("lobpcg", "power")


def lipschitz(
    model: Model,
    x: Float[Array, "n d"],
    weights: Float[Array, " n"] | None = None,
    *,
    t: float = 0.0,
    method: str = "lobpcg",
    tol: float = 1e-6,
    max_iters: int = 1000,
    key: PRNGKeyArray | None = None,
) -> LipschitzEstimate:
    r"""Local Lipschitz constant $\|DF(X)\|_2$ of $X \mapsto F(X)$, matrix-free.

    The largest eigenvalue $\rho = \sigma_{\max}^2$ of $G = DF^\top DF$ is found with
    products $G v$ only: one `jvp` (the map is linearised once) and its transpose per
    iteration, so no $nd \times nd$ matrix is ever formed. Two iterations:

    - `"power"`: $v \leftarrow G v / \|G v\|$. Converges like $(\rho_2/\rho_1)^k$, slowly
      when the top singular values nearly coincide (symmetric clouds).
    - `"lobpcg"` (default): locally optimal block-1 conjugate gradient (Knyazev 2001):
      Rayleigh-Ritz on $\operatorname{span}\{v, r, p\}$, $r = G v - \rho v$, $p$ the previous
      step. Converges like Lanczos, in $O(\sqrt{\rho_1/(\rho_1 - \rho_2)})$ iterations.

    Both stop when the relative eigen-residual $\|G v - \rho v\| \le \text{tol}\,\rho$,
    $\rho = v^\top G v$. Then $\rho$ lies within a relative `tol` of an eigenvalue of $G$
    (the largest, from a random start, almost surely) and the value $\sqrt\rho$ within
    about `tol / 2`, usually far closer (the error of a Rayleigh quotient is quadratic in
    the residual). Each iteration applies $G$ once; LOBPCG keeps $G v$ up to date by its
    recurrences, which hold to rounding.
    Jittable and vmappable (a `lax.while_loop`).

    Args:
        model: attention operator, `AttentionFlow` (e.g. on `Sphere()`) or function; see
            `velocity_map`.
        x: the cloud, shape `(n, d)`.
        weights: token weights (`None`: uniform).
        t: time for a layered flow.
        method: `"lobpcg"` or `"power"`.
        tol: relative eigen-residual at which to stop.
        max_iters: most iterations (one product $G v$ each).
        key: PRNG key of the random start vector (`None`: `jax.random.key(0)`).

    Returns:
        A `LipschitzEstimate` (value, iterations, converged, residual, vector).
    """
    from ._checks import check_choice

    check_choice(method, METHODS, "method")
    _check_iteration_options(tol, max_iters)
    _, x = _prepare(model, x, weights, t)
    key = jax.random.key(0) if key is None else key
    tol = jnp.asarray(tol, x.dtype)
    return _iterate(model, x, weights, t, key, tol, int(max_iters), method)


def _gram_operator(f, x):
    """$v \\mapsto DF^\\top DF v$ at `x`, from one linearisation."""
    _, forward = jax.linearize(f, x)
    backward = jax.linear_transpose(forward, x)
    return lambda v: backward(forward(v))[0]


def _dot(a, b):
    return jnp.sum(a * b)


# Each iteration applies G exactly once, so the compiled loop holds one copy of the
# linearised attention. State: (k, v, G v, p, G p, r) with r the next direction to multiply
# (LOBPCG) or unused (power). The start is v = 0 with r the random vector: the first
# Rayleigh-Ritz step then returns v = r / |r| and G v.


def _power_step(gram, state):
    k, v, gv, p, gp, r = state
    v = _unit(jnp.where(k == 0, r, gv))
    return k + 1, v, gram(v), p, gp, r


def _lobpcg_step(gram, state):
    k, v, gv, p, gp, r = state
    eps = jnp.finfo(v.dtype).eps
    r = _unit(r - _dot(v, r) * v)
    gr = gram(r)
    # p is orthogonalised against v and r twice; if nothing of it is left it is dropped
    # (a zero basis vector only adds the eigenvalue 0 <= rho to the Ritz problem).
    scale = jnp.sqrt(_dot(p, p))
    p, gp = p / jnp.where(scale > 0, scale, 1), gp / jnp.where(scale > 0, scale, 1)
    for _ in range(2):
        a, b = _dot(v, p), _dot(r, p)
        p, gp = p - a * v - b * r, gp - a * gv - b * gr
    norm = jnp.sqrt(_dot(p, p))
    keep = norm > jnp.sqrt(eps)
    p = jnp.where(keep, p / jnp.where(keep, norm, 1), 0)
    gp = jnp.where(keep, gp / jnp.where(keep, norm, 1), 0)
    basis, images = (v, r, p), (gv, gr, gp)
    h = jnp.array([[_dot(a, b) for b in images] for a in basis])
    _, vecs = jnp.linalg.eigh((h + h.T) / 2)
    c = vecs[:, -1]
    p_new = c[1] * r + c[2] * p
    gp_new = c[1] * gr + c[2] * gp
    v_new, gv_new = c[0] * v + p_new, c[0] * gv + gp_new
    norm = jnp.sqrt(_dot(v_new, v_new))
    # G = 0 (a constant map): every Ritz value is 0; keep r so that v stays a unit vector.
    ok = norm > 0
    v_new = jnp.where(ok, v_new / jnp.where(ok, norm, 1), r)
    gv_new = jnp.where(ok, gv_new / jnp.where(ok, norm, 1), gr)
    rho = _dot(v_new, gv_new)
    return k + 1, v_new, gv_new, p_new, gp_new, gv_new - rho * v_new


@eqx.filter_jit
def _iterate(model, x, weights, t, key, tol, max_iters, method):
    gram = _gram_operator(velocity_map(model, weights, t), x)
    step = _lobpcg_step if method == "lobpcg" else _power_step

    def residual(v, gv):
        rho = _dot(v, gv)
        return rho, jnp.sqrt(_dot(gv - rho * v, gv - rho * v))

    def unconverged(state):
        k, v, gv, *_ = state
        rho, res = residual(v, gv)
        return (k == 0) | ((k < max_iters) & (res > tol * rho))

    start = _unit(jax.random.normal(key, x.shape, x.dtype))
    zero = jnp.zeros_like(start)
    state = (jnp.array(0), zero, zero, zero, zero, start)
    k, v, gv, *_ = jax.lax.while_loop(unconverged, lambda s: step(gram, s), state)
    rho, res = residual(v, gv)
    rho = jnp.maximum(rho, 0)
    return LipschitzEstimate(
        value=jnp.sqrt(rho),
        iterations=k,
        converged=res <= tol * rho,
        residual=res / jnp.where(rho > 0, rho, 1),
        vector=v,
    )


# ---------------------------------------------------------------------------------------
# Adversarial clouds
# ---------------------------------------------------------------------------------------


def _leader_direction(attention: SelfAttention):
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
    attention: SelfAttention,
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
        attention: single-head dot-product `SelfAttention`.
        n: number of tokens, at least 2.
        radius: radius $R$ of the ball.
        offset: $a / R$ in $(0, 1)$, on the side of $\operatorname{sign}\lambda$ (the sign
            is applied for you); `None` for the choice above.
    """
    if not isinstance(attention, SelfAttention):
        raise TypeError(
            f"attention must be a single-head SelfAttention; got {type(attention).__name__} "
            "(use MultiHeadAttention.head(h) for one head)"
        )
    if attention.kernel != "dot":
        raise ValueError(f"the construction needs kernel='dot'; got kernel={attention.kernel!r}")
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


# ---------------------------------------------------------------------------------------
# Upper bounds
# ---------------------------------------------------------------------------------------


def _norm2(a):
    return jnp.linalg.norm(a, 2)


def _heads(attention):
    """(Q, K, V) of each head, as lists of matrices."""
    if isinstance(attention, MultiHeadAttention):
        return [(attention.Q[h], attention.K[h], attention.V[h]) for h in range(attention.heads)]
    return [(attention.Q, attention.K, attention.V)]


def _check_attention(attention, kernels, normalizations, what):
    if not isinstance(attention, (SelfAttention, MultiHeadAttention)):
        raise TypeError(
            f"attention must be a SelfAttention or MultiHeadAttention; got {type(attention).__name__}"
        )
    if attention.kernel not in kernels or attention.normalization not in normalizations:
        raise ValueError(
            f"{what} covers kernel in {kernels} with normalization in {normalizations}; got "
            f"kernel={attention.kernel!r}, normalization={attention.normalization!r}"
        )


def _check_radius(radius):
    """A positive radius, scalar or array (bounds are evaluated elementwise)."""
    radius = jnp.asarray(radius)
    if is_concrete(radius) and not np.all(np.asarray(radius) > 0):
        raise ValueError(f"radius must be > 0; got {radius}")
    return radius


def _check_n(n):
    if is_concrete(n) and not np.all(np.asarray(n) >= 1):
        raise ValueError(f"n must be >= 1; got {n}")
    return jnp.asarray(n)


def softmax_bound(attention: SelfAttention | MultiHeadAttention, n, radius) -> Float[Array, "..."]:
    r"""Upper bound on $\|DF(X)\|_2$ for softmax dot-product attention on the ball $|x_i| \le R$.

    $$ \mathrm{Lip} \le \sum_h \|V_h\|_2 \Big( \sqrt{n}\,\big(1 + \beta \|Q_h^\top K_h\|_2 R^2\big)
        + \beta \|Q_h^\top K_h\|_2 R^2 \Big). $$

    **Our derivation**, a sharper form of `castin_bound` (Castin, Ablin, Peyré 2024, Theorem
    3.3), which it never exceeds: for $c = \beta\|Q^\top K\|R^2$,
    $(\sqrt{n}(1 + c) + c)^2 \le 3(n + c^2(4n + 1))$ for all $n \ge 1$, $c \ge 0$. Valid for
    any weights and for causal masking.

    *Proof.* Write $M = Q^\top K$, $P_{ij} = w_j e^{\beta x_i^\top M x_j} / Z_i$ (rows sum to
    one; with masking, $P_{ij} = 0$ for $j > i$), $m_i = \sum_j P_{ij} x_j$,
    $\Sigma_i = \sum_j P_{ij} (x_j - m_i)(x_j - m_i)^\top$. Differentiating
    $F_i = V \sum_j P_{ij} x_j$, with $\delta P_{ij} = P_{ij}(\delta s_{ij} - \sum_k P_{ik}\delta s_{ik})$:
    $$ \delta F_i = V\Big[\underbrace{\sum_j P_{ij}\delta x_j}_{T_1}
       + \underbrace{\beta\,\Sigma_i M^\top \delta x_i}_{T_2}
       + \underbrace{\beta \sum_j P_{ij}(x_j - m_i)\, x_i^\top M \delta x_j}_{T_3}\Big]. $$
    $\|T_1\| \le \|P\|_2 \|\delta X\| \le \sqrt{\|P\|_1\|P\|_\infty}\,\|\delta X\| \le \sqrt{n}\,\|\delta X\|$
    (row sums 1, column sums at most $n$). $\|\Sigma_i\|_2 \le R^2$ (a covariance of a law on the
    ball), so $\|T_2\| \le \beta\|M\|R^2\|\delta X\|$. By Cauchy-Schwarz,
    $|T_{3,i}| \le \beta \big(\sum_j P_{ij}|x_j - m_i|^2\big)^{1/2} \big(\sum_j P_{ij} (R\|M\| |\delta x_j|)^2\big)^{1/2}$
    with the first factor $= (\operatorname{tr}\Sigma_i)^{1/2} \le R$; summing the squares over
    $i$ and using column sums $\le n$, $\|T_3\| \le \beta\|M\|R^2\sqrt{n}\,\|\delta X\|$. Heads add
    (triangle inequality). $\square$

    Args:
        attention: dot-product softmax `SelfAttention` or `MultiHeadAttention` (causal or not).
        n: number of tokens (scalar or array: the bound is evaluated elementwise).
        radius: radius $R$ of the ball containing the cloud.
    """

    def head(a, v, n, r):
        c = a * r**2
        return v * (jnp.sqrt(n) * (1 + c) + c)

    return _dot_softmax_bound(attention, n, radius, "softmax_bound", head)


def _dot_softmax_bound(attention, n, radius, what, head):
    """Sum over heads of `head(beta |Q^T K|, |V|, n, R)`, after checking the arguments."""
    _check_attention(attention, ("dot",), ("softmax",), what)
    n = _check_n(n)
    radius = _check_radius(radius)
    return sum(
        head(attention.beta * _norm2(Q.T @ K), _norm2(V), n, radius)
        for Q, K, V in _heads(attention)
    )


def unnormalized_bound(attention: SelfAttention | MultiHeadAttention, radius) -> Float[Array, ""]:
    r"""Upper bound on $\|DF(X)\|_2$ for unnormalized dot-product attention (USA) on the ball
    $|x_i| \le R$, uniform weights $w_j = 1/n$:

    $$ \mathrm{Lip} \le \sum_h \|V_h\|_2\, e^{c_h} (1 + 2 c_h), \qquad c_h = \beta\|Q_h^\top K_h\|_2 R^2, $$

    independent of $n$ but exponential in $R^2$. **Our derivation.**

    *Proof.* With $G_{ij} = w_j e^{\beta x_i^\top M x_j}$, $0 \le G_{ij} \le e^{c}/n$, so row and
    column sums of $G$ are at most $e^c$ and $\|G\|_2 \le e^c$. Differentiating
    $F_i = V\sum_j G_{ij} x_j$:
    $\delta F_i = V[\sum_j G_{ij}\delta x_j + \beta\sum_j G_{ij} x_j x_j^\top M^\top \delta x_i + \beta \sum_j G_{ij} x_j x_i^\top M\delta x_j]$;
    the three terms are bounded by $e^c$, $\beta R^2 \|M\| e^c$ and $\beta R^2\|M\|\,\|G\|_2$
    times $\|\delta X\|$. $\square$
    """
    _check_attention(attention, ("dot",), ("unnormalized",), "unnormalized_bound")
    radius = _check_radius(radius)
    total = 0.0
    for Q, K, V in _heads(attention):
        c = attention.beta * _norm2(Q.T @ K) * radius**2
        total = total + _norm2(V) * jnp.exp(c) * (1 + 2 * c)
    return total


def lambert_w0(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """Principal branch $W_0(x)$ of the Lambert function ($W e^W = x$) for $x \\ge 0$.

    Halley's iteration from $\\log(1 + x)$; converges to rounding in a few steps.
    """
    x = jnp.asarray(x, dtype=jnp.result_type(x, float))
    w = jnp.log1p(x)
    for _ in range(8):
        e = jnp.exp(w)
        f = w * e - x
        w = w - f / (e * (w + 1) - (w + 2) * f / (2 * w + 2))
    return w


def l2_bound(attention: SelfAttention | MultiHeadAttention, n) -> Float[Array, "..."]:
    r"""Global upper bound on $\|DF(X)\|_2$ for L2 softmax attention with tied keys $K = Q$,
    for every cloud in $\mathbb{R}^{nd}$ (uniform weights, causal or not):

    $$ \mathrm{Lip} \le \sum_h \|U_h\|_2 \|Q_h\|_2 \Big( \sqrt{n}
       + 2\,W + 2\sqrt{W (n - 1)/e} \Big), \qquad W = W_0\big((n-1)/e\big), $$

    where $V_h = U_h Q_h$ ($U_h = V_h Q_h^+$): the values must factor through the queries, as
    in the L2 attention of Kim, Papamakarios, Mnih (2021), which ties $K = Q$. **Our
    derivation**, a sharper form of `kim_bound` (their Theorem 3.2), which it never exceeds:
    $W = W_0((n-1)/e)$ is their $\varphi^{-1}(n-1)$, $\sqrt{W(n-1)/e} = W e^{W/2} \le W\sqrt{n}$
    makes the bracket at most $\sqrt{n}(4W + 1)$, and
    $\|U\|\|Q\| \le \|Q\|^2\|V(Q^\top Q)^+\|$.
    Returns `inf` for a head with $K \ne Q$ or a $V$ that does not factor through $Q$ (no
    finite global bound is implemented there; dot-product attention has none at all).

    *Proof.* With $y_i = Q x_i$, $F_i = U g_i(Y)$, $g_i = \sum_j P_{ij} y_j$,
    $P_{ij} \propto e^{-\beta r_{ij}^2/2}$, $r_{ij} = |y_i - y_j|$, so
    $\|DF\| \le \|U\|\|Q\|\,\|Dg\|$. Differentiating (the centring identity
    $\sum_j P_{ij}(y_j - m_i) = 0$ turns the $\delta y_i$ part into a covariance):
    $\delta g_i = \sum_j P_{ij}\delta y_j + \beta\Sigma_i \delta y_i
       + \beta\sum_j P_{ij}(y_j - m_i)(y_i - y_j)^\top\delta y_j$.
    Key fact: $Z_i = \sum_k e^{-\beta r_{ik}^2/2} \ge 1$ (the term $k = i$), so with
    $e_j = e^{-\beta r_{ij}^2/2}$,
    $\tfrac{\beta}{2}\sum_j P_{ij} r_{ij}^2 = \sum_{j\ne i} e_j\log(1/e_j) / (1 + \sum_{j \ne i} e_j)
    \le \max_{u > 0} u\log\tfrac{n-1}{u}/(1+u) = W$ (concavity of $e\log(1/e)$, then the
    maximiser solves $u e^u = (n-1)/e$, where the value is $u = W$). Hence
    $\|\Sigma_i\| \le \operatorname{tr}\Sigma_i \le \sum_j P_{ij} r_{ij}^2 \le 2W/\beta$, and
    $P_{ij} r_{ij}^2 \le r^2 e^{-\beta r^2/2} \le 2/(\beta e)$. The first term is at most
    $\sqrt{n}\,\|\delta Y\|$ as in `softmax_bound`, the second $2W\|\delta Y\|$, and by
    Cauchy-Schwarz the third is at most
    $\beta\,(2W/\beta)^{1/2}\big(\sum_{i \ne j} P_{ij} r_{ij}^2 |\delta y_j|^2\big)^{1/2}
    \le 2\sqrt{W(n-1)/e}\,\|\delta Y\|$. $\square$

    Args:
        attention: L2 softmax `SelfAttention` or `MultiHeadAttention`.
        n: number of tokens (scalar or array).
    """
    _check_attention(attention, ("l2",), ("softmax",), "l2_bound")
    n = _check_n(n)
    w = lambert_w0((n - 1) / math.e)
    g = jnp.sqrt(n) + 2 * w + 2 * jnp.sqrt(w * (n - 1) / math.e)
    total = 0.0
    for Q, K, V in _heads(attention):
        U = V @ jnp.linalg.pinv(Q)
        eps = 100 * jnp.finfo(Q.dtype).eps
        tied = jnp.linalg.norm(K - Q) <= eps * jnp.linalg.norm(Q)
        factors = jnp.linalg.norm(V - U @ Q) <= eps * jnp.linalg.norm(V) * (1 + jnp.linalg.cond(Q))
        head = _norm2(U) * _norm2(Q) * g
        total = total + jnp.where(tied & factors, head, jnp.inf)
    return total


def castin_bound(attention: SelfAttention | MultiHeadAttention, n, radius) -> Float[Array, "..."]:
    r"""The $\sqrt{n}$ bound of Castin, Ablin, Peyré (*How Smooth Is Attention?*, ICML 2024,
    PMLR 235:5817-5840), Theorem 3.3, for softmax dot-product attention on the ball
    $|x_i| \le R$:

    $$ \mathrm{Lip}\big(f|_{B_R^n}\big) \le \sqrt{3}\,\|V\|_2
       \big(\|A\|_2^2 R^4 (4n + 1) + n\big)^{1/2}, $$

    where their $f(X)_i = \sum_j \mathrm{softmax}_j(x_i^\top A x_j)\, V x_j$, so here
    $A = \beta Q^\top K$. Heads add (triangle inequality). The theorem is stated for uniform
    weights without a mask; `softmax_bound` (proof in its docstring) holds with weights and
    causal masks and never exceeds this formula, so the formula holds there too.

    Args:
        attention: dot-product softmax `SelfAttention` or `MultiHeadAttention` (causal or not).
        n: number of tokens (scalar or array: the bound is evaluated elementwise).
        radius: radius $R$ of the ball containing the cloud.
    """

    def head(a, v, n, r):
        return math.sqrt(3) * v * jnp.sqrt(a**2 * r**4 * (4 * n + 1) + n)

    return _dot_softmax_bound(attention, n, radius, "castin_bound", head)


def kim_bound(attention: SelfAttention | MultiHeadAttention, n) -> Float[Array, "..."]:
    r"""The $\ell_2$ bound of Kim, Papamakarios, Mnih (*The Lipschitz Constant of
    Self-Attention*, ICML 2021), Theorem 3.2, for L2 multi-head
    attention with tied keys, on all of $\mathbb{R}^{nd}$:

    $$ \mathrm{Lip}_2(F) \le \frac{\sqrt{N}}{\sqrt{D/H}}\,\big(4\varphi^{-1}(N - 1) + 1\big)
       \Big(\sum_h \|W^{Q,h}\|_2^4\, \|W^{V,h}\|_2^2\Big)^{1/2} \|W^O\|_2,
       \qquad \varphi(x) = x e^{x + 1}, $$

    so $\varphi^{-1}(N-1) = W_0((N-1)/e)$ (`lambert_w0`). Their head is
    $f^h(X) = P^h X A_h W^{V,h}$ with $P^h_{ij} \propto
    \exp(-\|x_i^\top W^{Q,h} - x_j^\top W^{Q,h}\|^2/\sqrt{D/H})$ and
    $A_h = W^{Q,h} W^{Q,h\top}/\sqrt{D/H}$, and $F = [f^1, \dots, f^H] W^O$. The factor
    $\|W^{Q,h}\|_2$ enters squared: $F$ is homogeneous of degree two in $W^Q$ (one power
    through $A_h$, one through the logits; $W^Q \to sW^Q$ maps $F(X)$ to $s F(sX)$), so no
    bound linear in $\|W^Q\|$ holds at every scale; the tests check the bound against the
    exact constant 1 of a cloud of coincident tokens for $\beta$ from $10^{-2}$ to $10^2$.

    In this package's notation (logits $-\beta|Q x_i - Q x_j|^2/2$, values $V x_j$, heads
    summed, $d_k$ rows of $Q$): $W^{Q,h\top} = (\beta\sqrt{d_k}/2)^{1/2} Q_h$,
    $A_h = \tfrac{\beta}{2}Q_h^\top Q_h$, $W^{V,h\top} = \tfrac{2}{\beta} V_h (Q_h^\top Q_h)^+$
    (the values must factor through the queries), $W^O$ the stack of $H$ identities
    ($\|W^O\|_2 = \sqrt{H}$), $D/H = d_k$; $\beta$ and $d_k$ cancel and each head contributes
    $a_h = \|Q_h\|_2^2 \|V_h (Q_h^\top Q_h)^+\|_2$:

    $$ \mathrm{Lip} \le \sqrt{n}\,\big(4 W_0((n-1)/e) + 1\big)\sqrt{H}\,
       \Big(\sum_h a_h^2\Big)^{1/2}. $$

    Returns `inf` for a head with $K \ne Q$ or values that do not factor through $Q$.
    `l2_bound` (proof in its docstring, also valid for causal masks) never exceeds this.

    Args:
        attention: L2 softmax `SelfAttention` or `MultiHeadAttention`.
        n: number of tokens (scalar or array).
    """
    _check_attention(attention, ("l2",), ("softmax",), "kim_bound")
    n = _check_n(n)
    heads = _heads(attention)
    squares = 0.0
    for Q, K, V in heads:
        G = jnp.linalg.pinv(Q.T @ Q)
        eps = 100 * jnp.finfo(Q.dtype).eps
        tied = jnp.linalg.norm(K - Q) <= eps * jnp.linalg.norm(Q)
        factors = jnp.linalg.norm(V - V @ G @ (Q.T @ Q)) <= eps * jnp.linalg.norm(V) * (
            1 + jnp.linalg.cond(Q) ** 2
        )
        a = _norm2(Q) ** 2 * _norm2(V @ G)
        squares = squares + jnp.where(tied & factors, a**2, jnp.inf)
    w = lambert_w0((n - 1) / math.e)
    return jnp.sqrt(n) * (4 * w + 1) * math.sqrt(len(heads)) * jnp.sqrt(squares)


def lipschitz_bound(
    model: AbstractAttention | AttentionFlow, n, radius=None
) -> Float[Array, "..."]:
    r"""The implemented upper bound on $\|DF(X)\|_2$ for `model`, over clouds of `n` tokens
    in the ball of radius `radius` (Euclidean) or on the unit sphere.

    Dispatches to the sharpest bound implemented: `softmax_bound` (dot, softmax; below
    `castin_bound`), `unnormalized_bound` (dot, USA) or `l2_bound` (L2 softmax, below
    `kim_bound`; `radius` unused). For an `AttentionFlow` on `Sphere()`
    ($F_i = P_{x_i} v_i$, $|x_i| = 1$), differentiating gives
    $\delta F_i = P_{x_i}\delta v_i - x_i v_i^\top \delta x_i - \langle x_i, v_i\rangle\delta x_i$,
    so (**our derivation**) $\mathrm{Lip}(F) \le \mathrm{Lip}(v)|_{R=1} + 2\max_i |v_i|$ with
    $|v_i| \le \sum_h \|V_h\|$ (softmax) or $\sum_h \|V_h\| e^{c_h}$ (USA).
    """
    if isinstance(model, AttentionFlow):
        if model.feedforward is not None:
            raise ValueError("no bound is implemented for a flow with a feed-forward term")
        attention = model.attention
        sphere = isinstance(model.space, Sphere)
        if not isinstance(model.space, (Sphere, Euclidean)):
            raise ValueError(f"no bound for the space {type(model.space).__name__}")
    else:
        attention, sphere = model, False
    _check_attention(attention, ("dot", "l2"), ("softmax", "unnormalized"), "lipschitz_bound")
    if sphere:
        if radius is not None and is_concrete(radius) and float(radius) != 1:
            raise ValueError(f"radius must be None or 1 on the sphere; got {radius}")
        radius = 1.0
    if attention.kernel == "l2":
        if attention.normalization != "softmax":
            raise ValueError("no bound is implemented for unnormalized L2 attention")
        bound = l2_bound(attention, n)
        speed = sum(_norm2(V) for _, _, V in _heads(attention))
    else:
        if radius is None:
            raise ValueError("radius is required for dot-product attention")
        radius = check_positive(radius, "radius")
        if attention.normalization == "softmax":
            bound = softmax_bound(attention, n, radius)
            speed = sum(_norm2(V) * radius for _, _, V in _heads(attention))
        else:
            bound = unnormalized_bound(attention, radius) + 0 * jnp.asarray(n)
            speed = sum(
                _norm2(V) * radius * jnp.exp(attention.beta * _norm2(Q.T @ K) * radius**2)
                for Q, K, V in _heads(attention)
            )
    return bound + 2 * speed if sphere else bound


# ---------------------------------------------------------------------------------------
# Wasserstein regularity
# ---------------------------------------------------------------------------------------


def _head_constants(attention, Q, K, V, radius):
    """(Lip in x of v[mu](.), Lip of mu -> v[mu](x) in W1, sup |v|) on the ball of radius R."""
    beta = attention.beta
    nV = _norm2(V)
    if attention.kernel == "dot":
        m = _norm2(Q.T @ K)
        c = beta * m * radius**2
        if attention.normalization == "softmax":
            return beta * nV * m * radius**2, nV * jnp.exp(2 * c) * (1 + 2 * c), nV * radius
        e = jnp.exp(c)
        return beta * nV * m * radius**2 * e, nV * e * (1 + c), nV * radius * e
    # L2 softmax: 0 >= s >= -S on the ball, |grad_y s| <= beta |K| (|Q| + |K|) R.
    nQ, nK = _norm2(Q), _norm2(K)
    S = beta * (nQ + nK) ** 2 * radius**2 / 2
    lip_x = beta * nV * _norm2(K.T @ Q) * radius**2
    lip_mu = nV * jnp.exp(S) * (1 + 2 * beta * nK * (nQ + nK) * radius**2)
    return lip_x, lip_mu, nV * radius


def _constants(model, radius):
    if isinstance(model, AttentionFlow):
        if model.feedforward is not None:
            raise ValueError("no bound is implemented for a flow with a feed-forward term")
        attention, sphere = model.attention, isinstance(model.space, Sphere)
    else:
        attention, sphere = model, False
    _check_attention(
        attention, ("dot", "l2"), ("softmax", "unnormalized"), "the Wasserstein bounds"
    )
    if attention.causal:
        raise ValueError(
            "causal attention is not a function of the measure alone: no Wasserstein bound"
        )
    if attention.kernel == "l2" and attention.normalization != "softmax":
        raise ValueError("no Wasserstein bound is implemented for unnormalized L2 attention")
    if sphere:
        if radius is not None and is_concrete(radius) and float(radius) != 1:
            raise ValueError(f"radius must be None or 1 on the sphere; got {radius}")
        radius = 1.0
    elif radius is None:
        raise ValueError("radius is required in Euclidean space")
    radius = check_positive(radius, "radius")
    parts = [_head_constants(attention, Q, K, V, radius) for Q, K, V in _heads(attention)]
    lip_x, lip_mu, speed = (sum(p[k] for p in parts) for k in range(3))
    return lip_x, lip_mu, speed, sphere


def measure_lipschitz_bound(
    model: AbstractAttention | AttentionFlow, radius=None
) -> Float[Array, ""]:
    r"""Bound $L_\mu$ with $\sup_{|x| \le R} |v[\mu](x) - v[\nu](x)| \le L_\mu W_1(\mu, \nu)$
    for measures on the ball of radius $R$ (on the sphere, $R = 1$ and the field is projected,
    which does not increase it).

    Vuckovic et al. (2020) prove that attention is Lipschitz in $W_1$ on compact sets; the
    constants below are **our derivation**, with $c = \beta\|Q^\top K\|R^2$:
    softmax dot $L_\mu = \|V\| e^{2c}(1 + 2c)$; USA dot $\|V\| e^{c}(1 + c)$; L2 softmax
    $\|V\| e^{S}(1 + 2\beta\|K\|(\|Q\| + \|K\|)R^2)$, $S = \beta(\|Q\|+\|K\|)^2R^2/2$;
    heads add.

    *Proof (softmax dot).* With $s(y) = \beta x^\top M y$, $D_\mu = \int e^{s}d\mu \ge e^{-c}$
    and $m_\nu = v$'s mean under $\nu$'s tilted law,
    $v[\mu](x) - v[\nu](x) = V\int (y - m_\nu)e^{s(y)}\,d(\mu - \nu)(y) / D_\mu$ (the
    $\nu$ integral of $(y - m_\nu) e^s$ vanishes). For a unit vector $u$ the integrand
    $u^\top V(y - m_\nu)e^{s(y)}$ has gradient norm at most $\|V\| e^{c}(1 + 2R\cdot\beta\|M\|R)$
    on the ball, so Kantorovich-Rubinstein duality gives the bound. USA and L2 are the same
    computation with $D \equiv 1$, resp. $e^{-S} \le e^s \le 1$. $\square$
    """
    return _constants(model, radius)[1]


def growth_rate_bound(model: AbstractAttention | AttentionFlow, radius=None) -> Float[Array, ""]:
    r"""Rate $L$ with $W_1(\mu_t, \nu_t) \le e^{L t} W_1(\mu_0, \nu_0)$ for two solutions of the
    flow that stay in the ball of radius $R$ (or on the unit sphere).

    $L = L_x + L_\mu$ (+ $2\sup|v|$ on the sphere), with $L_\mu$ from
    `measure_lipschitz_bound` and $L_x$ the Lipschitz constant of $x \mapsto v[\mu](x)$:
    softmax dot $\beta\|V\|\|Q^\top K\|R^2$ (the gradient is $\beta V\Sigma_x M^\top$, a
    tilted covariance), USA $\beta\|V\|\|Q^\top K\|R^2e^{c}$, L2 $\beta\|V\|\|K^\top Q\|R^2$.
    The Wasserstein stability is the result of Vuckovic et al. (2020); constants are **our
    derivation**.

    *Proof.* Couple $\mu_0, \nu_0$ optimally and follow both characteristics: the particles
    move with the field of their own measure, so
    $\tfrac{d}{dt}|X_t - Y_t| \le L_x|X_t - Y_t| + L_\mu W_1(\mu_t, \nu_t)$ and
    $D(t) = \mathbb{E}|X_t - Y_t| \ge W_1(\mu_t,\nu_t)$ obeys $D' \le (L_x + L_\mu) D$.
    On the sphere $P_x$ is a contraction on the ball and
    $|\delta(P_x v)| \le |\delta v| + 2|v||\delta x|$. Grönwall. $\square$
    """
    lip_x, lip_mu, speed, sphere = _constants(model, radius)
    return lip_x + lip_mu + (2 * speed if sphere else 0.0)


def _import_ot():
    """Import POT without its optional deep-learning backends: we hand it numpy arrays, and
    importing torch (when installed) would cost seconds. The switches only act if `ot` was
    not imported before."""
    import os
    import sys

    if "ot" not in sys.modules:
        for name in ("PYTORCH", "TENSORFLOW", "CUPY", "JAX"):
            os.environ.setdefault(f"POT_BACKEND_DISABLE_{name}", "1")
    import ot

    return ot


def _ot_available():
    if importlib.util.find_spec("ot") is None:
        raise ImportError("wasserstein needs POT (Python Optimal Transport): pip install pot")


def wasserstein(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    wx: Float[Array, " n"] | None = None,
    wy: Float[Array, " m"] | None = None,
    *,
    p: int = 1,
) -> Float[Array, ""]:
    r"""Exact Wasserstein distance $W_p(\mu, \nu)$, $\mu = \sum_i w^x_i\delta_{x_i}$,
    $\nu = \sum_j w^y_j \delta_{y_j}$, with Euclidean ground cost (POT `ot.emd2`, network
    simplex, in float64 on the host).

    $W_p^p = \min_{\pi \in \Pi(\mu, \nu)} \sum_{ij} \pi_{ij} |x_i - y_j|^p$. Tokens of weight
    zero are ignored. Works under `jit` and `vmap` (a `jax.pure_callback`, run
    sequentially); not differentiable. Returns NaN if the solver hits its iteration limit.

    Args:
        x, y: the two clouds (same `d`, any sizes).
        wx, wy: their weights (`None`: uniform).
        p: 1 or 2.
    """
    _ot_available()
    x, y = check_cloud(x, "x"), check_cloud(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension; got {x.shape[1]} and {y.shape[1]}")
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2; got {p!r}")
    wx = check_weights(wx, x.shape[0], "wx")
    wy = check_weights(wy, y.shape[0], "wy")
    dtype = jnp.result_type(x, y)
    wx = jnp.full((x.shape[0],), 1 / x.shape[0], dtype) if wx is None else wx.astype(dtype)
    wy = jnp.full((y.shape[0],), 1 / y.shape[0], dtype) if wy is None else wy.astype(dtype)

    def host(x, y, wx, wy):
        ot = _import_ot()

        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        a, b = np.asarray(wx, np.float64), np.asarray(wy, np.float64)
        keep_a, keep_b = a > 0, b > 0
        x, a, y, b = x[keep_a], a[keep_a], y[keep_b], b[keep_b]
        a, b = a / a.sum(), b / b.sum()
        cost = ot.dist(x, y, metric="euclidean")
        if p == 2:
            cost = cost**2
        value, log = ot.emd2(a, b, cost, numItermax=10_000_000, log=True)
        if log.get("warning"):
            value = np.nan
        return np.asarray(max(float(value), 0.0) ** (1 / p), dtype)

    return jax.pure_callback(
        host, jax.ShapeDtypeStruct((), dtype), x, y, wx, wy, vmap_method="sequential"
    )


def field_gap(
    model: AbstractAttention | AttentionFlow,
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    wx: Float[Array, " n"] | None = None,
    wy: Float[Array, " m"] | None = None,
    points: Float[Array, "q d"] | None = None,
) -> Float[Array, ""]:
    r"""$\max_k |v[\mu](z_k) - v[\nu](z_k)|$: how far apart the fields of two measures are, at
    probe points $z_k$ (default: the tokens of both clouds). For an `AttentionFlow` the
    fields are projected on the tangent spaces. Compare with
    `measure_lipschitz_bound(model, R) * wasserstein(x, y, wx, wy)`.
    """
    x, y = check_cloud(x, "x"), check_cloud(y, "y")
    points = jnp.concatenate([x, y]) if points is None else check_cloud(points, "points")
    if isinstance(model, AttentionFlow):
        gap = model.field(points, x, wx) - model.field(points, y, wy)
    elif isinstance(model, AbstractAttention):
        gap = model.cross(points, x, wx) - model.cross(points, y, wy)
    else:
        raise TypeError(
            f"model must be an attention operator or an AttentionFlow; got {type(model).__name__}"
        )
    return jnp.max(jnp.linalg.norm(gap, axis=-1))


MISSPECIFICATIONS = ("noise", "drop", "duplicate")


def misspecify(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    kind: str,
    amount,
    weights: Float[Array, " n"] | None = None,
    *,
    space=None,
) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
    r"""A mis-specified copy $(y, w')$ of the input measure $\mu = \sum_i w_i\delta_{x_i}$
    (Vuckovic et al. 2021, *On the Regularity of Attention*: attention as a map on measures
    is stable under such changes).

    Kinds (the cloud keeps its shape, so it runs under `jit`/`vmap`):

    - `"noise"`: $y_i = x_i + \sigma \xi_i$, $\xi_i \sim N(0, I)$, $\sigma$ = `amount`; with
      `space` (e.g. `Sphere()`) the result is retracted onto it.
    - `"drop"`: a random fraction `amount` $\in [0, 1)$ of the tokens gets weight zero (they
      leave the measure; in the flow they still move but no longer act).
    - `"duplicate"`: a random fraction `amount` $\in [0, 1]$ of the tokens is duplicated:
      their weight doubles (two coincident tokens are one token of twice the weight).

    Weights are renormalised to sum to one. Returns `(y, weights)`.
    """
    from ._checks import check_choice

    check_choice(kind, MISSPECIFICATIONS, "kind")
    x = check_cloud(x, "x")
    n = x.shape[0]
    weights = check_weights(weights, n)
    w = jnp.full((n,), 1 / n, x.dtype) if weights is None else weights.astype(x.dtype)
    if is_concrete(amount):
        a = float(amount)
        if not a >= 0:
            raise ValueError(f"amount must be >= 0; got {amount}")
        if kind == "drop" and not a < 1:
            raise ValueError(
                f"amount must be < 1 for kind='drop' (a token must stay); got {amount}"
            )
        if kind == "duplicate" and a > 1:
            raise ValueError(f"amount must be <= 1 for kind='duplicate'; got {amount}")
    if kind == "noise":
        y = x + amount * jax.random.normal(key, x.shape, x.dtype)
        return (space.retract(y) if space is not None else y), w
    chosen = jnp.argsort(jax.random.uniform(key, (n,))) < jnp.round(amount * n)
    w = jnp.where(chosen, 0.0 if kind == "drop" else 2 * w, w)
    return x, w / jnp.sum(w)


def power_law(x, y) -> tuple[float, float]:
    r"""Least-squares fit of $y = c\,x^{a}$ in log-log; returns `(a, c)`
    (`particles.analysis.fit_power_law`)."""
    return analysis.fit_power_law(x, y)


def separation_rate(ts, distances) -> float:
    r"""The measured exponential rate $\max_{t > t_0} \log(D(t)/D(t_0)) / (t - t_0)$ of a
    distance $D$ between two solutions: the smallest $L$ with $D(t) \le e^{L(t - t_0)} D(t_0)$
    on the saved times. Compare with `growth_rate_bound`."""
    ts, distances = np.asarray(ts, float), np.asarray(distances, float)
    if ts.shape != distances.shape or ts.ndim != 1 or ts.size < 2:
        raise ValueError(
            f"ts and distances must be 1-d of the same length >= 2; got {ts.shape}, {distances.shape}"
        )
    if not distances[0] > 0:
        raise ValueError(f"the initial distance must be > 0; got {distances[0]}")
    with np.errstate(divide="ignore"):
        rates = np.log(distances[1:] / distances[0]) / (ts[1:] - ts[0])
    return float(np.max(rates))
