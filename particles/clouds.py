r"""Initial clouds, drawn from explicit `jax.random` keys.

Every sampler returns an array of shape `(n, d)`; the same key gives the same cloud.
Uniform points on the sphere $S^{d-1}$ are the random starts of the clustering results of
Geshkovski, Letrouit, Polyanskiy, Rigollet (2023); Gaussian clouds are the samples whose
mean-field limit has a closed form (`particles.meanfield`); equiangular clouds (every
$\langle x_i, x_j\rangle = \rho$) stay equiangular under the flow with $Q = K = V = I$,
so their dynamics reduce to one ODE (`particles.closedforms.equiangular_rate`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import check_cloud, is_concrete

__all__ = [
    "ball_uniform",
    "cube_uniform",
    "equiangular",
    "from_array",
    "gaussian",
    "sphere_uniform",
]


def _check_size(n, d):
    for name, value in (("n", n), ("d", d)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")


def sphere_uniform(key: PRNGKeyArray, n: int, d: int) -> Float[Array, "n d"]:
    """`n` points uniform on the unit sphere $S^{d-1} \\subset \\mathbb{R}^d$ (normalised
    Gaussians)."""
    _check_size(n, d)
    z = jax.random.normal(key, (n, d))
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True)


def gaussian(
    key: PRNGKeyArray, n: int, mean: Float[Array, " d"], cov: Float[Array, "d d"]
) -> Float[Array, "n d"]:
    """`n` i.i.d. samples of $N(m, S)$; `cov` must be symmetric positive semidefinite."""
    mean, cov = jnp.asarray(mean), jnp.asarray(cov)
    if mean.ndim != 1:
        raise ValueError(f"mean must have shape (d,); got {mean.shape}")
    d = mean.shape[0]
    _check_size(n, d)
    if cov.shape != (d, d):
        raise ValueError(f"cov must have shape ({d}, {d}); got {cov.shape}")
    if is_concrete(cov):
        c = np.asarray(cov, dtype=float)
        if not np.allclose(c, c.T, atol=1e-6) or np.linalg.eigvalsh((c + c.T) / 2).min() < -1e-6:
            raise ValueError("cov must be symmetric positive semidefinite")
    return jax.random.multivariate_normal(key, mean, cov, (n,), method="eigh")


def ball_uniform(key: PRNGKeyArray, n: int, d: int, radius: float = 1.0) -> Float[Array, "n d"]:
    """`n` points uniform in the ball $\\{|x| \\le r\\}$ (direction uniform, radius $r U^{1/d}$)."""
    _check_size(n, d)
    if not radius > 0:
        raise ValueError(f"radius must be > 0; got {radius}")
    kd, kr = jax.random.split(key)
    u = sphere_uniform(kd, n, d)
    return radius * u * jax.random.uniform(kr, (n, 1)) ** (1 / d)


def cube_uniform(key: PRNGKeyArray, n: int, d: int, half_width: float = 1.0) -> Float[Array, "n d"]:
    """`n` points uniform in the cube $[-a, a]^d$."""
    _check_size(n, d)
    if not half_width > 0:
        raise ValueError(f"half_width must be > 0; got {half_width}")
    return jax.random.uniform(key, (n, d), minval=-half_width, maxval=half_width)


def equiangular(n: int, d: int, rho: float, key: PRNGKeyArray | None = None) -> Float[Array, "n d"]:
    r"""`n` unit vectors with every pairwise inner product equal to `rho`.

    The Gram matrix $G = (1 - \rho) I + \rho \mathbf{1}\mathbf{1}^\top$ is factored through its
    eigendecomposition; it is positive semidefinite for $-1/(n-1) \le \rho \le 1$ and has rank
    $n$, except $n - 1$ at $\rho = -1/(n-1)$ (a regular simplex) and $1$ at $\rho = 1$. The
    rank must not exceed `d`. With `key`, the configuration is rotated at random.
    """
    _check_size(n, d)
    lo = -1 / (n - 1) if n > 1 else -1.0
    if not lo - 1e-12 <= rho <= 1:
        raise ValueError(f"rho must lie in [-1/(n-1), 1] = [{lo:.6g}, 1] for n={n}; got {rho}")
    gram = (1 - rho) * np.eye(n) + rho * np.ones((n, n))
    vals, vecs = np.linalg.eigh(gram)
    rank = int(np.sum(vals > 1e-10))
    if rank > d:
        raise ValueError(
            f"an equiangular cloud of n={n} tokens with rho={rho} needs d >= {rank}; got d={d}"
        )
    order = np.argsort(vals)[::-1][:rank]
    x = np.zeros((n, d))
    x[:, :rank] = vecs[:, order] * np.sqrt(vals[order])
    x = jnp.asarray(x, dtype=jnp.zeros(()).dtype)
    if key is not None:
        rotation, _ = jnp.linalg.qr(jax.random.normal(key, (d, d), dtype=x.dtype))
        x = x @ rotation.T
    return x


def from_array(x) -> Float[Array, "n d"]:
    """A given cloud, validated (shape `(n, d)`, finite)."""
    return check_cloud(jnp.asarray(x), "x")
