"""Figures and animations of mean-field limits: convergence rates, Gaussian level sets,
densities on the circle. The animations are scenes of the one pipeline of
`particles.plot.animate`. They read saved arrays only; nothing here recomputes dynamics."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ._animate import _animation
from ._figures import CloudPanel, Geometry, _color_frames
from ._labels import suptitle
from ._scene import AbstractScene, TimeLabel, check_times


def sample_convergence_figure(
    ns,
    errors: Mapping[str, np.ndarray],
    slopes: Mapping[str, tuple[float, float]] | None = None,
    *,
    reference_slope: float | None = -0.5,
    xlabel: str = "particles n",
    ylabel: str = "error",
    title: str = "",
    ax=None,
) -> Figure:
    """Log-log plot of errors against `ns`, one marker series per entry of `errors`, with the
    fitted power laws `slopes[name] = (p, C)` drawn as dashed lines and a reference slope."""
    ns = np.asarray(ns, dtype=float)
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.2, 4.0), layout="constrained")
    else:
        fig = ax.figure
    for k, (name, values) in enumerate(errors.items()):
        values = np.asarray(values, dtype=float)
        finite = np.isfinite(values)  # a series may stop early (NaN beyond its largest n)
        label = name
        if slopes and name in slopes:
            p, c = slopes[name]
            ax.plot(ns[finite], c * ns[finite] ** p, "--", color=f"C{k}", lw=1)
            label = f"{name} (slope {p:.2f})"
        ax.plot(ns[finite], values[finite], "o-", color=f"C{k}", ms=4, lw=1.2, label=label)
    if reference_slope is not None:
        first = np.asarray(next(iter(errors.values())), dtype=float)[0]
        ax.plot(
            ns,
            first * (ns / ns[0]) ** reference_slope,
            ":",
            color="0.4",
            label=f"$n^{{{reference_slope:g}}}$",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def stability_figure(ts, ratio, bound_ratio=None, *, rate: float | None = None, ax=None) -> Figure:
    """The ratio $W_2(\\mu_t, \\nu_t) / W_2(\\mu_0, \\nu_0)$ over time, with an optional bound and
    the fitted $e^{L t}$."""
    ts = np.asarray(ts, dtype=float)
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.2, 4.0), layout="constrained")
    else:
        fig = ax.figure
    ax.plot(ts, np.asarray(ratio), "o-", ms=3, label="measured $W_2(t) / W_2(0)$")
    if rate is not None:
        ax.plot(ts, np.exp(rate * (ts - ts[0])), "--", label=f"$e^{{L t}}$, L = {rate:.3g}")
    if bound_ratio is not None:
        ax.plot(ts, np.asarray(bound_ratio), ":", label="Grönwall bound (log-norm of Jacobian)")
    ax.set_yscale("log")
    ax.set_xlabel("time t")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def _ellipse(mean, cov, radius, points=200):
    angle = np.linspace(0, 2 * np.pi, points)
    vals, vecs = np.linalg.eigh(cov)
    root = vecs * np.sqrt(np.maximum(vals, 0))
    circle = np.stack([np.cos(angle), np.sin(angle)])
    return mean[:, None] + radius * root @ circle


class GaussianScene(AbstractScene):
    r"""A planar particle trajectory `xs (T, n, 2)` over the level ellipses
    $(x - m)^\top S^{-1} (x - m) = r^2$ of the mean-field Gaussians $N(m(t), S(t))$
    (`means (T, 2)`, `covs (T, 2, 2)`; frames with non-finite moments show no ellipse).

    The particles are a cloud panel of the plane view (colours as in `animate`).
    """

    def __init__(
        self,
        fig,
        ts,
        xs,
        *,
        means,
        covs,
        radii=(1.0, 2.0, 3.0),
        colors=None,
        clusters=None,
        singletons=None,
        cmap: str = "viridis",
        point_size: float = 4.0,
        title: str = "",
        time_label: str = "t",
        time_format: str = ".3g",
    ):
        self.ts = check_times(ts)
        xs, means, covs = np.asarray(xs, float), np.asarray(means, float), np.asarray(covs, float)
        T = len(self.ts)
        if xs.ndim != 3 or xs.shape[-1] != 2:
            raise ValueError(f"xs must have shape (T, n, 2); got {xs.shape}")
        if xs.shape[0] != T:
            raise ValueError(f"xs has {xs.shape[0]} frames but ts has {T} times")
        if means.shape != (T, 2) or covs.shape != (T, 2, 2):
            raise ValueError(
                f"means and covs must have shapes (T, 2) and (T, 2, 2) with T = {T}; "
                f"got {means.shape} and {covs.shape}"
            )
        self.means, self.covs, self.radii = means, covs, tuple(radii)
        self.finite = np.isfinite(means).all(axis=1) & np.isfinite(covs).all(axis=(1, 2))
        ax = fig.add_subplot()
        outlines = [_ellipse(means[i], covs[i], max(radii)) for i in np.flatnonzero(self.finite)]
        pts = np.concatenate([xs.reshape(-1, 2)] + [o.T for o in outlines])
        lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
        pad = 0.08 * (hi - lo).max()
        limits = (lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad)
        geo = Geometry("plane", np.eye(2), np.zeros(2), None, limits)
        if colors is None and clusters is None:
            colors = matplotlib.colors.to_rgba("C0", 0.6)
        color_of = _color_frames(colors, clusters, T, xs.shape[1], cmap, "colors", singletons)
        self.cloud = CloudPanel(ax, xs, geo, color_of, size=point_size)
        self.lines = [
            ax.plot([], [], color="C3", lw=1.2 if r == radii[0] else 0.8)[0] for r in radii
        ]
        ax.legend(
            handles=[
                Line2D([], [], ls="", marker="o", ms=4, color=color_of(0)[0], label="particles"),
                Line2D(
                    [],
                    [],
                    color="C3",
                    lw=1.2,
                    label="mean-field $N(m(t), S(t))$, "
                    + ", ".join(f"{r:g}" for r in radii)
                    + " sd",
                ),
            ],
            loc="upper right",
            fontsize=8,
        )
        self.time = TimeLabel([ax], self.ts, time_label, time_format)
        if title:
            suptitle(fig, title)
        self.ax = ax
        self.dynamic = [*self.cloud.artists, *self.lines, *self.time.texts]

    def update(self, i: int) -> None:
        self.cloud.update(i)
        for line, r in zip(self.lines, self.radii, strict=True):
            if self.finite[i]:
                e = _ellipse(self.means[i], self.covs[i], r)
                line.set_data(e[0], e[1])
            else:
                line.set_data([], [])
        self.time.update(i)

    @classmethod
    def default_size(cls, ts, xs, **options):
        return (5.0, 5.0)


class CircleScene(AbstractScene):
    """Particles on the circle (`angles (T, n)`, drawn as a normalised histogram of `bins`
    cells) over the Eulerian density `densities (T, N)` on the cell centres `theta (N,)`."""

    def __init__(
        self,
        fig,
        ts,
        angles,
        *,
        theta,
        densities,
        bins: int = 64,
        title: str = "",
        time_label: str = "t",
        time_format: str = ".3g",
    ):
        self.ts = check_times(ts)
        angles = np.asarray(angles, float)
        theta, densities = np.asarray(theta, float), np.asarray(densities, float)
        T = len(self.ts)
        if angles.ndim != 2 or angles.shape[0] != T:
            raise ValueError(f"angles must have shape (T, n) with T = {T}; got {angles.shape}")
        if theta.ndim != 1 or densities.shape != (T, len(theta)):
            raise ValueError(
                f"densities must have shape (T, len(theta)) = {(T, theta.size)}; "
                f"got {densities.shape}"
            )
        edges = np.linspace(0, 2 * np.pi, bins + 1)
        self.hist = np.stack(
            [np.histogram(np.mod(a, 2 * np.pi), bins=edges, density=True)[0] for a in angles]
        )
        self.densities = densities
        ax = fig.add_subplot()
        ax.set_xlim(0, 2 * np.pi)
        top = max(float(np.nanmax(densities)), float(self.hist.max()), 1e-12)
        ax.set_ylim(0, 1.15 * top)
        ax.set_xlabel(r"angle $\theta$")
        ax.set_ylabel("density")
        ax.grid(alpha=0.3)
        self.stairs = ax.stairs(
            self.hist[0], edges, fill=True, color="C0", alpha=0.45, label="particles"
        )
        (self.line,) = ax.plot(theta, densities[0], color="C3", lw=1.5, label="Eulerian density")
        ax.legend(loc="upper right", fontsize=8)
        self.time = TimeLabel([ax], self.ts, time_label, time_format)
        if title:
            suptitle(fig, title)
        self.ax = ax
        self.dynamic = [self.stairs, self.line, *self.time.texts]

    def update(self, i: int) -> None:
        self.stairs.set_data(self.hist[i])
        self.line.set_ydata(self.densities[i])
        self.time.update(i)

    @classmethod
    def default_size(cls, ts, angles, **options):
        return (6.4, 3.8)


def gaussian_animation(
    ts,
    xs,
    means,
    covs,
    path: str | Path | None = None,
    *,
    radii=(1.0, 2.0, 3.0),
    fps: float = 15,
    title: str = "",
    **options,
):
    r"""Animate a 2-d particle trajectory `xs (T, n, 2)` over the level ellipses
    $(x - m)^\top S^{-1} (x - m) = r^2$ of the mean-field Gaussian $N(m(t), S(t))$
    (`means (T, 2)`, `covs (T, 2, 2)`), one ellipse per radius in `radii`.

    Rendered by the pipeline of `animate` (a `GaussianScene`), with the same options:
    `path` `.mp4` or `.gif` (written atomically), or `None` for an inline animation; the
    writer's `options` (`duration`, `frames`, `dpi`, `size`, `resolution`, `crf`, `embed`,
    `progress`) have `animate`'s defaults, further `options` (`colors`, `clusters`,
    `point_size`, `time_label`, ...) go to the scene. Returns the path written, or an
    `InlineAnimation`.
    """
    return _animation(
        GaussianScene,
        ts,
        xs,
        path,
        fps=fps,
        means=means,
        covs=covs,
        radii=radii,
        title=title,
        **options,
    )


def circle_animation(
    ts,
    angles,
    theta,
    densities,
    path: str | Path | None = None,
    *,
    bins: int = 64,
    fps: float = 15,
    title: str = "",
    **options,
):
    """Animate particles on the circle (angles `(T, n)`, as a normalised histogram) over the
    Eulerian density `densities (T, N)` on the cell centres `theta`.

    Rendered by the pipeline of `animate` (a `CircleScene`), with the same options: `path`
    `.mp4` or `.gif` (written atomically), or `None` for an inline animation; the writer's
    `options` (`duration`, `frames`, `dpi`, `size`, `resolution`, `crf`, `embed`,
    `progress`) have `animate`'s defaults. Returns the path written, or an
    `InlineAnimation`.
    """
    return _animation(
        CircleScene,
        ts,
        angles,
        path,
        fps=fps,
        theta=theta,
        densities=densities,
        bins=bins,
        title=title,
        **options,
    )


def density_snapshots(ts, theta, densities, angles=None, *, indices=None, bins: int = 64) -> Figure:
    """Small multiples of the circle density at a few times, with particle histograms."""
    ts, theta, densities = np.asarray(ts), np.asarray(theta), np.asarray(densities)
    indices = (
        list(indices) if indices is not None else list(np.linspace(0, len(ts) - 1, 4).astype(int))
    )
    fig, axes = plt.subplots(
        1, len(indices), figsize=(3.2 * len(indices), 2.8), layout="constrained", sharey=True
    )
    edges = np.linspace(0, 2 * np.pi, bins + 1)
    for ax, i in zip(np.atleast_1d(axes), indices, strict=True):
        if angles is not None:
            ax.hist(
                np.mod(np.asarray(angles)[i], 2 * np.pi),
                bins=edges,
                density=True,
                color="C0",
                alpha=0.45,
            )
        ax.plot(theta, densities[i], color="C3", lw=1.3)
        ax.set_title(f"t = {ts[i]:.3g}")
        ax.set_xlim(0, 2 * np.pi)
        ax.set_xlabel(r"$\theta$")
        ax.grid(alpha=0.3)
    return fig


def gaussian_snapshots(ts, xs, means, covs, *, indices=None, radii=(1.0, 2.0, 3.0)) -> Figure:
    """Small multiples of a 2-d particle cloud over the level ellipses of $N(m(t), S(t))$."""
    ts, xs = np.asarray(ts), np.asarray(xs)
    means, covs = np.asarray(means), np.asarray(covs)
    indices = (
        list(indices) if indices is not None else list(np.linspace(0, len(ts) - 1, 3).astype(int))
    )
    fig, axes = plt.subplots(
        1, len(indices), figsize=(3.6 * len(indices), 3.6), layout="constrained"
    )
    for ax, i in zip(np.atleast_1d(axes), indices, strict=True):
        ax.scatter(xs[i, :, 0], xs[i, :, 1], s=3, alpha=0.5, lw=0)
        if np.all(np.isfinite(means[i])):
            for r in radii:
                e = _ellipse(means[i, :2], covs[i, :2, :2], r)
                ax.plot(e[0], e[1], color="C3", lw=1)
        ax.set_title(f"t = {ts[i]:.3g}")
        ax.set_aspect("equal")
        ax.grid(alpha=0.2)
    return fig
