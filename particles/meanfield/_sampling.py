r"""Weighted empirical measures: their moments, resampling, mixtures and Gaussian mixtures.

A cloud $x_1, \dots, x_n$ with weights $w_j \ge 0$, $\sum_j w_j = 1$, is the measure
$\mu = \sum_j w_j \delta_{x_j}$, the object the mean-field equation moves. `moments` gives the
mean and covariance of $\mu$ (what the Gaussian closed form predicts), `resample` draws an
equally weighted cloud that approximates $\mu$, `mixture` merges two measures into
$p\mu + (1 - p)\nu$, and `gaussian_mixture` samples $\sum_k p_k N(m_k, S_k)$. See
`docs/theory.md`, section 4 (Vuckovic, Baratin, Tachet des Combes 2020).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_choice, check_cloud, check_weights, is_concrete

__all__ = ["gaussian_mixture", "mixture", "moments", "resample"]


def _uniform(n, dtype):
    return jnp.full((n,), 1 / n, dtype)


def moments(
    x: Float[Array, "n d"], weights: Float[Array, " n"] | None = None
) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
    r"""Mean and covariance of the empirical measure $\mu = \sum_j w_j \delta_{x_j}$.

    $m = \sum_j w_j x_j$, $S = \sum_j w_j (x_j - m)(x_j - m)^\top$: the moments of the
    measure itself (no Bessel correction), which are what the mean-field limit predicts; the
    $O(1/n)$ bias is far below the $O(n^{-1/2})$ sampling error.

    Returns:
        `(mean (d,), cov (d, d))`.
    """
    x = check_cloud(x, "x")
    weights = check_weights(weights, x.shape[0])
    w = _uniform(x.shape[0], x.dtype) if weights is None else weights.astype(x.dtype)
    mean = w @ x
    centred = x - mean
    return mean, (centred * w[:, None]).T @ centred


def resample(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    weights: Float[Array, " n"] | None,
    n: int,
    *,
    method: str = "systematic",
) -> Float[Array, "n_out d"]:
    r"""Draw `n` equally weighted points whose empirical measure approximates $\mu$.

    Args:
        key: PRNG key.
        x: support points `(m, d)`; weights: their weights (`None` is uniform).
        n: number of points of the new cloud (weights $1/n$).
        method: `"multinomial"` (i.i.d. draws from $\mu$) or `"systematic"` (one uniform
            offset, $n$ evenly spaced quantiles: every atom of mass $w_j$ gets
            $\lfloor n w_j \rfloor$ or $\lceil n w_j \rceil$ copies, so the resampled measure
            is within $1/n$ of $\mu$ in total variation per atom).

    Returns:
        The resampled cloud `(n, d)`; both methods are unbiased: $E[\hat\mu] = \mu$.
    """
    x = check_cloud(x, "x")
    check_choice(method, ("multinomial", "systematic"), "method")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    weights = check_weights(weights, x.shape[0])
    w = _uniform(x.shape[0], x.dtype) if weights is None else weights.astype(x.dtype)
    if method == "multinomial":
        u = jax.random.uniform(key, (n,), dtype=x.dtype)
    else:
        u = (jax.random.uniform(key, (), dtype=x.dtype) + jnp.arange(n, dtype=x.dtype)) / n
    cdf = jnp.cumsum(w)
    index = jnp.searchsorted(cdf / cdf[-1], u, side="right")
    return x[jnp.clip(index, 0, x.shape[0] - 1)]


def mixture(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    p: float = 0.5,
    *,
    x_weights: Float[Array, " n"] | None = None,
    y_weights: Float[Array, " m"] | None = None,
) -> tuple[Float[Array, "n+m d"], Float[Array, " n+m"]]:
    r"""Merge two clouds into the mixture $p\,\mu + (1 - p)\,\nu$.

    Returns:
        `(points (n + m, d), weights (n + m,))`, the weights summing to one; feed both to
        `simulate(..., weights=)` to move the mixture.
    """
    x, y = check_cloud(x, "x"), check_cloud(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension; got {x.shape[1]} and {y.shape[1]}")
    if is_concrete(p) and not 0 <= p <= 1:
        raise ValueError(f"p must lie in [0, 1]; got {p}")
    wx = check_weights(x_weights, x.shape[0], "x_weights")
    wy = check_weights(y_weights, y.shape[0], "y_weights")
    wx = _uniform(x.shape[0], x.dtype) if wx is None else wx.astype(x.dtype)
    wy = _uniform(y.shape[0], x.dtype) if wy is None else wy.astype(x.dtype)
    return jnp.concatenate([x, y]), jnp.concatenate([p * wx, (1 - p) * wy])


def gaussian_mixture(
    key: PRNGKeyArray,
    n: int,
    means: Float[Array, "k d"],
    covs: Float[Array, "k d d"],
    probs: Float[Array, " k"] | None = None,
) -> Float[Array, "n d"]:
    r"""`n` i.i.d. samples of $\sum_k p_k N(m_k, S_k)$ (component by a categorical draw, then a
    Cholesky-free eigen square root of $S_k$, so semidefinite covariances are allowed)."""
    means, covs = jnp.asarray(means), jnp.asarray(covs)
    if means.ndim != 2:
        raise ValueError(f"means must have shape (k, d); got {means.shape}")
    k, d = means.shape
    if covs.shape != (k, d, d):
        raise ValueError(f"covs must have shape ({k}, {d}, {d}); got {covs.shape}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    probs = jnp.full((k,), 1 / k) if probs is None else check_weights(probs, k, "probs")
    kc, kz = jax.random.split(key)
    comp = jax.random.choice(kc, k, (n,), p=probs)
    vals, vecs = jnp.linalg.eigh((covs + jnp.swapaxes(covs, 1, 2)) / 2)
    roots = vecs * jnp.sqrt(jnp.maximum(vals, 0))[:, None, :]
    z = jax.random.normal(kz, (n, d), dtype=means.dtype)
    return means[comp] + jnp.einsum("nij,nj->ni", roots[comp], z)
