"""Animations of trajectories: MP4 (libx264, yuv420p) through imageio-ffmpeg's binary, or GIF."""

from __future__ import annotations

from collections.abc import Mapping
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
    metrics: Mapping[str, np.ndarray] | None = None,
    colors=None,
    fps: int = 20,
    dpi: int = 100,
    size: tuple[float, float] | None = None,
    title: str = "",
    time_label: str = "t",
    progress: bool = True,
) -> Path:
    """Render a trajectory to `path` (`.mp4` or `.gif`): the cloud, and optionally metric
    curves with a cursor at the current time. One frame per saved time."""
    ts, xs = np.asarray(ts), np.asarray(xs)
    path = Path(path)
    if path.suffix not in (".mp4", ".gif"):
        raise ValueError(f"animation path must end in .mp4 or .gif; got {path.name}")
    metrics = dict(metrics or {})
    panels = 1 + len(metrics)
    fig = plt.figure(figsize=size or (4.2 + 3.4 * len(metrics), 4.2), dpi=dpi, layout="constrained")
    grid = fig.add_gridspec(1, panels, width_ratios=[1.3] + [1] * len(metrics))
    sphere = _is_on_sphere(xs[0])
    ax = _new_axis(fig, grid[0, 0], xs.shape[-1], sphere)
    if xs.shape[-1] == 2 and not sphere:
        lo, hi = xs.min(axis=(0, 1)), xs.max(axis=(0, 1))
        pad = 0.05 * (hi - lo).max()
        ax.set_xlim(lo[0] - pad, hi[0] + pad)
        ax.set_ylim(lo[1] - pad, hi[1] + pad)
    cursors = []
    for k, (name, values) in enumerate(metrics.items()):
        m_ax = fig.add_subplot(grid[0, k + 1])
        m_ax.plot(ts, np.asarray(values), lw=1.5)
        m_ax.set_xlabel("time t")
        m_ax.set_title(name)
        m_ax.grid(alpha=0.3)
        cursors.append(m_ax.axvline(ts[0], c="C3", lw=1))
    if title:
        fig.suptitle(title)
    artist = [draw_cloud(ax, xs[0], colors=colors, sphere=sphere)]
    label = ax.set_title(f"{time_label} = {ts[0]:.3g}")

    def frame(i):
        artist[0].remove()
        artist[0] = draw_cloud(ax, xs[i], colors=colors, sphere=sphere)
        label.set_text(f"{time_label} = {ts[i]:.3g}")
        for c in cursors:
            c.set_xdata([ts[i], ts[i]])
        return [artist[0], label, *cursors]

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
