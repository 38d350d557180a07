"""Static figures: clouds, snapshot grids, metric curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

_SPHERE_ALPHA = 0.08


def _is_on_sphere(x: np.ndarray) -> bool:
    return bool(np.all(np.abs(np.linalg.norm(x, axis=-1) - 1) < 1e-3))


def draw_sphere(ax, alpha: float = _SPHERE_ALPHA) -> None:
    """A shaded translucent unit sphere with a few meridians, on a 3D axis."""
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 48), np.linspace(0, np.pi, 24))
    ax.plot_surface(
        np.cos(u) * np.sin(v),
        np.sin(u) * np.sin(v),
        np.cos(v),
        color="0.75",
        alpha=alpha,
        linewidth=0,
        shade=True,
    )
    theta = np.linspace(0, 2 * np.pi, 100)
    for phi in np.linspace(0, np.pi, 4, endpoint=False):
        ax.plot(
            np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), np.sin(theta), lw=0.3, c="0.6"
        )
    ax.plot(np.cos(theta), np.sin(theta), 0 * theta, lw=0.3, c="0.6")
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_zlim(-1, 1)
    ax.set_axis_off()


def view_direction(ax) -> np.ndarray:
    """Unit vector from the origin towards the camera of a 3D axis."""
    elev, azim = np.deg2rad(ax.elev), np.deg2rad(ax.azim)
    return np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])


def draw_cloud(ax, x, colors=None, size: float = 8.0, sphere: bool | None = None):
    """Scatter a cloud on `ax` (2D axis for d = 2, 3D axis for d = 3).

    On the sphere S^2 the tokens on the far side are dimmed. Returns the artist(s).
    """
    x = np.asarray(x)
    d = x.shape[1]
    sphere = _is_on_sphere(x) if sphere is None else sphere
    colors = "C0" if colors is None else colors
    if d == 2:
        if sphere:
            t = np.linspace(0, 2 * np.pi, 200)
            ax.plot(np.cos(t), np.sin(t), c="0.8", lw=0.8, zorder=0)
        ax.set_aspect("equal")
        return ax.scatter(x[:, 0], x[:, 1], s=size, c=colors, edgecolors="none")
    if d != 3:
        raise ValueError(f"draw_cloud draws d = 2 or 3; got d = {d} (project first)")
    if sphere:
        facing = x @ view_direction(ax) >= 0
        alpha = np.where(facing, 1.0, 0.25)
    else:
        alpha = np.ones(len(x))
    rgba = matplotlib.colors.to_rgba_array(colors, alpha=None)
    if len(rgba) == 1:
        rgba = np.repeat(rgba, len(x), axis=0)
    rgba[:, 3] = alpha
    return ax.scatter(
        x[:, 0], x[:, 1], x[:, 2], s=size, c=rgba, depthshade=False, edgecolors="none"
    )


def _new_axis(fig, spec, d, sphere):
    if d == 3:
        ax = fig.add_subplot(spec, projection="3d")
        if sphere:
            draw_sphere(ax)
        return ax
    return fig.add_subplot(spec)


def snapshots(
    ts,
    xs,
    indices: Sequence[int] | None = None,
    *,
    colors=None,
    time_label: str = "t",
    fig: Figure | None = None,
) -> Figure:
    """A row of panels showing the cloud at several saved times (default: 5, evenly spaced)."""
    ts, xs = np.asarray(ts), np.asarray(xs)
    if indices is None:
        indices = np.unique(np.linspace(0, len(ts) - 1, min(5, len(ts))).round().astype(int))
    fig = fig or plt.figure(figsize=(3 * len(indices), 3.2))
    sphere = _is_on_sphere(xs[0])
    grid = fig.add_gridspec(1, len(indices))
    for k, i in enumerate(indices):
        ax = _new_axis(fig, grid[0, k], xs.shape[-1], sphere)
        draw_cloud(ax, xs[i], colors=colors, sphere=sphere)
        ax.set_title(f"{time_label} = {ts[i]:.3g}")
    return fig


def metric_curves(ts, metrics: Mapping[str, np.ndarray], *, axes=None, time_label: str = "time t"):
    """One panel per metric time series, sharing the time axis. Returns the axes."""
    names = list(metrics)
    if axes is None:
        fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3), squeeze=False)
        axes = axes[0]
    for ax, name in zip(axes, names, strict=True):
        ax.plot(np.asarray(ts), np.asarray(metrics[name]), lw=1.5)
        ax.set_xlabel(time_label)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    return axes


def summary_figure(
    ts, xs, metrics: Mapping[str, np.ndarray], *, colors=None, title: str = ""
) -> Figure:
    """Snapshots of the cloud (top row) above the metric curves (bottom row)."""
    ts, xs = np.asarray(ts), np.asarray(xs)
    indices = np.unique(np.linspace(0, len(ts) - 1, min(5, len(ts))).round().astype(int))
    cols = max(len(indices), len(metrics))
    fig = plt.figure(figsize=(3.2 * cols, 6.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    snapshots(ts, xs, indices, colors=colors, fig=top)
    axes = bottom.subplots(1, len(metrics), squeeze=False)[0]
    metric_curves(ts, metrics, axes=axes)
    if title:
        fig.suptitle(title)
    return fig


def cluster_colors(labels) -> np.ndarray:
    """RGBA colour per token from cluster labels: one colour per cluster, largest first
    (tab10, cycling), so a cluster keeps its colour whatever its label value."""
    labels = np.asarray(labels)
    unique, counts = np.unique(labels, return_counts=True)
    rank = {lab: r for r, lab in enumerate(unique[np.argsort(-counts, kind="stable")])}
    cmap = matplotlib.colormaps["tab10"]
    return np.array([cmap(rank[lab] % 10) for lab in labels])
