r"""Wasserstein distances between clouds, Gaussians and densities on the circle.

- `wasserstein`: the exact $W_p$ ($p = 1, 2$) between two weighted clouds, by the
  network-simplex solver of POT (Flamary et al., *POT: Python Optimal Transport*, JMLR
  2021), `ot.emd2`, with the ground cost computed coordinate by coordinate so that nearby
  clouds keep their digits. It runs on the host in float64 through `jax.pure_callback`, so
  it can be called inside `jit` and `vmap` (sequentially). Cost $O(n^3)$ worst case; 4096
  points take about 2 s on two cores. `w2` is its $p = 2$ case.
- `sliced_w2`: the sliced $W_2$ (Rabin, Peyré, Delon, Bernot 2011) in pure JAX, for clouds
  too large for the exact solver: an average of one-dimensional $W_2^2$ over random directions.
- `gaussian_w2`: the closed form between Gaussians (Bures-Wasserstein), for cross-checks.
- `circle_w1`, `circle_w1_density`: $W_1$ on the circle $S^1 = \mathbb{R} / 2\pi\mathbb{Z}$ from
  cumulative distribution functions (Rabin, Delon, Gousseau 2011).

POT is imported when `wasserstein` is first called, not when this module is imported: everything else
here is pure JAX. Install it with `pip install pot`.
"""

from __future__ import annotations

import functools
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import check_cloud, check_weights

__all__ = ["wasserstein", "w2", "sliced_w2", "gaussian_w2", "circle_w1", "circle_w1_density"]

TWO_PI = 2 * math.pi


def _import_ot():
    """Import POT without its optional deep-learning backends: it is handed numpy arrays,
    and importing torch (when installed) would cost seconds. The switches act only if `ot`
    was not imported before."""
    if "ot" not in sys.modules:
        for name in ("PYTORCH", "TENSORFLOW", "CUPY", "JAX"):
            os.environ.setdefault(f"POT_BACKEND_DISABLE_{name}", "1")
    try:
        import ot
    except ImportError as e:  # pragma: no cover - exercised only without POT
        raise ImportError(
            "particles.wasserstein.wasserstein needs the Python Optimal Transport library: "
            "pip install pot"
        ) from e
    return ot


def _uniform(n, dtype):
    return jnp.full((n,), 1 / n, dtype)


