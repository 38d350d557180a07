"""Figures and animations of mean-field limits: convergence rates, Gaussian level sets,
densities on the circle. They read saved arrays only; nothing here recomputes dynamics."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import animation
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ._animate import ffmpeg_path


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


def _writer(path: Path, fps: int):
    if path.suffix == ".mp4":
        ffmpeg_path()
        return animation.FFMpegWriter(
            fps=fps, codec="libx264", extra_args=["-pix_fmt", "yuv420p", "-preset", "veryfast"]
        )
    if path.suffix == ".gif":
        return animation.PillowWriter(fps=fps)
    raise ValueError(f"animation path must end in .mp4 or .gif; got {path.name}")


def _save(fig, frame, frames, path, fps, dpi, progress):
    writer = _writer(path, fps)
    anim = animation.FuncAnimation(fig, frame, frames=frames, blit=False)
    bar = tqdm(total=frames, desc=f"rendering {path.name}", unit="frame", disable=not progress)
    try:
        anim.save(path, writer=writer, dpi=dpi, progress_callback=lambda i, n: bar.update(1))
    finally:
        bar.close()
        plt.close(fig)
    return path


def gaussian_animation(
    ts,
    xs,
    means,
    covs,
    path: str | Path,
    *,
    radii=(1.0, 2.0, 3.0),
    fps: int = 15,
    dpi: int = 100,
    title: str = "",
    progress: bool = True,
) -> Path:
    """Animate a 2-d particle trajectory `xs (T, n, 2)` over the level ellipses
    $(x - m)^\\top S^{-1} (x - m) = r^2$ of the mean-field Gaussian $N(m(t), S(t))$."""
    ts, xs = np.asarray(ts), np.asarray(xs)
    means, covs = np.asarray(means), np.asarray(covs)
    path = Path(path)
    _writer(path, fps)  # reject a bad suffix before any rendering
    if xs.ndim != 3 or xs.shape[-1] != 2:
        raise ValueError(f"xs must have shape (T, n, 2); got {xs.shape}")
    fig, ax = plt.subplots(figsize=(5.0, 5.0), layout="constrained")
    finite = np.isfinite(means).all(axis=1)
    outlines = [_ellipse(means[i], covs[i], max(radii)) for i in np.flatnonzero(finite)]
    pts = np.concatenate([xs.reshape(-1, 2)] + [o.T for o in outlines])
    lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
    pad = 0.08 * (hi - lo).max()
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_aspect("equal")
    ax.grid(alpha=0.2)
    dots = ax.scatter(xs[0, :, 0], xs[0, :, 1], s=4, c="C0", alpha=0.6, lw=0, label="particles")
    lines = [ax.plot([], [], color="C3", lw=1.2 if r == radii[0] else 0.8)[0] for r in radii]
    lines[0].set_label("mean-field $N(m(t), S(t))$, 1, 2, 3 sd")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    label = ax.set_title("")

    def frame(i):
        dots.set_offsets(xs[i])
        for line, r in zip(lines, radii, strict=True):
            if finite[i]:
                e = _ellipse(means[i], covs[i], r)
                line.set_data(e[0], e[1])
            else:
                line.set_data([], [])
        label.set_text(f"t = {ts[i]:.3g}")
        return [dots, *lines, label]

    return _save(fig, frame, len(ts), path, fps, dpi, progress)


def circle_animation(
    ts,
    angles,
    theta,
    densities,
    path: str | Path,
    *,
    bins: int = 64,
    fps: int = 15,
    dpi: int = 100,
    title: str = "",
    progress: bool = True,
) -> Path:
    """Animate particles on the circle (angles `(T, n)`, as a normalised histogram) over the
    Eulerian density `densities (T, N)` on the cell centres `theta`."""
    ts, angles = np.asarray(ts), np.asarray(angles)
    theta, densities = np.asarray(theta), np.asarray(densities)
    path = Path(path)
    _writer(path, fps)
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    edges = np.linspace(0, 2 * np.pi, bins + 1)
    ax.set_xlim(0, 2 * np.pi)
    top = max(densities.max(), 1e-12)
    ax.set_ylim(0, 1.15 * top)
    ax.set_xlabel(r"angle $\theta$")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    _, _, bars = ax.hist(
        angles[0], bins=edges, density=True, color="C0", alpha=0.45, label="particles"
    )
    (line,) = ax.plot(theta, densities[0], color="C3", lw=1.5, label="Eulerian density")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    label = ax.set_title("")

    def frame(i):
        heights, _ = np.histogram(np.mod(angles[i], 2 * np.pi), bins=edges, density=True)
        for bar, h in zip(bars, heights, strict=True):
            bar.set_height(h)
        line.set_ydata(densities[i])
        label.set_text(f"t = {ts[i]:.3g}")
        return [*bars, line, label]

    return _save(fig, frame, len(ts), path, fps, dpi, progress)


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
