"""Figures of the depth limit: deep residual networks against the flow they discretise.

Both functions read saved numbers (errors per depth, errors along depth) and recompute
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def depth_convergence_figure(
    depths,
    errors: Mapping[str, np.ndarray],
    slopes: Mapping[str, float] | None = None,
    *,
    floor: float | None = None,
    title: str = "",
    size: tuple[float, float] = (8.4, 4.8),
) -> Figure:
    """Error at time T against depth L, log-log, one line per network.

    Args:
        depths: the depths `(k,)`.
        errors: `{name: (k,)}` errors $\\max_i |x^L_i - x_i(T)|$.
        slopes: `{name: slope}` fitted log-log slopes, written in the legend.
        floor: errors at or below it were left out of the fits: drawn hollow, with the
            floor as a dotted line.
        title: the figure title.

    Returns:
        The figure; guide lines $L^{-1}, L^{-2}, L^{-4}$ through the first point of the
        line with that slope give the eye a scale.
    """
    depths = np.asarray(depths, dtype=float)
    slopes = dict(slopes or {})
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    markers = "osD^vP*Xh<>"
    for k, (name, e) in enumerate(errors.items()):
        e = np.asarray(e, dtype=float)
        label = name if name not in slopes else f"{name} (slope {slopes[name]:.2f})"
        color = f"C{k % 10}"
        (line,) = ax.loglog(depths, e, "-", color=color, lw=1.4, label=label)
        fitted = e > floor if floor is not None else np.ones_like(e, dtype=bool)
        marker = markers[k % len(markers)]
        ax.plot(depths[fitted], e[fitted], marker, color=color, ms=4.5)
        ax.plot(depths[~fitted], e[~fitted], marker, mfc="none", color=color, ms=4.5)
    for order in (1, 2, 4):
        # anchored a factor above the largest error at the smallest depth
        top = max(float(np.asarray(e, dtype=float)[0]) for e in errors.values())
        guide = 2 * top * (depths / depths[0]) ** (-order)
        ax.loglog(depths, guide, ":", color="0.55", lw=0.9)
        ax.annotate(
            f"$L^{{-{order}}}$",
            (depths[-1], guide[-1]),
            xytext=(3, 0),
            textcoords="offset points",
            color="0.4",
            fontsize=8,
            va="center",
        )
    if floor is not None:
        ax.axhline(floor, color="0.3", ls="--", lw=0.8)
        ax.annotate(
            "fit floor",
            (depths[-1], floor),
            xytext=(-2, 3),
            textcoords="offset points",
            fontsize=8,
            color="0.3",
            ha="right",
        )
    finite = [np.asarray(e, dtype=float) for e in errors.values()]
    low = min(float(np.min(e[e > 0])) for e in finite if np.any(e > 0))
    ax.set_ylim(low / 5, None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("depth L (layers, step h = T / L)")
    ax.set_ylabel("error at T:  $\\max_i |x_i^L - x_i(T)|$")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), title="network")
    if title:
        ax.set_title(title)
    return fig


def depth_error_figure(
    ts,
    errors: Mapping[str, np.ndarray],
    *,
    collapse: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
    order: int = 1,
    collapse_label: str = "residual",
    title: str = "",
) -> Figure:
    """The error along depth: layer $l$ against the flow at time $t_l = l h$.

    Args:
        ts: the layer times `(L + 1,)` shared by the curves of `errors`.
        errors: `{name: (L + 1,)}` errors $e_l = \\max_i |x^l_i - x_i(t_l)|$, one depth.
        collapse: `{L: (ts, e)}` errors along depth of one network at several depths, drawn
            in a second panel as $L^{p} e_l$: one curve when the error is $O(L^{-p})$
            uniformly in time.
        order: the order $p$ of the collapsed network.
        collapse_label: its name, for the panel title.
        title: the figure title.
    """
    panels = 1 if collapse is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.6 * panels, 4.2), layout="constrained")
    axes = np.atleast_1d(axes)
    ts = np.asarray(ts, dtype=float)
    ax = axes[0]
    for k, (name, e) in enumerate(errors.items()):
        e = np.asarray(e, dtype=float)
        ax.semilogy(ts[1:], e[1:], "-", color=f"C{k % 10}", lw=1.4, label=name)
    ax.set_xlabel("time $t_l = l h$")
    ax.set_ylabel("$\\max_i |x_i^l - x_i(t_l)|$")
    ax.set_title(f"error along depth, L = {len(ts) - 1}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if collapse is not None:
        ax = axes[1]
        cmap = plt.get_cmap("viridis")
        for k, (L, (t, e)) in enumerate(sorted(collapse.items())):
            color = cmap(k / max(1, len(collapse) - 1))
            ax.plot(np.asarray(t), L**order * np.asarray(e), color=color, lw=1.4, label=f"L = {L}")
        power = "L" if order == 1 else f"$L^{order}$"
        ax.set_xlabel("time $t_l = l h$")
        ax.set_ylabel(f"{power} $\\times$ error")
        ax.set_title(f"{collapse_label}: rescaled error along depth")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
