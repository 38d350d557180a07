"""Words for what figures show: panel titles and axis scales of known metric series, and
titles that fit inside their figure.

Metric series are saved under short keys (`mean_cosine`, `clusters`); a figure names them in
words, with the quantity or unit on the y-axis. Unknown keys fall back to the key with
underscores replaced by spaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from matplotlib import ticker

__all__ = [
    "METRIC_LABELS",
    "MetricLabel",
    "fit_title",
    "metric_label",
    "style_metric_axis",
    "suptitle",
]


@dataclass(frozen=True)
class MetricLabel:
    """How a metric series is named in a figure: `title` in words, `unit` (the quantity on
    the y-axis, empty for none), the y-axis `scale` ("linear" or "log"), and whether the
    values are counts (`count`: whole-number tick labels on a log axis)."""

    title: str
    unit: str = ""
    scale: str = "linear"
    count: bool = False


METRIC_LABELS: dict[str, MetricLabel] = {
    "energy": MetricLabel("interaction energy", r"$E_\beta$"),
    "energy / max": MetricLabel("energy / one-cluster energy", r"$E_\beta / E_\beta^{\max}$"),
    # counts fall from n to a few: only a log axis shows the metastable plateaus at the end
    "clusters": MetricLabel("number of clusters", "count (log scale)", "log", count=True),
    "mean_cosine": MetricLabel("mean pairwise cosine", r"$\cos\angle(x_i, x_j)$"),
    "sphere_drift": MetricLabel("distance off the sphere", r"$\max_i\,||x_i| - 1|$"),
    "effective_rank": MetricLabel("effective rank", "rank of the Gram matrix"),
    "diameter": MetricLabel("diameter", r"$\max_{i,j} |x_i - x_j|$ (log scale)", "log"),
    "aligned_fraction": MetricLabel("aligned pairs", "fraction of pairs"),
    "network_error": MetricLabel("network error", "distance to the ODE"),
}
"""Known metric keys and their words; `metric_label` falls back for any other key."""


def metric_label(name: str) -> MetricLabel:
    """The words for a metric key: `METRIC_LABELS[name]`, or the key with underscores
    replaced by spaces, no unit and a linear scale."""
    return METRIC_LABELS.get(name, MetricLabel(name.replace("_", " ")))


def style_metric_axis(
    ax,
    name: str,
    *,
    scale: str | None = None,
    fontsize: float | None = None,
    unit: bool = True,
):
    """Title, y-label (the unit, unless `unit=False`: small panels) and y-scale of the panel
    of metric `name`, after its curves are drawn.

    `scale` overrides the known scale. A log count axis gets plain integer tick labels.
    """
    label = metric_label(name)
    scale = scale or label.scale
    ax.set_title(label.title, fontsize=fontsize)
    if label.unit and unit:
        ax.set_ylabel(label.unit, fontsize=8)
    if scale == "log":
        values = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.lines] or [[]])
        # log scale needs positive values; a series that is not (a drift exactly 0) keeps linear
        if values.size and np.nanmin(values) > 0:
            ax.set_yscale("log")
            if label.count:
                ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    return ax


# --------------------------------------------------------------------------- titles

_MIN_FONTSIZE = 6.0


def _pieces(text: str, marks: str = ",:;") -> list[str]:
    """`text` cut after each space that follows one of `marks` (every space when `marks`
    is empty) and lies outside `$...$` (mathtext)."""
    pieces, start, math = [], 0, False
    for k, ch in enumerate(text):
        if ch == "$" and (k == 0 or text[k - 1] != "\\"):
            math = not math
        elif not math and ch == " " and k > 0 and (not marks or text[k - 1] in marks):
            pieces.append(text[start : k + 1])
            start = k + 1
    pieces.append(text[start:])
    return [p for p in pieces if p]


def _measurer(fig):
    """A renderer to measure text at the figure's size and dpi, whatever its canvas."""
    from matplotlib.backends.backend_agg import RendererAgg

    return RendererAgg(max(1, int(fig.bbox.width)), max(1, int(fig.bbox.height)), fig.dpi)


def fit_title(text, width: float | None = None) -> None:
    """Wrap a title (a matplotlib `Text`) at its commas and colons, else between words, then
    shrink its font, until every line is at most `width` pixels wide (default: 96 % of the
    figure's width), so that the title is never clipped at the figure's edges. Mathtext
    (`$...$`) is never broken."""
    fig = _root(text)
    content = text.get_text()
    if not content:
        return
    width = 0.96 * fig.bbox.width if width is None else width
    renderer = _measurer(fig)

    def wide(s: str) -> float:
        text.set_text(s)
        return text.get_window_extent(renderer).width

    if wide(content) <= width:
        return
    flat = re.sub(r"\s*\n\s*", " ", content)

    def wrap(pieces: list[str]) -> list[str]:
        lines, current = [], ""
        for piece in pieces:  # greedy: as many pieces on a line as fit
            if current and wide((current + piece).rstrip()) > width:
                lines.append(current.rstrip())
                current = piece
            else:
                current += piece
        return [*lines, current.rstrip()]

    size = text.get_fontsize()
    while True:
        text.set_fontsize(size)
        for marks in (",:;", ""):
            lines = wrap(_pieces(flat, marks))
            if all(wide(line) <= width for line in lines):
                text.set_text("\n".join(lines))
                return
        if size <= _MIN_FONTSIZE:
            break
        size = max(size - 0.5, _MIN_FONTSIZE)
    text.set_text("\n".join(lines))


def _root(artist):
    """The top-level figure of an artist or subfigure (matplotlib >= 3.8)."""
    try:
        return artist.get_figure(root=True)
    except TypeError:  # matplotlib < 3.10: `figure` is the root
        return artist.figure


def suptitle(fig, title: str, **kwargs):
    """`fig.suptitle(title)`, wrapped or shrunk to fit the width of `fig` (a figure or
    subfigure); returns the text."""
    text = fig.suptitle(title, **kwargs)
    fit_title(text, 0.96 * fig.bbox.width)
    return text
