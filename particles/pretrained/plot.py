"""Animations of real tokens: a fixed 3-D PCA of a saved trajectory with a few tokens
labelled by their strings (matplotlib; imported only here, never by the numerics).

It reads saved arrays and never recomputes dynamics; frames go through the library's one
pipeline (`particles.plot.Renderer` and the atomic writer `particles.plot.write`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..plot import AbstractScene, Renderer, cluster_colors, write
from ..plot._scene import check_times

__all__ = ["SweepScene", "TokenScene", "sweep_animation", "token_animation"]


class TokenScene(AbstractScene):
    """Tokens in a fixed 3-D projection `(T, n, 3)`, coloured by tracked cluster labels
    `(T, n)`, the tokens at `labelled` (indices) annotated with `strings`."""

    def __init__(
        self,
        fig,
        ts,
        xs,
        *,
        strings: Sequence[str],
        labelled: Sequence[int],
        clusters=None,
        title: str = "",
        time_label: str = "layer",
    ):
        self.ts = check_times(ts)
        xs = np.asarray(xs, float)
        if xs.ndim != 3 or xs.shape[0] != len(self.ts) or xs.shape[2] != 3:
            raise ValueError(f"xs must have shape ({len(self.ts)}, n, 3); got {xs.shape}")
        if len(strings) != xs.shape[1]:
            raise ValueError(f"strings must name the {xs.shape[1]} tokens; got {len(strings)}")
        self.xs = xs
        ax = fig.add_subplot(projection="3d")
        low, high = xs.min(axis=(0, 1)), xs.max(axis=(0, 1))
        pad = 0.05 * (high - low).max()
        ax.set_xlim(low[0] - pad, high[0] + pad)
        ax.set_ylim(low[1] - pad, high[1] + pad)
        ax.set_zlim(low[2] - pad, high[2] + pad)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_zlabel("PC 3")
        if title:
            ax.set_title(title, fontsize=10)
        colors = cluster_colors(np.asarray(clusters)) if clusters is not None else None
        self.colors = colors
        first = colors[0] if colors is not None and colors.ndim == 3 else colors
        self.points = ax.scatter(*xs[0].T, s=28, c=first, depthshade=False)
        self.labelled = list(labelled)
        self.texts = [ax.text(*xs[0, i], f" {strings[i]}", fontsize=8) for i in self.labelled]
        self.time_label = time_label
        self.clock = ax.text2D(0.02, 0.98, "", transform=ax.transAxes, va="top", fontsize=9)
        self.dynamic = [self.points, *self.texts, self.clock]

    @classmethod
    def default_size(cls, ts, data, **options) -> tuple[float, float]:
        return (6.4, 5.6)

    def update(self, i: int) -> None:
        x = self.xs[i]
        self.points._offsets3d = (x[:, 0], x[:, 1], x[:, 2])
        if self.colors is not None and self.colors.ndim == 3:
            self.points.set_facecolor(self.colors[i])
            self.points.set_edgecolor(self.colors[i])
        # blitting draws the collection alone, without the axes' projection pass: project it
        # here (the camera is fixed, so the axes' projection matrix is the one drawn once)
        self.points.do_3d_projection()
        for text, j in zip(self.texts, self.labelled, strict=True):
            text.set_position_3d(tuple(x[j]))
        self.clock.set_text(f"{self.time_label} = {self.ts[i]:.0f}")


def token_animation(
    ts,
    xs,
    path: str | Path,
    *,
    strings: Sequence[str],
    labelled: Sequence[int],
    clusters=None,
    title: str = "",
    time_label: str = "layer",
    fps: float = 20,
    dpi: int = 100,
) -> Path:
    """Write the `TokenScene` of a saved trajectory to `path` (`.mp4` or `.gif`),
    atomically."""
    renderer = Renderer(
        ts,
        xs,
        scene=TokenScene,
        dpi=dpi,
        strings=strings,
        labelled=labelled,
        clusters=clusters,
        title=title,
        time_label=time_label,
    )
    return write(path, (renderer.render(i) for i in range(len(renderer))), fps)


class SweepScene(AbstractScene):
    """Curves `values` `(k, T)` against `xs` `(T,)` on log-log axes, revealed one point per
    frame (a sweep over the token count drawn as it goes)."""

    def __init__(self, fig, ts, values, *, names: Sequence[str], title: str = "", ylabel: str = ""):
        self.ts = check_times(ts)
        values = np.asarray(values, float)
        if values.ndim != 2 or values.shape[1] != len(self.ts) or len(names) != len(values):
            raise ValueError(
                f"values must have shape ({len(names)}, {len(self.ts)}); got {values.shape}"
            )
        self.values = values
        ax = fig.add_subplot()
        ax.set_xscale("log")
        ax.set_yscale("log")
        positive = values[values > 0]
        ax.set_xlim(self.ts.min() / 1.2, self.ts.max() * 1.2)
        ax.set_ylim(positive.min() / 1.5, positive.max() * 1.5)
        ax.set_xlabel("tokens n")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        if title:
            ax.set_title(title, fontsize=10)
        self.lines = [ax.plot([], [], "o-", ms=4, label=name)[0] for name in names]
        ax.legend(fontsize=7, loc="upper left")
        self.dynamic = list(self.lines)

    @classmethod
    def default_size(cls, ts, data, **options) -> tuple[float, float]:
        return (7.0, 5.0)

    def update(self, i: int) -> None:
        for line, row in zip(self.lines, self.values, strict=True):
            line.set_data(self.ts[: i + 1], row[: i + 1])


def sweep_animation(
    ns,
    values,
    path: str | Path,
    *,
    names: Sequence[str],
    title: str = "",
    ylabel: str = "",
    fps: float = 2,
    dpi: int = 100,
) -> Path:
    """Write the `SweepScene` of saved curves to `path` (`.mp4` or `.gif`), atomically."""
    renderer = Renderer(
        ns, values, scene=SweepScene, dpi=dpi, names=names, title=title, ylabel=ylabel
    )
    return write(path, (renderer.render(i) for i in range(len(renderer))), fps)
