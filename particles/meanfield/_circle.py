r"""The mean-field equation on the circle, solved for the density itself.

On $S^1 \subset \mathbb{R}^2$ with $Q = K = V = I$ the attention velocity of a density $\rho$
is a convolution (`circle_velocity`), and the mean-field limit of the particle flow is the
continuity equation

$$ \partial_t \rho + \partial_\theta \big(\rho\, u[\rho]\big) = 0, $$

which `circle_flow` solves by finite volumes on a uniform grid (`circle_grid`) with diffrax in
time. `circle_sample`, `circle_points` and `circle_angles` move between densities, angles and
unit vectors, so that the same initial law can be given to the particle solver and compared
with `particles.wasserstein.circle_w1_density`.

Geshkovski, Letrouit, Polyanskiy, Rigollet, *The emergence of clusters in self-attention
dynamics* (2023); the scheme, and what it does and does not preserve, are in
`docs/theory.md`, section 4.3.
"""

from __future__ import annotations

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_choice, check_supported, value_check
from .._solve import AbstractSolution, Stats, check_solver, check_times, solve, stats
from ..attention import AbstractNormalization, Softmax, Unnormalized

__all__ = [
    "LIMITERS",
    "CircleSolution",
    "circle_angles",
    "circle_density",
    "circle_flow",
    "circle_grid",
    "circle_points",
    "circle_sample",
    "circle_velocity",
]

_TWO_PI = 2 * math.pi


LIMITERS = ("vanleer", "minmod", "upwind")
"""The slope limiters of the circle's finite-volume scheme (`circle_flow(limiter=...)`)."""


def _check_cells(cells):
    if not isinstance(cells, (int, np.integer)) or cells < 4:
        raise ValueError(f"cells must be an int >= 4; got {cells!r}")


def circle_grid(cells: int) -> Float[Array, " N"]:
    r"""Centres $\theta_i = (i + \tfrac12) h$, $h = 2\pi / N$, of the uniform grid on the circle.

    Cell $i$ is $[i h, (i + 1) h)$; its left face is at $i h$. Densities on this grid are
    cell averages $\rho_i$ with $\sum_i \rho_i h = 1$.
    """
    _check_cells(cells)
    return (jnp.arange(cells) + 0.5) * (_TWO_PI / cells)


def circle_density(values: Float[Array, " N"]) -> Float[Array, " N"]:
    r"""Normalise nonnegative cell values into a probability density:
    $\rho_i = v_i / (h \sum_j v_j)$."""
    values = jnp.asarray(values)
    if values.ndim != 1 or values.shape[0] < 4:
        raise ValueError(
            f"values must be a 1-d array of at least 4 cells; got shape {values.shape}"
        )
    bad = jnp.any(values < 0) | ~jnp.all(jnp.isfinite(values)) | ~(jnp.sum(values) > 0)
    values = value_check(values, bad, "values must be finite, nonnegative and not all zero")
    return values / (jnp.sum(values) * (_TWO_PI / values.shape[0]))


def _check_density(density, name="density"):
    density = jnp.asarray(density)
    if density.ndim != 1 or density.shape[0] < 4:
        raise ValueError(
            f"{name} must be a 1-d array of at least 4 cells; got shape {density.shape}"
        )
    if not jnp.issubdtype(density.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array; got dtype {density.dtype}")
    h = _TWO_PI / density.shape[0]
    mass = jnp.sum(density) * h
    bad = jnp.any(density < 0) | ~jnp.all(jnp.isfinite(density)) | (jnp.abs(mass - 1) > 1e-4)
    return value_check(
        density,
        bad,
        f"{name} must be finite, nonnegative, with total mass sum(density) * 2 pi / N = 1 "
        "(normalise it with circle_density)",
    )


def circle_sample(key: PRNGKeyArray, n: int, density: Float[Array, " N"]) -> Float[Array, " n"]:
    r"""`n` i.i.d. angles from the piecewise-constant density $\rho$ (exact inverse CDF: the
    cell by its mass, then uniform inside the cell)."""
    density = _check_density(density)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    cells = density.shape[0]
    h = _TWO_PI / cells
    mass = density * h
    cdf = jnp.cumsum(mass)
    u = jax.random.uniform(key, (n,), dtype=density.dtype) * cdf[-1]
    cell = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, cells - 1)
    below = cdf[cell] - mass[cell]
    inside = jnp.clip((u - below) / jnp.where(mass[cell] > 0, mass[cell], 1), 0, 1)
    return (cell + inside) * h


