r"""Local Lipschitz constants of self-attention: the Jacobian of $X \mapsto F(X)$ and its
spectral norm.

$F(X)_i = v[\mu_X](x_i)$ (or the projected field $P_{x_i} v[\mu_X](x_i)$ of an
`AttentionFlow` on the sphere) is a map $\mathbb{R}^{nd} \to \mathbb{R}^{nd}$; its local
Lipschitz constant at $X$ is $\|DF(X)\|_2 = \sqrt{\lambda_{\max}(DF^\top DF)}$. `lipschitz`
finds it matrix-free (LOBPCG, Knyazev 2001, or power iteration: one linearisation, then one
`jvp` and its transpose per iteration), `lipschitz_dense` from the dense Jacobian
(`jacobian`, for small clouds and cross-checks). Castin, Ablin, Peyré (*How Smooth Is
Attention?*, ICML 2024) study how this constant grows with $n$ and the radius.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .._checks import check_choice, check_cloud, check_weights, is_concrete
from ..attention import AbstractAttention
from ..flows import AttentionFlow

__all__ = [
    "METHODS",
    "LipschitzEstimate",
    "Model",
    "jacobian",
    "lipschitz",
    "lipschitz_dense",
    "velocity_map",
]

Model = AbstractAttention | AttentionFlow | Callable
"""What the Lipschitz functions accept: an attention operator, a flow, or any function of
the cloud (see `velocity_map`)."""


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
"""The eigensolvers of `lipschitz`: LOBPCG or power iteration on $DF^T DF$."""


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
