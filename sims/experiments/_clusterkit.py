"""Writing several runs of one clustering experiment into a run directory.

Shared by the clustering experiments: `metrics.json` holds every run's series as
`"<metric> [<run>]"` (each on `ts`, so `python -m sims plot` can redraw them), the main run
is `trajectory.npz`, and `arrays.npz` holds every run's clouds and tracked cluster labels.
No mathematics here: every number comes from `particles`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

import particles as P
from particles import metrics

from .. import _replay


def tracked_labels(xs, tol: float) -> np.ndarray:
    """Cluster labels that follow clusters over time, for a stack of trajectories (k, T, n, d)."""
    return np.asarray(jax.vmap(lambda x: metrics.track_clusters(x, tol))(xs))


def flat_series(names: list[str], series: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`{metric: (k, T)}` -> `{"metric [run]": (T,)}`."""
    return {
        f"{metric} [{name}]": np.asarray(values)[j]
        for metric, values in series.items()
        for j, name in enumerate(names)
    }


def save(
    directory: Path,
    groups: list,
    names: list[str],
    series: dict[str, np.ndarray],
    *,
    main: int = 0,
    labels: list[np.ndarray] | None = None,
    **numbers,
) -> None:
    """Write `trajectory.npz` (run `main`), `arrays.npz` (every run) and `metrics.json`.

    Args:
        groups: `Trajectory`s whose arrays carry a leading run axis (one group per cloud
            shape); their runs, in order, are named by `names`.
        names: the run names.
        series: `{metric: (k, T)}` time series, one row per run.
        labels: tracked cluster labels `(k_g, T, n)` per group.
        numbers: further entries of metrics.json.
    """
    runs = [
        jax.tree_util.tree_map(lambda a, j=j: a[j], g) for g in groups for j in range(len(g.ts))
    ]
    pick = runs[main]
    P.io.save_trajectory(directory / P.io.TRAJECTORY_FILE, pick)
    arrays = {"names": np.asarray(names)}
    for g, group in enumerate(groups):
        suffix = "" if len(groups) == 1 else f"_{g}"
        arrays["xs" + suffix] = np.asarray(group.xs)
        if labels is not None:
            arrays["labels" + suffix] = np.asarray(labels[g])
    np.savez(directory / "arrays.npz", **arrays)
    steps = np.array([int(r.num_steps) for r in runs])
    rejected = np.array([int(r.stats.num_rejected) for r in runs])
    P.io.write_json(
        directory / "metrics.json",
        {
            "ts": np.asarray(pick.ts),
            "series": flat_series(names, series),
            "runs": names,
            "main_run": names[main],
            "final": {
                metric: {name: np.asarray(values)[j][-1] for j, name in enumerate(names)}
                for metric, values in series.items()
            },
            "solver": {
                "num_steps": dict(zip(names, steps.tolist(), strict=True)),
                "num_rejected": dict(zip(names, rejected.tolist(), strict=True)),
            },
            **numbers,
        },
    )


def load(directory: Path) -> dict:
    """Read back what `save` wrote: `config` (the experiment's parameters), `metrics`,
    `names`, `ts`, `series` `{metric: (k, T)}`, and per group `xs` / `labels` (a list, one
    entry per group). Figures are drawn from this alone, never from a recomputation."""
    config = P.io.read_json(directory / "config.json")["config"]
    saved = P.io.read_json(directory / "metrics.json")
    names = list(saved["runs"])
    arrays = P.io.load_arrays(directory / "arrays.npz")
    groups = sorted(k for k in arrays if k == "xs" or k.startswith("xs_"))
    metrics_names = []
    for key in saved["series"]:
        metric = key.rsplit(" [", 1)[0]
        if metric not in metrics_names:
            metrics_names.append(metric)
    series = {
        m: np.asarray([saved["series"][f"{m} [{name}]"] for name in names]) for m in metrics_names
    }
    return dict(
        config=config,
        metrics=saved,
        names=names,
        ts=np.asarray(saved["ts"], dtype=float),
        series=series,
        xs=[arrays[g] for g in groups],
        labels=[
            arrays[g.replace("xs", "labels")] for g in groups if g.replace("xs", "labels") in arrays
        ],
    )


def animate(
    directory: Path,
    r: dict,
    pick: list[int],
    shown: dict[str, str],
    *,
    title: str,
    gif: bool,
    progress: bool,
    options: dict,
    colors: list | None = None,
    **style,
) -> list[Path]:
    """Write the run's animation: runs `pick` of `group` side by side, coloured by their
    tracked clusters (or by `colors`), with the series `shown` `{label: metric}` below.

    `r` is what `load(directory)` read; `pick` indexes the runs of every group in order, and
    the runs it picks belong to one group (clouds of one shape); `options` are the user's
    animation options, which win over the run's `fps`."""
    from particles import plot

    ends = np.cumsum([len(xs) for xs in r["xs"]])
    group = int(np.searchsorted(ends, pick[0], side="right"))
    first = int(ends[group] - len(r["xs"][group]))
    local = [j - first for j in pick]
    if colors is None:
        style = dict(clusters=[r["labels"][group][j] for j in local], singletons="0.65", **style)
    else:
        style = dict(colors=colors, **style)
    return _replay.write_animation(
        directory,
        plot.animate,
        r["ts"],
        [r["xs"][group][j] for j in local],
        gif=gif,
        fps=r["config"]["fps"],
        options=options,
        labels=[r["names"][j] for j in pick],
        metrics={label: r["series"][metric][pick] for label, metric in shown.items()},
        title=title,
        progress=progress,
        **style,
    )