def circle_points(angles: Float[Array, " n"]) -> Float[Array, "n 2"]:
    """Angles to unit vectors $(\\cos\\theta, \\sin\\theta)$ in $\\mathbb{R}^2$."""
    angles = jnp.asarray(angles)
    return jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def circle_angles(points: Float[Array, "... 2"]) -> Float[Array, "..."]:
    """Unit vectors in $\\mathbb{R}^2$ to angles in $[0, 2\\pi)$."""
    points = jnp.asarray(points)
    return jnp.mod(jnp.arctan2(points[..., 1], points[..., 0]), _TWO_PI)


def circle_velocity(
    density: Float[Array, " N"], beta, normalization: AbstractNormalization = Softmax()
) -> Float[Array, " N"]:
    r"""The attention velocity on the circle at the cell faces $\phi_i = i h$.

    For $Q = K = V = I$ on $S^1 \subset \mathbb{R}^2$, a token at angle $\theta$ moves with
    $\dot\theta = \langle v[\mu](x), x^\perp \rangle$. With $\langle x(\theta), x(\varphi)\rangle
    = \cos(\theta - \varphi)$ and $\langle x(\varphi), x(\theta)^\perp \rangle = -\sin(\theta -
    \varphi)$ the velocity is a convolution:

    $$ u(\theta) = -\frac{(g * \rho)(\theta)}{(k * \rho)(\theta)} \ \text{(SA)}, \qquad
       u(\theta) = -(g * \rho)(\theta) \ \text{(USA)}, $$

    $k(u) = e^{\beta \cos u}$, $g(u) = e^{\beta \cos u} \sin u$ (Geshkovski et al. 2023). The
    convolution with the cell averages is the midpoint rule in each cell, evaluated by FFT in
    $O(N \log N)$; for SA both kernels carry a factor $e^{-\beta}$ that cancels and keeps them
    $\le 1$.

    Args:
        density: cell averages $\rho_i$ on `circle_grid(N)`.
        beta: inverse temperature $\beta > 0$.
        normalization: `Softmax()` (SA) or `Unnormalized()` (USA); any other raises
            `NotImplementedError` naming it.

    Returns:
        $u(\phi_i)$ at the faces $\phi_i = i h$, `(N,)`.
    """
    density = jnp.asarray(density)
    check_supported(
        normalization, (Softmax, Unnormalized), "normalization", "the circle mean-field equation"
    )
    cells = density.shape[0]
    h = _TWO_PI / cells
    beta = jnp.asarray(beta, density.dtype)
    # face i minus centre j is (i - j - 1/2) h: a circulant in i - j
    offsets = (jnp.arange(cells, dtype=density.dtype) - 0.5) * h
    shift = beta if isinstance(normalization, Softmax) else 0.0
    k = jnp.exp(beta * jnp.cos(offsets) - shift)
    g = k * jnp.sin(offsets)
    rho_hat = jnp.fft.rfft(density)

    def conv(kernel):
        return h * jnp.fft.irfft(jnp.fft.rfft(kernel) * rho_hat, n=cells)

    if isinstance(normalization, Unnormalized):
        return -conv(g)
    return -conv(g) / conv(k)


def _slopes(rho, limiter):
    back = rho - jnp.roll(rho, 1)
    fwd = jnp.roll(rho, -1) - rho
    if limiter == "upwind":
        return jnp.zeros_like(rho)
    if limiter == "minmod":
        return jnp.where(
            back * fwd > 0, jnp.sign(back) * jnp.minimum(jnp.abs(back), jnp.abs(fwd)), 0
        )
    # van Leer: harmonic mean of the one-sided slopes where they agree in sign
    prod = back * fwd
    return jnp.where(prod > 0, 2 * prod / jnp.where(prod > 0, back + fwd, 1), 0)


def _face_states(rho, limiter):
    r"""The two states at face $i$: reconstructed from cell $i - 1$ (`left`) and from cell
    $i$ (`right`). The limited slopes put both between $\rho_{i-1}$ and $\rho_i$."""
    s = _slopes(rho, limiter)
    return jnp.roll(rho + s / 2, 1), rho - s / 2


def _circle_rhs(rho, beta, normalization, limiter):
    cells = rho.shape[0]
    h = _TWO_PI / cells
    u = circle_velocity(rho, beta, normalization)
    left, right = _face_states(rho, limiter)
    flux = jnp.maximum(u, 0) * left + jnp.minimum(u, 0) * right
    # telescoping differences: sum_i (F_{i+1} - F_i) = 0, so mass is conserved to rounding
    return -(jnp.roll(flux, -1) - flux) / h


def _circle_term(t, rho, args):
    return _circle_rhs(rho, *args)


