"""Figures of clustering: phase diagrams, solver step counts, log-time staircases, polytopes.

Every function reads saved arrays (probabilities, step counts, metric series, rescaled
clouds) and never recomputes dynamics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ._labels import style_metric_axis


def _axes(ax, size=(5.0, 3.8)):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    return fig, ax


def phase_heatmap(
    ts,
    betas,
    probability,
    *,
    ax=None,
    title: str = "",
    cmap: str = "magma",
    level: float | None = 0.5,
    colorbar: bool = True,
):
    r"""Heat map of $P(\text{one cluster at } t)$ over time (x) and $\beta$ (y).

    Args:
        ts: saved times `(T,)`; betas: `(B,)`; probability: `(B, T)` in [0, 1].
        level: draw the contour where the probability crosses this level (None: none).

    Returns:
        The axis.
    """
    ts, betas, p = np.asarray(ts, float), np.asarray(betas, float), np.asarray(probability)
    if p.shape != (len(betas), len(ts)):
        raise ValueError(
            f"probability must have shape (len(betas), len(ts)) = {(len(betas), len(ts))}; "
            f"got {p.shape}"
        )
    fig, ax = _axes(ax)
    mesh = ax.pcolormesh(ts, betas, p, cmap=cmap, vmin=0, vmax=1, shading="nearest")
    if level is not None and len(ts) > 1 and len(betas) > 1 and p.min() < level < p.max():
        ax.contour(ts, betas, p, levels=[level], colors="w", linewidths=1.2)
    ax.set_xlabel("time t")
    ax.set_ylabel(r"$\beta$")
    if title:
        ax.set_title(title)
    if colorbar:
        fig.colorbar(mesh, ax=ax, label="P(one cluster)")
    return ax


def step_counts(betas, num_steps, *, ax=None, title: str = ""):
    """Solver steps per ensemble member against beta: median and range over the random
    starts, and the batch maximum (how many steps a vmapped solve runs).

    Args:
        betas: `(B,)`; num_steps: `(B, R)` steps of each member.

    Returns:
        The axis.
    """
    betas, s = np.asarray(betas, float), np.asarray(num_steps)
    if s.ndim != 2 or s.shape[0] != len(betas):
        raise ValueError(f"num_steps must have shape (len(betas), runs); got {s.shape}")
    fig, ax = _axes(ax, (4.6, 3.4))
    ax.fill_between(betas, s.min(axis=1), s.max(axis=1), alpha=0.25, label="min to max")
    ax.plot(betas, np.median(s, axis=1), lw=1.6, label="median")
    ax.axhline(s.max(), c="C3", lw=1, ls="--", label=f"batch max {int(s.max())}")
    ax.set_xlabel(r"$\beta$")
    ax.set_ylabel("solver steps per member")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return ax


def run_curves(
    ts,
    series: Mapping[str, np.ndarray],
    *,
    labels: Sequence[str] | None = None,
    axes=None,
    log_time: bool = False,
    logy: Sequence[str] = (),
) -> np.ndarray:
    """One panel per metric, one curve per run: `(T,)` or `(k, T)` per metric, the runs
    named by `labels` (a legend on the first panel).

    With `log_time` the time axis is logarithmic and curves are drawn as steps, so that
    metastable plateaus and merges read as a staircase; times `<= 0` are dropped. Panels
    are titled in words (`particles.plot.metric_label`); metrics named in `logy`, and known
    counts, get a log y-axis. Returns the axes.
    """
    ts = np.asarray(ts, float)
    names = list(series)
    if not names:
        raise ValueError("series is empty: nothing to plot")
    if axes is None:
        _, axes = plt.subplots(
            1, len(names), figsize=(3.8 * len(names), 3.2), squeeze=False, layout="constrained"
        )
        axes = axes[0]
    keep = ts > 0 if log_time else np.ones(len(ts), bool)
    for ax, name in zip(axes, names, strict=True):
        values = np.asarray(series[name], float)
        if values.shape[-1] != len(ts):
            raise ValueError(f"series[{name!r}] has {values.shape[-1]} values; ts has {len(ts)}")
        rows = values.reshape(-1, len(ts))
        for j, row in enumerate(rows):
            label = labels[j] if labels is not None and j < len(labels) else None
            ax.plot(
                ts[keep],
                row[keep],
                lw=1.4,
                c=f"C{j % 10}",
                label=label,
                drawstyle="steps-post" if log_time else "default",
            )
        if log_time:
            ax.set_xscale("log")
        style_metric_axis(ax, name, scale="log" if name in logy else None)
        ax.set_xlabel("time t (log scale)" if log_time else "time t")
        ax.grid(alpha=0.3, which="both")
    if labels is not None:
        axes[0].legend(fontsize=8)
    return np.asarray(axes)


def convex_hull(points) -> np.ndarray:
    """Vertices of the convex hull of planar points `(m, 2)`, counter-clockwise (Andrew's
    monotone chain); collinear points on an edge are dropped."""
    p = np.unique(np.asarray(points, float), axis=0)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must have shape (m, 2); got {np.shape(points)}")
    if len(p) < 3:
        return p

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(seq):
        chain: list[np.ndarray] = []
        for q in seq:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], q) <= 0:
                chain.pop()
            chain.append(q)
        return chain[:-1]

    return np.array(half(p) + half(p[::-1]))


def polytope(
    zs,
    *,
    ax=None,
    colors=None,
    title: str = "",
    hull: bool = True,
    trails: bool = True,
):
    r"""Rescaled planar tokens $z_i(t)$ (e.g. $e^{-t} x_i(t)$, from
    `particles.metrics.rescaled`): their paths (faint), their final positions, and the
    convex hull of the final positions (Geshkovski et al. 2023: the
    $z_i$ converge to vertices of a convex polytope when $V = I$, $Q^\top K \succ 0$).

    Args:
        zs: rescaled trajectory `(T, n, 2)`.
        colors: one colour per token (e.g. `cluster_colors` of the limit points).

    Returns:
        The axis.
    """
    zs = np.asarray(zs, float)
    if zs.ndim != 3 or zs.shape[-1] != 2:
        raise ValueError(f"zs must be a planar trajectory (T, n, 2); got {zs.shape}")
    fig, ax = _axes(ax, (4.4, 4.2))
    if trails:
        for i in range(zs.shape[1]):
            ax.plot(zs[:, i, 0], zs[:, i, 1], lw=0.6, c="0.7", zorder=1)
    final = zs[-1]
    if hull:
        h = convex_hull(final)
        if len(h) >= 3:
            closed = np.vstack([h, h[:1]])
            ax.fill(closed[:, 0], closed[:, 1], alpha=0.12, c="C0", zorder=0)
            ax.plot(closed[:, 0], closed[:, 1], c="C0", lw=1.2, zorder=2)
    ax.scatter(final[:, 0], final[:, 1], s=22, c=colors if colors is not None else "C3", zorder=3)
    ax.set_aspect("equal")
    ax.set_xlabel(r"$z_1$")
    ax.set_ylabel(r"$z_2$")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return ax


def phase_figure(
    ts,
    betas: Mapping[str, np.ndarray],
    probabilities: Mapping[str, np.ndarray],
    num_steps: Mapping[str, np.ndarray],
) -> Figure:
    """Phase diagrams side by side (one per name, e.g. "SA", "USA") above their step counts;
    `betas`, `probabilities` `(B, T)` and `num_steps` `(B, R)` are keyed by the same names."""
    k = len(probabilities)
    fig, axes = plt.subplots(
        2, k, figsize=(5.0 * k, 7.2), squeeze=False, layout="constrained", height_ratios=[1.2, 1]
    )
    for j, name in enumerate(probabilities):
        phase_heatmap(ts, betas[name], probabilities[name], ax=axes[0, j], title=name)
        step_counts(betas[name], num_steps[name], ax=axes[1, j])
    return fig
