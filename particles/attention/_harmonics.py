r"""Harmonic bases of the circle $S^1$ and the sphere $S^2$ and the Bessel coefficients that
expand the dot-product kernel in them.

For unit vectors $\hat q, \hat k$ and $z \ge 0$ the kernel $e^{z \langle \hat q, \hat k\rangle}$
is a function of the angle alone, so it diagonalises in the harmonics of the sphere:

$$ S^1:\quad e^{z\cos(\theta - \phi) - z}
   = \tilde I_0(z) + 2\sum_{k \ge 1} \tilde I_k(z)\,(\cos k\theta \cos k\phi + \sin k\theta\sin k\phi), $$
$$ S^2:\quad e^{z\langle \hat q, \hat k\rangle - z}
   = \sum_{l \ge 0} (2l+1)\,\tilde\imath_l(z)\,P_l(\langle \hat q, \hat k\rangle)
   = 4\pi \sum_{l \ge 0} \tilde\imath_l(z) \sum_{m=-l}^{l} Y_{lm}(\hat q)\,Y_{lm}(\hat k), $$

the Jacobi-Anger expansion and the Funk-Hecke formula with the addition theorem (Abramowitz
and Stegun 9.6.34 and 10.2.36; DLMF 14.30.9). $\tilde I_k(z) = e^{-z} I_k(z)$ and
$\tilde\imath_l(z) = e^{-z}\sqrt{\pi/2z}\,I_{l+1/2}(z)$ are the exponentially scaled modified
(spherical) Bessel functions: every coefficient is positive and at most 1, and $e^{z}$ is
never formed, so the expansion is finite in float32 at any $\beta$.

Both series sum to 1 at $\hat q = \hat k$, so the truncation error after degree $L$ is
bounded, uniformly in the angle, by the tail of the coefficients,
$\varepsilon_L(z) = 2\sum_{k > L}\tilde I_k(z)$ and $\sum_{l > L}(2l+1)\tilde\imath_l(z)$,
which falls like $e^{-L^2/2z}$ once $L \gtrsim \sqrt z$ (the kernel has angular width
$z^{-1/2}$): degree $L = O(\sqrt{z \log(1/\mathrm{tol})})$, and $(L+1)^2$ harmonics on $S^2$.

The coefficients come from the ratios $r_l = c_l / c_{l-1}$ by the backward recurrences
$r_l = z / (2l + 1 + z\, r_{l+1})$ (spherical) and $r_k = z / (2k + z\, r_{k+1})$ (circle),
started at zero far above $L$ (Miller's algorithm: the recurrence converges to the minimal
solution, the Bessel function, and every step is a positive sum, free of cancellation),
and the closed forms $\tilde\imath_0(z) = (1 - e^{-2z})/2z$, $\tilde I_0(z)$ = `i0e`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.scipy.special as jss
import numpy as np

__all__ = ["BASES", "Circle", "Sphere2", "order_for"]

# The backward ratio recurrence starts this many degrees above the highest coefficient it
# returns, plus z: its start error is damped by the product of the ratios between, which
# are below 1/2 once l > z.
_START_PAD = 40


class Circle:
    """Fourier basis of $S^1$: features $1, \\cos k\\phi, \\sin k\\phi$ for $k \\le L$."""

    dim = 2

    @staticmethod
    def size(order: int) -> int:
        return 2 * order + 1

    @staticmethod
    def degrees(order: int) -> np.ndarray:
        k = np.arange(1, order + 1)
        return np.concatenate([[0], k, k])

    @staticmethod
    def features(u, order: int):
        """`(n, 2L + 1)` values $1, \\mathrm{Re}\\, u^k, \\mathrm{Im}\\, u^k$ of unit vectors
        `u` `(n, 2)`, read as complex numbers (a polynomial in `u`, smooth for `grad`)."""
        x, y = u[:, 0], u[:, 1]

        def power(w, _):
            c, s = w
            w = (c * x - s * y, s * x + c * y)
            return w, w

        one = (jnp.ones_like(x), jnp.zeros_like(x))
        _, (cos, sin) = jax.lax.scan(power, one, None, length=order)
        return jnp.concatenate([jnp.ones_like(x)[:, None], cos.T, sin.T], axis=1)

    @staticmethod
    def coefficients(z, order: int, start: int):
        """Multiplicity times scaled Bessel coefficient per degree, `(n, L + 1)`, and the
        truncation tail $2 \\sum_{k > L} \\tilde I_k(z)$, `(n,)`."""
        ratios = _ratios(z, start, lambda k: 2.0 * k)
        c0 = jss.i0e(z)
        return _assemble(c0, ratios, order, lambda k: 1.0 if k == 0 else 2.0)

    @staticmethod
    def numpy_tail(z: float, order: int) -> float:
        r = _numpy_ratios(z, order, lambda k: 2.0 * k)
        c = float(np.i0(z) * np.exp(-z)) if z < 700 else 1 / math.sqrt(2 * math.pi * z)
        tail = 0.0
        for k in range(1, len(r)):
            c *= r[k]
            if k > order:
                tail += 2 * c
        return tail


class Sphere2:
    """Real spherical harmonics of $S^2$, $Y_{lm}$ for $l \\le L$, $|m| \\le l$, orthonormal
    on the sphere, $(L + 1)^2$ features."""

    dim = 3

    @staticmethod
    def size(order: int) -> int:
        return (order + 1) ** 2

    @staticmethod
    def _index(order: int):
        # features are built on an (l, m) grid, m in 0..L for the cosine part and 1..L for
        # the sine part; these are the flat positions with m <= l, and their degrees
        grid_l = np.repeat(np.arange(order + 1), 2 * order + 1)
        grid_m = np.tile(np.concatenate([np.arange(order + 1), np.arange(1, order + 1)]), order + 1)
        keep = np.nonzero(grid_m <= grid_l)[0]
        return keep, grid_l[keep]

    @classmethod
    def degrees(cls, order: int) -> np.ndarray:
        return cls._index(order)[1]

    @classmethod
    def features(cls, u, order: int):
        r"""`(n, (L + 1)^2)` real harmonics of unit vectors `u` `(n, 3)`.

        Written as $Y_{lm} = \bar Q_l^m(z)\,\mathrm{Re}/\mathrm{Im}\,(x + iy)^m$ with
        $\bar Q_l^m = \bar P_l^m / \sin^m\theta$, a polynomial: no angles, no division by
        $\sin\theta$, so the poles are regular points and `grad` is finite everywhere. The
        $\bar Q$ satisfy the normalised Legendre recurrence in $l$ (stable upward for fixed
        $m$) with the constant sectoral start $\bar Q_m^m = \bar Q_{m-1}^{m-1}\sqrt{(2m+1)/2m}$.
        """
        L = order
        x, y, zc = u[:, 0], u[:, 1], u[:, 2]
        m = np.arange(L + 1)
        # constant sectoral values and the recurrence coefficients a_lm, b_lm of
        # Q_l^m = a_lm (z Q_{l-1}^m - b_lm Q_{l-2}^m)
        sect = np.empty(L + 1)
        sect[0] = 1 / math.sqrt(4 * math.pi)
        for k in range(1, L + 1):
            sect[k] = sect[k - 1] * math.sqrt((2 * k + 1) / (2 * k))
        l = np.arange(L + 1)[:, None]  # noqa: E741
        below = m[None, :] < l
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(below, np.sqrt((4 * l * l - 1) / np.maximum(l * l - m * m, 1)), 0)
            b = np.where(
                below,
                np.sqrt(np.maximum((l - 1) ** 2 - m * m, 0) / np.maximum(4 * (l - 1) ** 2 - 1, 1)),
                0,
            )
        start = np.where(m[None, :] == l, sect[None, :], 0.0)

        def step(prev, coef):
            prev2, prev1 = prev
            a_l, b_l, s_l = coef
            cur = a_l[None] * (zc[:, None] * prev1 - b_l[None] * prev2) + s_l[None]
            return (prev1, cur), cur

        zeros = jnp.zeros(x.shape + (L + 1,), u.dtype)
        coefs = tuple(jnp.asarray(c, u.dtype) for c in (a, b, start))
        _, legendre = jax.lax.scan(step, (zeros, zeros), coefs)
        legendre = jnp.moveaxis(legendre, 0, 1)  # (n, l, m)
        cos = Circle.features(jnp.stack([x, y], axis=1), L)  # Re, Im of (x + iy)^m
        root2 = np.where(m == 0, 1.0, math.sqrt(2.0))
        re = legendre * (cos[:, None, : L + 1] * jnp.asarray(root2, u.dtype)[None, None])
        im = legendre[:, :, 1:] * (cos[:, None, L + 1 :] * math.sqrt(2.0))
        grid = jnp.concatenate([re, im], axis=2).reshape(x.shape[0], -1)
        return grid[:, cls._index(order)[0]]

    @staticmethod
    def coefficients(z, order: int, start: int):
        """$4\\pi \\tilde\\imath_l(z)$ per degree, `(n, L + 1)`, and the truncation tail
        $\\sum_{l > L} (2l + 1) \\tilde\\imath_l(z)$, `(n,)`."""
        ratios = _ratios(z, start, lambda l: 2.0 * l + 1)
        # (1 - e^{-2z}) / 2z, with its limit 1 at z = 0 (the inner where keeps grad finite)
        small = z < 1e-6
        zs = jnp.where(small, 1.0, z)
        c0 = jnp.where(small, 1.0 - z, -jnp.expm1(-2 * zs) / (2 * zs))
        coef, tail = _assemble(c0, ratios, order, lambda l: 2.0 * l + 1)
        # the addition theorem turns (2l + 1) P_l into 4 pi sum_m Y_lm Y_lm
        scale = 4 * math.pi / (2 * np.arange(order + 1) + 1)
        return coef * jnp.asarray(scale, coef.dtype)[None], tail

    @staticmethod
    def numpy_tail(z: float, order: int) -> float:
        r = _numpy_ratios(z, order, lambda l: 2.0 * l + 1)
        c = -math.expm1(-2 * z) / (2 * z) if z > 0 else 1.0
        tail = 0.0
        for l in range(1, len(r)):  # noqa: E741
            c *= r[l]
            if l > order:
                tail += (2 * l + 1) * c
        return tail


BASES = {2: Circle, 3: Sphere2}


def start_degree(order: int, z_max: float) -> int:
    """Where the backward recurrence starts for coefficients up to `order` and $z \\le$
    `z_max` (static: it fixes the loop length)."""
    return order + _START_PAD + int(math.ceil(z_max))


def _ratios(z, start: int, denominator):
    """Ratios $r_l = c_l / c_{l-1}$, $l = 1..$`start`, `(start, n)`."""

    def step(r, den):
        # z / (den + z r): a positive sum, no division by z (finite gradient at z = 0)
        r = z / (den + z * r)
        return r, r

    dens = jnp.asarray(np.array([denominator(l) for l in range(start, 0, -1)]), z.dtype)
    _, r = jax.lax.scan(step, jnp.zeros_like(z), dens)
    return r[::-1]


def _assemble(c0, ratios, order: int, multiplicity):
    """Coefficients $m_l c_l$ for $l \\le L$ and the tail $\\sum_{l > L} m_l c_l$."""

    def step(c, r):
        c = c * r
        return c, c

    _, c = jax.lax.scan(step, c0, ratios)  # c_1 .. c_start
    mult = jnp.asarray(np.array([multiplicity(l) for l in range(ratios.shape[0] + 1)]), c0.dtype)
    c = jnp.concatenate([c0[None], c]) * mult[:, None]
    return c[: order + 1].T, jnp.sum(c[order + 1 :], axis=0)


def _numpy_ratios(z: float, order: int, denominator):
    start = start_degree(order, z) + order
    r = 0.0
    out = [0.0] * (start + 1)
    for l in range(start, 0, -1):  # noqa: E741
        r = z / (denominator(l) + z * r)
        out[l] = r
    return out


def order_for(dim: int, z_max: float, tol: float, max_order: int = 256) -> int:
    r"""The a priori order: the least $L$ with truncation tail $\varepsilon_L(z) \le$ `tol`
    at $z$ = `z_max` (the tail grows with $z$, so it bounds every $z \le z_{max}$)."""
    basis = BASES[dim]
    for order in range(max_order + 1):
        if basis.numpy_tail(z_max, order) <= tol:
            return order
    raise ValueError(
        f"no expansion of order <= {max_order} reaches tol={tol:g} at beta * |Q^T K| = "
        f"{z_max:g}: use Direct()"
    )