class CircleSolution(AbstractSolution):
    r"""A density on the circle evolved by `circle_flow`.

    Attributes:
        ts: saved times `(T,)`.
        theta: cell centres `(N,)`.
        densities: cell averages $\rho_i(t)$, `(T, N)`.
        stats: solver step counts.
        result: the diffrax result.
    """

    ts: Float[Array, " T"]
    theta: Float[Array, " N"]
    densities: Float[Array, "T N"]
    stats: Stats
    result: diffrax.RESULTS

    @property
    def mass(self) -> Float[Array, " T"]:
        r"""Total mass $\sum_i \rho_i h$ at each saved time (1 up to rounding)."""
        return jnp.sum(self.densities, axis=-1) * (_TWO_PI / self.theta.shape[0])


def circle_flow(
    density: Float[Array, " N"],
    ts: Float[Array, " T"],
    *,
    beta=1.0,
    normalization: AbstractNormalization = Softmax(),
    limiter: str = "vanleer",
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float = 1e-6,
    atol: float = 1e-6,
    max_steps: int = 100_000,
    throw: bool = True,
) -> CircleSolution:
    r"""Evolve a density on the circle by the mean-field equation of attention, $Q = K = V = I$.

    $$ \partial_t \rho + \partial_\theta (\rho\, u[\rho]) = 0, \qquad u[\rho] \text{ as in }
       `circle_velocity`, $$

    the continuity equation whose empirical solutions are the particles of
    `AttentionFlow(Attention.identity(2, beta, normalization=...), Sphere())`. Finite
    volumes: the face states are reconstructed from the cell averages with limited slopes
    (MUSCL; second order where the density is smooth), the flux at each face is upwind,
    $F_i = \max(u_i, 0)\,\rho^-_i + \min(u_i, 0)\,\rho^+_i$, and diffrax integrates
    $\rho_i' = -(F_{i+1} - F_i) / h$ in time (docs/theory.md 4.3).

    **What holds.**

    - *Mass* is conserved to rounding, by every explicit Runge-Kutta method (Tsit5 and the
      other explicit diffrax solvers) at any step: the update is a difference of face fluxes,
      each stage a combination of such differences, and $\sum_i (F_{i+1} - F_i) = 0$ on the
      periodic grid.
    - *Face states*: the limiters put each reconstructed face state between the averages of
      the two cells that share the face (`"upwind"` uses the cell averages themselves).
    - *Nonnegativity* of the semi-discrete scheme: a cell with $\rho_i = 0$ gets zero slope
      and zero face states, so its fluxes only bring mass in and $\rho_i' \ge 0$. One forward
      Euler step keeps $\rho \ge 0$ under the CFL condition $\Delta t \max_i |u_i| \le h/2$
      (the two face states of a cell average to $\rho_i$, so each is at most $2\rho_i$), and
      so does a strong-stability-preserving Runge-Kutta method under its own multiple of that
      step. The default Tsit5 is not strong-stability-preserving: the fully discrete density
      stays nonnegative only up to the step tolerance.

    **What does not hold.** No maximum principle and no diminishing total variation: along the
    flow $\partial_t \rho + u\, \partial_\theta \rho = -\rho\, \partial_\theta u$, so the
    density grows where the velocity converges, which is clustering. New maxima are the
    solution, not an artefact; the limiter only keeps the reconstruction from oscillating.

    Args:
        density: initial cell averages $\rho_i$ on `circle_grid(N)` with $\sum_i \rho_i h = 1$.
        ts: increasing save times.
        beta: inverse temperature; normalization: `Softmax()` (SA) or `Unnormalized()` (USA).
        limiter: `"vanleer"` (default), `"minmod"`, or `"upwind"` (first order, no slopes).
        solver, rtol, atol, max_steps, throw: diffrax options (adaptive steps).

    Returns:
        A `CircleSolution`. Resolve the density: clusters that narrow below a few cells are
        smeared by the scheme (compare `N` and `2N`).
    """
    density = _check_density(density)
    check_supported(
        normalization, (Softmax, Unnormalized), "normalization", "the circle mean-field equation"
    )
    check_choice(limiter, LIMITERS, "limiter")
    beta = jnp.asarray(beta, density.dtype)
    if beta.ndim != 0:
        raise ValueError(f"beta must be a scalar; got shape {beta.shape}")
    beta = value_check(beta, ~(beta > 0), "beta must be > 0")
    ts = check_times(ts, density.dtype)
    check_solver(solver, fixed_steps=False, dtype=density.dtype)
    sol, densities = solve(
        diffrax.ODETerm(_circle_term),
        solver,
        ts,
        density,
        args=(beta, normalization, limiter),
        controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=throw,
        caller="circle_flow",
    )
    return CircleSolution(
        ts=ts,
        theta=circle_grid(density.shape[0]).astype(density.dtype),
        densities=densities,
        stats=stats(sol),
        result=sol.result,
    )
