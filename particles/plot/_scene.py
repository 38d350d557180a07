"""What the animation pipeline draws: a scene is a figure whose frames differ only in a few
artists, and the pieces every scene shares (the time label).

A scene is built on an empty figure from saved arrays (`scene(fig, ts, data, **options)`);
`update(i)` changes its moving artists in place to frame `i`, and `dynamic` lists them. The
renderer draws everything else once and blits only `dynamic`, so scenes never redraw axes.
"""

from __future__ import annotations

import abc

import numpy as np

__all__ = ["AbstractScene", "TimeLabel"]


class AbstractScene(abc.ABC):
    """A figure that changes from frame to frame: particle clouds (`CloudScene`), particles
    over Gaussian level sets (`GaussianScene`), densities on the circle (`CircleScene`).

    Attributes:
        ts: the saved times `(T,)`, one per frame.
        dynamic: the artists that `update` changes (everything else is drawn once).
    """

    ts: np.ndarray
    dynamic: list

    @abc.abstractmethod
    def update(self, i: int) -> None:
        """Change the artists of `dynamic` to show frame `i`."""

    @classmethod
    @abc.abstractmethod
    def default_size(cls, ts, data, **options) -> tuple[float, float]:
        """The figure size in inches when the caller gives none."""


class TimeLabel:
    """`t = 1.5` in the top-left corner of each of `axes`, redrawn at every frame."""

    def __init__(self, axes, ts, label: str = "t", fmt: str = ".3g"):
        self.ts, self.label, self.fmt = np.asarray(ts, float), label, fmt
        self.texts = [
            ax.text(
                0.02, 0.98, "", transform=ax.transAxes, va="top", ha="left", fontsize=9, zorder=10
            )
            for ax in axes
        ]

    def update(self, i: int) -> None:
        for text in self.texts:
            text.set_text(f"{self.label} = {format(self.ts[i], self.fmt)}")


def check_times(ts) -> np.ndarray:
    """Saved times as a 1-D float array of at least one time."""
    ts = np.asarray(ts, dtype=float)
    if ts.ndim != 1 or len(ts) < 1:
        raise ValueError(f"ts must be a 1-D array of times; got shape {ts.shape}")
    return ts