def _pair(x, y, x_weights, y_weights):
    x, y = check_cloud(x, "x"), check_cloud(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension; got {x.shape[1]} and {y.shape[1]}")
    wx = check_weights(x_weights, x.shape[0], "x_weights")
    wy = check_weights(y_weights, y.shape[0], "y_weights")
    dtype = jnp.result_type(x.dtype, y.dtype)
    wx = _uniform(x.shape[0], dtype) if wx is None else wx.astype(dtype)
    wy = _uniform(y.shape[0], dtype) if wy is None else wy.astype(dtype)
    return x.astype(dtype), y.astype(dtype), wx, wy


def wasserstein(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    x_weights: Float[Array, " n"] | None = None,
    y_weights: Float[Array, " m"] | None = None,
    *,
    p: int = 2,
    max_iter: int = 10_000_000,
) -> Float[Array, ""]:
    r"""Exact $W_p(\mu, \nu)$ between $\mu = \sum_i a_i \delta_{x_i}$ and
    $\nu = \sum_j b_j \delta_{y_j}$ with the Euclidean ground distance:

    $$ W_p^p(\mu, \nu) = \min_{\pi \ge 0,\ \pi 1 = a,\ \pi^\top 1 = b}
       \sum_{ij} \pi_{ij} |x_i - y_j|^p, $$

    solved exactly by POT's network simplex (`ot.emd2`) in float64 on the host. The cost is
    built coordinate by coordinate, $|x_i - y_j|^2 = \sum_k (x_{ik} - y_{jk})^2$, never as
    $|x_i|^2 + |y_j|^2 - 2\langle x_i, y_j\rangle$: that expansion cancels to an absolute
    error of about $\epsilon |x|^2$, so for two clouds $10^{-6}$ apart it leaves no correct
    digit of $W_2$, while this form keeps the relative precision of each difference. The
    weights are renormalised to sum to one in float64 (POT requires equal masses to
    rounding); tokens of weight zero carry no mass.

    Runs under `jit` and `vmap` (a `jax.pure_callback`, evaluated sequentially); not
    differentiable.

    Args:
        x, y: clouds `(n, d)` and `(m, d)` of the same dimension.
        x_weights, y_weights: their weights (`None` is uniform).
        p: the order, 1 or 2.
        max_iter: iteration cap of the network simplex.

    Returns:
        $W_p$ as a scalar of the clouds' dtype; NaN if the simplex did not converge within
        `max_iter` (reported, not raised, so that it can run inside `jit`).
    """
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2; got {p!r}")
    x, y, wx, wy = _pair(x, y, x_weights, y_weights)
    ot = _import_ot()

    def host(x, y, a, b):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        cost = np.zeros((x.shape[0], y.shape[0]))
        for k in range(x.shape[1]):
            cost += (x[:, k, None] - y[None, :, k]) ** 2
        if p == 1:
            cost = np.sqrt(cost)
        value, log = ot.emd2(a / a.sum(), b / b.sum(), cost, numItermax=max_iter, log=True)
        if log.get("warning") is not None:
            return np.asarray(np.nan)
        return np.asarray(max(float(value), 0.0) ** (1 / p))

    out = jax.ShapeDtypeStruct((), x.dtype)
    return jax.pure_callback(
        lambda *a: host(*a).astype(out.dtype), out, x, y, wx, wy, vmap_method="sequential"
    )


def w2(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    x_weights: Float[Array, " n"] | None = None,
    y_weights: Float[Array, " m"] | None = None,
    *,
    max_iter: int = 10_000_000,
) -> Float[Array, ""]:
    """Exact $W_2$: `wasserstein(x, y, x_weights, y_weights, p=2)`."""
    return wasserstein(x, y, x_weights, y_weights, p=2, max_iter=max_iter)


def _w2_1d_squared(u, a, v, b):
    """$W_2^2$ between weighted point sets on the line, through their quantile functions.

    $W_2^2 = \\int_0^1 |F^{-1}(q) - G^{-1}(q)|^2 dq$; both quantile functions are step
    functions, constant between the merged cumulative levels.
    """
    iu, iv = jnp.argsort(u), jnp.argsort(v)
    u, a, v, b = u[iu], a[iu], v[iv], b[iv]
    cu, cv = jnp.cumsum(a), jnp.cumsum(b)
    cu, cv = cu / cu[-1], cv / cv[-1]
    levels = jnp.sort(jnp.concatenate([cu, cv]))
    widths = jnp.diff(levels, prepend=0.0)
    mid = levels - widths / 2
    qu = u[jnp.clip(jnp.searchsorted(cu, mid), 0, u.shape[0] - 1)]
    qv = v[jnp.clip(jnp.searchsorted(cv, mid), 0, v.shape[0] - 1)]
    return jnp.sum(widths * (qu - qv) ** 2)


def sliced_w2(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    x_weights: Float[Array, " n"] | None = None,
    y_weights: Float[Array, " m"] | None = None,
    *,
    projections: int = 256,
) -> Float[Array, ""]:
    r"""Sliced Wasserstein distance $SW_2(\mu, \nu) = \big(E_\theta W_2^2(\theta_\#\mu, \theta_\#\nu)\big)^{1/2}$.

    The expectation over directions $\theta$ uniform on $S^{d-1}$ is a Monte Carlo average over
    `projections` directions drawn from `key`; each one-dimensional $W_2^2$ is exact (sorted
    quantile functions). $SW_2 \le W_2$, and it metrises the same weak convergence. Cost
    $O(P (n + m) \log(n + m))$: for clouds far beyond the exact solver's reach.

    Args:
        key: PRNG key for the directions.
        x, y, x_weights, y_weights: as in `wasserstein`.
        projections: number of random directions $P$.

    Returns:
        $SW_2$, a scalar. Agrees with POT's `ot.sliced_wasserstein_distance` given the same
        directions.
    """
    x, y, wx, wy = _pair(x, y, x_weights, y_weights)
    if not isinstance(projections, int) or projections < 1:
        raise ValueError(f"projections must be a positive int; got {projections!r}")
    return _sliced(key, x, y, wx, wy, projections)


@functools.partial(jax.jit, static_argnums=5)
def _sliced(key, x, y, wx, wy, projections):
    theta = jax.random.normal(key, (projections, x.shape[1]), dtype=x.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=1, keepdims=True)
    per = jax.vmap(lambda t: _w2_1d_squared(x @ t, wx, y @ t, wy))(theta)
    return jnp.sqrt(jnp.mean(per))


def _sqrtm_psd(a):
    vals, vecs = jnp.linalg.eigh((a + a.T) / 2)
    return (vecs * jnp.sqrt(jnp.maximum(vals, 0))) @ vecs.T


def gaussian_w2(
    mean1: Float[Array, " d"],
    cov1: Float[Array, "d d"],
    mean2: Float[Array, " d"],
    cov2: Float[Array, "d d"],
) -> Float[Array, ""]:
    r"""Closed-form $W_2$ between $N(m_1, S_1)$ and $N(m_2, S_2)$ (Dowson and Landau 1982):

    $$ W_2^2 = |m_1 - m_2|^2 + \operatorname{tr}\big(S_1 + S_2
        - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}\big). $$
    """
    mean1, mean2 = jnp.asarray(mean1), jnp.asarray(mean2)
    cov1, cov2 = jnp.asarray(cov1), jnp.asarray(cov2)
    d = mean1.shape[-1]
    for name, m in (("mean1", mean1), ("mean2", mean2)):
        if m.shape != (d,):
            raise ValueError(f"{name} must have shape ({d},); got {m.shape}")
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        if c.shape != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}); got {c.shape}")
    r1 = _sqrtm_psd(cov1)
    cross = _sqrtm_psd(r1 @ cov2 @ r1)
    bures = jnp.trace(cov1) + jnp.trace(cov2) - 2 * jnp.trace(cross)
    return jnp.sqrt(jnp.maximum(jnp.sum((mean1 - mean2) ** 2) + bures, 0))


