"""Figures of the attention variants: the entropy of attention rows over time, and the
comparison of clustering under several kernels from one start.

Every function reads saved series (cluster counts, row entropies, energies) and never
recomputes dynamics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ._labels import style_metric_axis

__all__ = ["entropy_panel", "variants_figure"]


def entropy_panel(
    ts,
    entropy,
    *,
    low=None,
    high=None,
    n: int | None = None,
    labels: Sequence[str] | None = None,
    ax=None,
):
    r"""The entropy $H_i = -\sum_j A_{ij}\log A_{ij}$ of attention rows over time: one curve
    per run (`entropy`, `(T,)` or `(k, T)`: e.g. the mean over tokens), an optional band
    between `low` and `high` (same shape: e.g. quantiles over tokens), and the uniform row's
    $\log n$ dashed, which a single cluster reaches again. Returns the axes."""
    ts = np.asarray(ts, float)
    mean = np.asarray(entropy, float).reshape(-1, len(ts))
    if ax is None:
        _, ax = plt.subplots(figsize=(4.6, 3.4), layout="constrained")
    bands = [None if b is None else np.asarray(b, float).reshape(mean.shape) for b in (low, high)]
    for j, row in enumerate(mean):
        label = labels[j] if labels is not None and j < len(labels) else None
        ax.plot(ts, row, lw=1.4, c=f"C{j % 10}", label=label)
        if bands[0] is not None and bands[1] is not None:
            ax.fill_between(ts, bands[0][j], bands[1][j], color=f"C{j % 10}", alpha=0.15, lw=0)
    if n is not None:
        ax.axhline(np.log(n), c="0.4", ls="--", lw=1, label=r"$\log n$ (uniform row)")
    ax.set_title("entropy of attention rows")
    ax.set_ylabel(r"$H_i$ (nats)", fontsize=8)
    ax.set_xlabel("time t")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    return ax


def variants_figure(
    ts,
    series: Mapping[str, np.ndarray],
    *,
    labels: Sequence[str],
    n: int,
    energy: Mapping[str, np.ndarray] | None = None,
    title: str = "",
) -> Figure:
    """Clustering under several kernels from one start: cluster count, row entropy (mean
    over tokens, with the band `entropy_low`..`entropy_high` when saved) and, for the runs
    that have one, the interaction energy (`energy`: `{run: (T,)}`)."""
    ts = np.asarray(ts, float)
    panels = 3 if energy else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.5), layout="constrained")
    counts = np.asarray(series["clusters"], float).reshape(-1, len(ts))
    for j, row in enumerate(counts):
        axes[0].plot(ts, row, lw=1.4, c=f"C{j % 10}", label=labels[j], drawstyle="steps-post")
    style_metric_axis(axes[0], "clusters")
    axes[0].set_xlabel("time t")
    axes[0].grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    entropy_panel(
        ts,
        series["entropy"],
        low=series.get("entropy_low"),
        high=series.get("entropy_high"),
        n=n,
        ax=axes[1],
    )
    if energy:
        for name, values in energy.items():
            j = list(labels).index(name)
            axes[2].plot(ts, np.asarray(values, float), lw=1.4, c=f"C{j % 10}", label=name)
        style_metric_axis(axes[2], "energy")
        axes[2].set_xlabel("time t")
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig
