"""Redrawing a saved run's figures and animation from its files, without recomputing.

A run directory holds `trajectory.npz` (required here), `config.json` and `metrics.json`
(`{"ts": [...], "series": {name: [...]}}`), and optionally `arrays.npz`; an array
`attention` `(T, n, n)` there becomes a heat-map panel of the animation. Every broken or
missing file raises `ReplayError` with one line naming the file; `check_complete` refuses a
run left incomplete by an interruption. Figures and animations are written atomically (a hidden
temporary file beside the target, renamed over it) with ordinary modes (0644 under umask 022),
so an interrupted `plot` or `animate` leaves the previous file as it was.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

import particles as P

from . import _files

SERIES_SHOWN = 3  # metric panels drawn by default (the first series of metrics.json)


class ReplayError(Exception):
    """A run directory cannot be redrawn; the message is one line naming the file."""


@dataclasses.dataclass
class SavedRun:
    directory: Path
    experiment: str
    config: dict[str, Any]
    ts: np.ndarray
    xs: np.ndarray
    series: dict[str, np.ndarray]
    arrays: dict[str, np.ndarray]

    @property
    def title(self) -> str:
        shown = {k: v for k, v in self.config.items() if k in ("n", "d", "beta", "normalization")}
        names = {"beta": r"$\beta$"}
        params = ", ".join(
            f"{names.get(k, k)} = {v:g}" if isinstance(v, float) else f"{k} = {v}"
            for k, v in shown.items()
        )
        return f"{self.experiment}: {params}" if params else self.experiment

    @property
    def cluster_tol(self) -> float | None:
        tol = self.config.get("cluster_tol")
        return float(tol) if isinstance(tol, (int, float)) and tol > 0 else None


def check_complete(directory: str | Path) -> None:
    """Raise `ReplayError` if `directory` is a run still being written, or the leftover of
    an interrupted one (killed before it could clean up): never redraw it as a run."""
    directory = Path(directory)
    if (
        directory.name.endswith(_files.PARTIAL_SUFFIX)
        or (directory / _files.PARTIAL_MARKER).exists()
    ):
        raise ReplayError(
            f"{directory}: an incomplete run left by an interrupted run, not a run to redraw"
        )


def experiment_of(directory: str | Path):
    """The registered experiment that wrote `directory` (from its config.json), or `None`
    (a run saved by `particles.io.save_run`, an unknown name, an unreadable file: the
    generic redraw then reports what is wrong)."""
    from . import _registry

    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    try:
        config = P.io.read_json(path)
    except (OSError, ValueError):
        return None
    name = config.get("experiment") if isinstance(config, dict) else None
    return _registry.list_experiments().get(name) if isinstance(name, str) else None


def load(directory: str | Path) -> SavedRun:
    """Read a run directory written by `sims.run` (or `particles.io.save_run`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ReplayError(f"{directory}: no such run directory")
    for name in (P.io.TRAJECTORY_FILE, "config.json", "metrics.json", "arrays.npz"):
        path = directory / name
        # a FIFO would block and a device (/dev/zero) never ends: read regular files only
        if path.exists() and not path.is_file():
            raise ReplayError(f"{path}: not a regular file")
    try:
        trajectory = P.io.load_trajectory(directory / P.io.TRAJECTORY_FILE)
        config = (
            P.io.read_json(directory / "config.json")
            if (directory / "config.json").exists()
            else {}
        )
        metrics = (
            P.io.read_json(directory / "metrics.json")
            if (directory / "metrics.json").exists()
            else {}
        )
        arrays = {}
        if (directory / "arrays.npz").exists():
            arrays = P.io.load_arrays(directory / "arrays.npz")
    except (FileNotFoundError, ValueError) as e:
        raise ReplayError(str(e)) from None
    except OSError as e:  # unreadable: permissions, I/O error
        raise ReplayError(f"{e.filename or directory}: cannot read ({e.strerror})") from None
    ts, xs = np.asarray(trajectory.ts), np.asarray(trajectory.xs)
    if not np.all(np.isfinite(xs)):
        raise ReplayError(f"{directory / P.io.TRAJECTORY_FILE}: the trajectory holds NaN or inf")
    if not isinstance(config, dict):
        raise ReplayError(f"{directory / 'config.json'}: expected a JSON object")
    series = _series(directory / "metrics.json", metrics, len(ts))
    attention = arrays.get("attention")
    n = xs.shape[1]
    if attention is not None and attention.shape != (len(ts), n, n):
        raise ReplayError(
            f"{directory / 'arrays.npz'}: attention has shape {attention.shape}, "
            f"expected (T, n, n) = {(len(ts), n, n)}"
        )
    inner = config.get("config", config)
    if not isinstance(inner, dict):
        raise ReplayError(f"{directory / 'config.json'}: 'config' must be an object")
    tol = inner.get("cluster_tol")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol <= 0):
        raise ReplayError(
            f"{directory / 'config.json'}: cluster_tol must be a number > 0; got {tol!r}"
        )
    return SavedRun(
        directory=directory,
        experiment=str(config.get("experiment", directory.name)),
        config=inner,
        ts=ts,
        xs=xs,
        series=series,
        arrays=arrays,
    )


