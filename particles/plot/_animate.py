"""Animations of trajectories: MP4 (libx264, yuv420p) through imageio-ffmpeg's binary, or GIF."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import animation
from tqdm.auto import tqdm

from ._figures import _is_on_sphere, _new_axis, draw_cloud


def ffmpeg_path() -> str:
    """The ffmpeg binary shipped by imageio-ffmpeg; also set as matplotlib's ffmpeg."""
    import imageio_ffmpeg

    path = imageio_ffmpeg.get_ffmpeg_exe()
    matplotlib.rcParams["animation.ffmpeg_path"] = path
    return path


def animate(
    ts,
    xs,
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    metrics: Mapping[str, np.ndarray] | None = None,
    colors=None,
    fps: int = 20,
    dpi: int = 100,
    size: tuple[float, float] | None = None,
    title: str = "",
    time_label: str = "t",
    progress: bool = True,
) -> Path:
    """Render a trajectory `xs (T, n, d)`, or a list of trajectories side by side on the same
    time grid with shared axes (`labels`: panel titles), to `path` (`.mp4` or `.gif`), with
    optional metric curves and a cursor at the current time. One frame per saved time."""
    ts = np.asarray(ts)
    several = isinstance(xs, (list, tuple))
    trajectories = [np.asarray(x) for x in xs] if several else [np.asarray(xs)]
    for k, x in enumerate(trajectories):
        if x.ndim != 3 or x.shape[0] != len(ts):
            raise ValueError(
                f"xs[{k}] must have shape (T, n, d) with T = len(ts) = {len(ts)}; got {x.shape}"
            )
    if labels is not None and len(labels) != len(trajectories):
        raise ValueError(
            f"labels must have one title per trajectory ({len(trajectories)}); got {len(labels)}"
        )
    path = Path(path)
    if path.suffix not in (".mp4", ".gif"):
        raise ValueError(f"animation path must end in .mp4 or .gif; got {path.name}")
    metrics = dict(metrics or {})
    clouds = len(trajectories)
    panels = clouds + len(metrics)
    fig = plt.figure(
        figsize=size or (4.2 * clouds + 3.4 * len(metrics), 4.2), dpi=dpi, layout="constrained"
    )
    grid = fig.add_gridspec(1, panels, width_ratios=[1.3] * clouds + [1] * len(metrics))
    everything = np.concatenate([x.reshape(-1, x.shape[-1]) for x in trajectories])
    sphere = _is_on_sphere(everything)
    d = trajectories[0].shape[-1]
    axes = [_new_axis(fig, grid[0, k], d, sphere) for k in range(clouds)]
    if d == 2 and not sphere:
        lo, hi = everything.min(axis=0), everything.max(axis=0)
        pad = 0.05 * (hi - lo).max()
        for ax in axes:
            ax.set_xlim(lo[0] - pad, hi[0] + pad)
            ax.set_ylim(lo[1] - pad, hi[1] + pad)
    cursors = []
    for k, (name, values) in enumerate(metrics.items()):
        m_ax = fig.add_subplot(grid[0, clouds + k])
        values = np.asarray(values)
        for j, row in enumerate(values.reshape(-1, len(ts))):
            m_ax.plot(ts, row, lw=1.5, label=labels[j] if labels and values.ndim > 1 else None)
        if labels and values.ndim > 1:
            m_ax.legend(fontsize=8)
        m_ax.set_xlabel("time t")
        m_ax.set_title(name)
        m_ax.grid(alpha=0.3)
        cursors.append(m_ax.axvline(ts[0], c="C3", lw=1))
    if title:
        fig.suptitle(title)
    palette = list(colors) if several and isinstance(colors, (list, tuple)) else [colors] * clouds
    artists = [
        draw_cloud(ax, x[0], colors=c, sphere=sphere)
        for ax, x, c in zip(axes, trajectories, palette, strict=True)
    ]
    prefix = [f"{lab}: " if labels else "" for lab in (labels or [""] * clouds)]
    texts = [
        ax.set_title(f"{p}{time_label} = {ts[0]:.3g}") for ax, p in zip(axes, prefix, strict=True)
    ]

    def frame(i):
        for k, (ax, x, c) in enumerate(zip(axes, trajectories, palette, strict=True)):
            artists[k].remove()
            artists[k] = draw_cloud(ax, x[i], colors=c, sphere=sphere)
            texts[k].set_text(f"{prefix[k]}{time_label} = {ts[i]:.3g}")
        for c in cursors:
            c.set_xdata([ts[i], ts[i]])
        return [*artists, *texts, *cursors]

    anim = animation.FuncAnimation(fig, frame, frames=len(ts), blit=False)
    if path.suffix == ".mp4":
        ffmpeg_path()
        writer = animation.FFMpegWriter(
            fps=fps, codec="libx264", extra_args=["-pix_fmt", "yuv420p", "-preset", "veryfast"]
        )
    else:
        writer = animation.PillowWriter(fps=fps)
    bar = tqdm(total=len(ts), desc=f"rendering {path.name}", unit="frame", disable=not progress)
    try:
        anim.save(path, writer=writer, dpi=dpi, progress_callback=lambda i, n: bar.update(1))
    finally:
        bar.close()
        plt.close(fig)
    return path
