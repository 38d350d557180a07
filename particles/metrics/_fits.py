r"""Log-log fits of measured rates: $y \approx C x^p$.

Convergence orders (error against depth, $p = -1$ for Euler layers), propagation of chaos
($p = -1/2$ in the number of particles) and Lipschitz growth ($p = 1/2$ in $n$, Castin,
Ablin, Peyré 2024) are all read as the slope of a least-squares line in log-log
coordinates, by one function.
"""

from __future__ import annotations

import numpy as np


def fit_power_law(x, y, *, floor: float = 0.0) -> tuple[float, float]:
    r"""Least-squares fit of $y = C x^p$ in log-log coordinates; returns `(p, C)`.

    Points with `y <= floor` are left out: below a rounding or reference-error floor they
    would flatten the fit. Host-side (NumPy): call it on measured results, not under `jit`.

    Raises:
        ValueError: shapes differ, `x` is not positive, `y` is not finite, or fewer than two
            points lie above `floor`.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d arrays of the same length; got {x.shape}, {y.shape}")
    if np.any(x <= 0) or not np.all(np.isfinite(y)) or (floor <= 0 and np.any(y <= 0)):
        raise ValueError("x and y must be positive and finite for a log-log fit")
    keep = y > floor
    if keep.sum() < 2:
        raise ValueError(f"need at least two points above floor={floor}; got {keep.sum()}")
    slope, intercept = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return float(slope), float(np.exp(intercept))