def _check_angles(theta, name):
    theta = jnp.asarray(theta)
    if theta.ndim != 1 or theta.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty 1-d array of angles; got shape {theta.shape}")
    if not jnp.issubdtype(theta.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array; got dtype {theta.dtype}")
    return theta


def circle_w1(
    theta_x: Float[Array, " n"],
    theta_y: Float[Array, " m"],
    x_weights: Float[Array, " n"] | None = None,
    y_weights: Float[Array, " m"] | None = None,
) -> Float[Array, ""]:
    r"""Exact $W_1$ on the circle of circumference $2\pi$ (geodesic cost) between two weighted
    sets of angles.

    With $F, G$ the cumulative distribution functions from angle 0 (Rabin, Delon, Gousseau 2011):

    $$ W_1(\mu, \nu) = \min_\alpha \int_0^{2\pi} |F(\theta) - G(\theta) - \alpha|\, d\theta, $$

    attained at a weighted median $\alpha$ of $F - G$. Both CDFs are step functions, so the
    integral is a finite sum over the merged, sorted angles. Agrees with POT's
    `ot.wasserstein_circle` (which works on $[0, 1)$) times $2\pi$.

    Args:
        theta_x, theta_y: angles (any real values; taken modulo $2\pi$).
        x_weights, y_weights: weights summing to one (`None` is uniform).
    """
    theta_x, theta_y = _check_angles(theta_x, "theta_x"), _check_angles(theta_y, "theta_y")
    wx = check_weights(x_weights, theta_x.shape[0], "x_weights")
    wy = check_weights(y_weights, theta_y.shape[0], "y_weights")
    dtype = jnp.result_type(theta_x.dtype, theta_y.dtype)
    wx = _uniform(theta_x.shape[0], dtype) if wx is None else wx.astype(dtype)
    wy = _uniform(theta_y.shape[0], dtype) if wy is None else wy.astype(dtype)
    return _circle_w1(jnp.concatenate([theta_x, theta_y]).astype(dtype), jnp.concatenate([wx, -wy]))


@jax.jit
def _circle_w1(theta, signed):
    """$W_1$ of the signed measure $\\sum_k s_k \\delta_{\\theta_k}$ (total mass zero)."""
    theta = jnp.mod(theta, TWO_PI)
    order = jnp.argsort(theta)
    theta, signed = theta[order], signed[order]
    f = jnp.cumsum(signed)  # F - G on [theta_k, theta_{k+1})
    lengths = jnp.diff(theta, append=theta[:1] + TWO_PI)
    # Weighted median of f with weights `lengths`: the minimiser of sum_k l_k |f_k - alpha|.
    i = jnp.argsort(f)
    cum = jnp.cumsum(lengths[i])
    alpha = f[i][jnp.searchsorted(cum, cum[-1] / 2)]
    return jnp.sum(lengths * jnp.abs(f - alpha))


def circle_w1_density(
    theta: Float[Array, " n"],
    density: Float[Array, " N"],
    weights: Float[Array, " n"] | None = None,
    *,
    atoms_per_cell: int = 16,
) -> Float[Array, ""]:
    r"""$W_1$ on the circle between particles at angles `theta` and a piecewise-constant density.

    `density` holds cell averages on the uniform grid of `N` cells of width $h = 2\pi/N$ (cell
    $i$ is $[i h, (i + 1) h)$, as in `particles.meanfield.circle_grid`), normalised so that
    $\sum_i \rho_i h = 1$. Each cell's mass is split into `atoms_per_cell` equal atoms at the
    midpoints of equal sub-cells; that moves no mass farther than $h / (4 \cdot
    \text{atoms\_per\_cell})$ on average, so the result is within $h / (4 \cdot
    \text{atoms\_per\_cell})$ of the exact distance (`circle_w1` does the rest exactly).
    """
    theta = _check_angles(theta, "theta")
    density = jnp.asarray(density)
    if density.ndim != 1 or density.shape[0] < 2:
        raise ValueError(f"density must be a 1-d array of at least 2 cells; got {density.shape}")
    if not isinstance(atoms_per_cell, int) or atoms_per_cell < 1:
        raise ValueError(f"atoms_per_cell must be a positive int; got {atoms_per_cell!r}")
    w = check_weights(weights, theta.shape[0])
    dtype = jnp.result_type(theta.dtype, density.dtype)
    w = _uniform(theta.shape[0], dtype) if w is None else w.astype(dtype)
    cells = density.shape[0]
    h = TWO_PI / cells
    sub = (jnp.arange(atoms_per_cell, dtype=dtype) + 0.5) / atoms_per_cell
    atoms = ((jnp.arange(cells, dtype=dtype)[:, None] + sub[None, :]) * h).reshape(-1)
    mass = jnp.repeat(density.astype(dtype) * h / atoms_per_cell, atoms_per_cell)
    mass = mass / jnp.sum(mass)
    return _circle_w1(jnp.concatenate([theta.astype(dtype), atoms]), jnp.concatenate([w, -mass]))