def _series(path: Path, metrics: Any, T: int) -> dict[str, np.ndarray]:
    """The time series of metrics.json that lie on the trajectory's times."""
    if not metrics:
        return {}
    if not isinstance(metrics, dict):
        raise ReplayError(f"{path}: expected a JSON object")
    if "series" not in metrics:
        return {}
    if not isinstance(metrics["series"], dict) or "ts" not in metrics:
        raise ReplayError(f"{path}: 'series' must be an object of lists on 'ts'")
    try:
        ts = np.asarray(metrics["ts"], dtype=float)
        series = {k: np.asarray(v, dtype=float) for k, v in metrics["series"].items()}
    except (TypeError, ValueError) as e:
        raise ReplayError(f"{path}: series are not numbers ({e})") from None
    if ts.shape != (T,):
        raise ReplayError(f"{path}: 'ts' has {ts.size} times but the trajectory has {T} frames")
    return {k: v for k, v in series.items() if v.shape == (T,)}


def _clusters(run: SavedRun, tol: float | None):
    if tol is None:
        return None
    return np.asarray(P.metrics.track_clusters(run.xs, tol))


def draw_figures(
    run: SavedRun,
    *,
    series: list[str] | None = None,
    cluster_tol: float | None = None,
    dpi: int = 110,
) -> list[Path]:
    """Write `figure.png` (snapshots over metric curves) and `final_state.png`."""
    from particles import plot

    shown = _pick(run, series)
    clusters = _clusters(run, cluster_tol)
    fig = plot.summary_figure(
        run.ts, run.xs, shown, clusters=clusters, singletons="0.65", title=run.title
    )
    out = [run.directory / "figure.png", run.directory / "final_state.png"]
    import matplotlib.pyplot as plt

    try:
        save_figure(fig, out[0], dpi)
        fig = plot.final_state(
            run.ts, run.xs, clusters=clusters, singletons="0.65", title=run.title, dpi=dpi
        )
        save_figure(fig, out[1], dpi)
    finally:
        plt.close("all")
    return out


def writing(path: Path):
    """A temporary path to write `path` through, atomically; a failed write (read-only
    directory, full disk) raises `OSError` naming `path`, which is left as it was."""
    return _files.atomic_path(path)


def draw_run(directory: Path, figures, animations, *, animation: bool, gif: bool) -> None:
    """At the end of a run: its `figures(directory)`, then with `animation` its
    `animations(directory, gif=gif)` (the functions it registered with `sims.figures` and
    `sims.animations`), drawn from the files just written, exactly as `python -m sims plot`
    and `animate` redraw them later."""
    figures(directory)
    if animation:
        animations(directory, gif=gif)


def save_figure(fig, path: Path, dpi: int) -> None:
    """Write the matplotlib figure `fig` to `path` (through `writing`, atomically)."""
    with writing(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def animation_path(directory: Path, gif: bool) -> Path:
    """Where a run's animation goes: `animation.gif` with `gif`, else `animation.mp4`."""
    return directory / ("animation.gif" if gif else "animation.mp4")


def write_animation(
    directory: Path, animate, *args, gif: bool, fps: float, options: dict, **kwargs
) -> list[Path]:
    """Write `animate(*args, tmp, **kwargs, **options)` (a `particles.plot` animation
    function) to the run's animation file atomically, at the run's `fps` unless `options`
    (the user's animation options) give one; returns `[the path]`."""
    out = animation_path(directory, gif)
    with writing(out) as tmp:
        animate(*args, tmp, **kwargs, **{"fps": fps, **options})
    return [out]


def _pick(run: SavedRun, names: list[str] | None) -> dict[str, np.ndarray]:
    if names is None:
        return dict(list(run.series.items())[:SERIES_SHOWN])
    missing = [k for k in names if k not in run.series]
    if missing:
        raise ReplayError(
            f"{run.directory / 'metrics.json'}: no series {missing[0]!r} "
            f"(has: {', '.join(run.series) or 'none'})"
        )
    return {k: run.series[k] for k in names}


def draw_animation(
    run: SavedRun,
    out: Path | None = None,
    *,
    gif: bool = False,
    series: list[str] | None = None,
    cluster_tol: float | None = None,
    progress: bool = True,
    **options,
) -> Path:
    """Write the animation of a saved run (`animation.mp4`, or `.gif`), options as in
    `particles.plot.animate`."""
    out = Path(out or animation_path(run.directory, gif))
    with writing(out) as tmp:
        _animate(run, tmp, series, cluster_tol, progress, options)
    return out


def _animate(run, path, series, cluster_tol, progress, options):
    from particles import plot

    try:
        plot.animate(
            run.ts,
            run.xs,
            path,
            metrics=_pick(run, series),
            clusters=_clusters(run, cluster_tol),
            singletons="0.65",
            attention=run.arrays.get("attention"),
            title=run.title,
            progress=progress,
            **options,
        )
    except RuntimeError as e:  # ffmpeg stopped (e.g. it could not write: a full disk)
        raise OSError(f"the video encoder failed ({str(e).splitlines()[0]})") from None
