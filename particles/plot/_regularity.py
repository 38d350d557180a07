"""Figures of the regularity studies: Lipschitz constants against n and R, Wasserstein
separation of mis-specified inputs along the flow. They plot saved numbers only."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

_BOUND_STYLE = {"ls": "--", "lw": 1.3}
# upper bounds: one dark grey, told apart by dash pattern
_DASHES = ("--", "-.", (0, (5, 2, 1, 2, 1, 2)), ":")


def _axes(ax, size=(6.4, 4.4)):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    return fig, ax


def _bound_style(k: int) -> dict:
    return {"c": "0.3", "ls": _DASHES[k % len(_DASHES)], "lw": 1.3}


def _finish_log(ax, xlabel: str, ylabel: str, title: str, *, logx: bool = True) -> None:
    """Log axes (the x axis too with `logx`), labels, grid, legend and title."""
    if logx:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5)
    if title:
        ax.set_title(title)


def lipschitz_vs_n(
    ns,
    series: Mapping[str, np.ndarray],
    *,
    bounds: Mapping[str, np.ndarray] | None = None,
    fits: Mapping[str, Mapping] | None = None,
    threshold: float | None = None,
    ax=None,
    title: str = "",
) -> Figure:
    """Log-log plot of measured Lipschitz constants against the number of tokens.

    Args:
        ns: token counts, shape `(k,)`.
        series: measured constants by name; each of shape `(k,)`, or a pair `(ns, values)`
            for a series measured on other token counts (e.g. a search at small n).
        bounds: upper bounds by name, on `ns` (dashed).
        fits: power-law fits by series name: `{"exponent", "prefactor", "n_range": [lo, hi]}`,
            drawn as dotted lines over their range and quoted in the legend.
        threshold: a token count to mark with a vertical line (where the sqrt(n) growth of
            the adversarial cloud is predicted to stop).
    """
    fig, ax = _axes(ax)
    ns = np.asarray(ns, float)
    fits = dict(fits or {})
    for k, (name, values) in enumerate(series.items()):
        x, y = (ns, values) if not isinstance(values, tuple) else values
        x, y = np.asarray(x, float), np.asarray(y, float)
        label = name
        if name in fits:
            label += f"  (slope {fits[name]['exponent']:.2f})"
        ax.plot(x, y, "o-", ms=3.5, lw=1.3, c=f"C{k}", label=label)
        if name in fits:
            lo, hi = fits[name]["n_range"]
            xf = np.geomspace(lo, hi, 20)
            ax.plot(xf, fits[name]["prefactor"] * xf ** fits[name]["exponent"], ":", c=f"C{k}")
    for k, (name, values) in enumerate((bounds or {}).items()):
        ax.plot(ns, np.asarray(values, float), label=name, **_bound_style(k))
    if threshold is not None:
        ax.axvline(threshold, c="0.5", lw=0.8)
        ax.text(
            threshold,
            0.02,
            " predicted end of growth",
            rotation=90,
            va="bottom",
            fontsize=7.5,
            transform=ax.get_xaxis_transform(),
        )
    _finish_log(ax, "number of tokens n", r"local Lipschitz constant $\|DF(X)\|_2$", title)
    return fig


def lipschitz_vs_radius(
    radii,
    series: Mapping[str, np.ndarray],
    *,
    bounds: Mapping[str, np.ndarray] | None = None,
    ax=None,
    title: str = "",
) -> Figure:
    """Log-log plot of Lipschitz constants against the radius R of the ball holding the
    cloud (dot-product attention grows without bound; L2 attention stays bounded)."""
    fig, ax = _axes(ax)
    radii = np.asarray(radii, float)
    for k, (name, values) in enumerate(series.items()):
        ax.plot(radii, np.asarray(values, float), "o-", ms=3.5, c=f"C{k}", label=name)
    for k, (name, values) in enumerate((bounds or {}).items()):
        values = np.broadcast_to(np.asarray(values, float), radii.shape)
        ax.plot(radii, values, label=name, **_bound_style(k))
    _finish_log(ax, "radius R of the ball", "Lipschitz constant", title)
    return fig


def wasserstein_separation(
    ts,
    series: Mapping[str, np.ndarray],
    *,
    rate: float | None = None,
    ax=None,
    title: str = "",
) -> Figure:
    r"""$W_1(\mu_t, \nu_t)$ for each mis-specified input against time (log scale), with the
    Grönwall bound $e^{L t} W_1(\mu_0, \nu_0)$ of each dashed when `rate` $L$ is given."""
    fig, ax = _axes(ax)
    ts = np.asarray(ts, float)
    for k, (name, values) in enumerate(series.items()):
        values = np.asarray(values, float)
        ax.plot(ts, values, lw=1.6, c=f"C{k}", label=name)
        if rate is not None:
            with np.errstate(over="ignore"):
                ax.plot(ts, values[0] * np.exp(rate * ts), c=f"C{k}", lw=0.9, ls="--")
    if rate is not None:
        ax.plot([], [], c="0.4", ls="--", lw=0.9, label=rf"bound $e^{{Lt}} W_1(0)$, L = {rate:.3g}")
    # the bound leaves the frame at once when L is large: frame the measurements
    values = np.concatenate([np.asarray(v, float).ravel() for v in series.values()])
    values = values[values > 0]
    if values.size:
        ax.set_ylim(0.5 * values.min(), 20 * values.max())
    _finish_log(ax, "time t", r"$W_1(\mu_t, \nu_t)$", title, logx=False)
    return fig


def field_vs_wasserstein(
    distances: Mapping[str, np.ndarray],
    gaps: Mapping[str, np.ndarray],
    *,
    slope: float | None = None,
    ax=None,
    title: str = "",
) -> Figure:
    r"""Scatter of $\sup_z |v[\mu](z) - v[\nu](z)|$ against $W_1(\mu, \nu)$ per kind of
    perturbation, with the line $L_\mu W_1$ of the implemented bound when `slope` is given."""
    fig, ax = _axes(ax)
    every = []
    for k, name in enumerate(distances):
        w, g = np.asarray(distances[name], float), np.asarray(gaps[name], float)
        ax.plot(w, g, "o", ms=4, c=f"C{k}", label=name)
        every.append(w)
    if slope is not None and every:
        w = np.concatenate(every)
        w = np.geomspace(w[w > 0].min(), w.max(), 20)
        ax.plot(
            w,
            slope * w,
            c="0.3",
            label=rf"bound $L_\mu W_1$, $L_\mu$ = {slope:.3g}",
            **_BOUND_STYLE,
        )
    _finish_log(ax, r"$W_1(\mu, \nu)$", r"$\sup_z |v[\mu](z) - v[\nu](z)|$", title)
    return fig
