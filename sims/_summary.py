"""The short summary of results printed at the end of every `run`.

An experiment module may define `summary(metrics: dict) -> list[str]` (its headline numbers,
one per line, from the run's `metrics.json`); otherwise the summary lists the scalar entries
of `metrics.json` outside its time series (`ts`, `series`), nested keys joined by dots. The
run's wall time, from `config.json`, closes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_LINES = 24
"""Longest default summary; the rest stays in metrics.json."""


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e6:
        return f"{value:.1f}"
    return f"{value:.4g}"


def scalars(metrics: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """`(dotted key, formatted value)` for every scalar of `metrics` outside time series:
    numbers, booleans and short strings (lists and arrays are left to the files)."""
    if not isinstance(metrics, dict):
        return
    for key, value in metrics.items():
        if not prefix and key in ("ts", "series"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, name + ".")
        elif isinstance(value, (int, float)):
            yield name, _number(value)
        elif isinstance(value, str) and len(value) <= 40:
            yield name, value


def default_summary(metrics: dict) -> list[str]:
    """The headline scalars of `metrics.json`, aligned, at most `MAX_LINES` of them."""
    items = list(scalars(metrics))
    if not items:
        return []
    width = min(max(len(k) for k, _ in items[:MAX_LINES]), 40)
    lines = [f"{k:<{width}}  {v}" for k, v in items[:MAX_LINES]]
    if len(items) > MAX_LINES:
        lines.append(f"... and {len(items) - MAX_LINES} more in metrics.json")
    return lines


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


def summarize(experiment, directory: Path) -> list[str]:
    """The lines printed after a run of `experiment` into `directory`."""
    metrics = _read(directory / "metrics.json")
    lines = []
    if isinstance(metrics, dict):
        own = experiment.summarize
        lines = list(own(metrics)) if own is not None else default_summary(metrics)
    config = _read(directory / "config.json")
    seconds = config.get("wall_seconds") if isinstance(config, dict) else None
    if isinstance(seconds, (int, float)):
        lines.append(f"wall time: {seconds:.1f} s")
    return lines
