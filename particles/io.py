"""Saving and loading runs: arrays in `.npz`, metadata in `.json`, both lossless.

A run directory holds `config.json`, `metrics.json` and `trajectory.npz`; figures and
animations sit beside them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import diffrax
import jax.numpy as jnp
import numpy as np

from ._simulate import Trajectory
from ._solve import Stats

TRAJECTORY_FILE = "trajectory.npz"

_RESULTS = {
    int(getattr(diffrax.RESULTS, name)._value): name
    for name in dir(diffrax.RESULTS)
    if isinstance(getattr(diffrax.RESULTS, name), type(diffrax.RESULTS.successful))
}


def _jsonable(value: Any) -> Any:
    """Turn arrays and numpy scalars into JSON types; floats keep every digit (repr)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan; keep them readable and reversible
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def save_trajectory(path: str | Path, trajectory: Trajectory) -> None:
    """Write a trajectory to `.npz` (exact: arrays keep their dtype and every bit)."""
    arrays = dict(
        ts=np.asarray(trajectory.ts),
        xs=np.asarray(trajectory.xs),
        weights=np.asarray(trajectory.weights),
    )
    if trajectory.stats is not None:
        arrays.update(
            num_steps=np.asarray(trajectory.stats.num_steps),
            num_accepted=np.asarray(trajectory.stats.num_accepted),
            num_rejected=np.asarray(trajectory.stats.num_rejected),
        )
    if trajectory.result is not None:
        arrays.update(result=np.asarray(trajectory.result._value))
    np.savez(path, **arrays)


def load_trajectory(path: str | Path) -> Trajectory:
    """Read a trajectory written by `save_trajectory`."""
    path = Path(path)
    try:
        data = np.load(path)
        fields = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except Exception as e:  # zipfile, pickle and value errors: all mean a broken file
        raise ValueError(f"{path}: not a readable trajectory file ({e})") from None
    missing = {"ts", "xs", "weights"} - set(fields)
    if missing:
        raise ValueError(f"{path}: missing arrays {sorted(missing)}")
    xs = fields["xs"]
    if (
        xs.ndim != 3
        or fields["ts"].shape != (xs.shape[0],)
        or fields["weights"].shape != (xs.shape[1],)
    ):
        raise ValueError(f"{path}: inconsistent shapes ts {fields['ts'].shape}, xs {xs.shape}")
    stats = None
    if {"num_steps", "num_accepted", "num_rejected"} <= set(fields):
        stats = Stats(
            jnp.asarray(fields["num_steps"]),
            jnp.asarray(fields["num_accepted"]),
            jnp.asarray(fields["num_rejected"]),
        )
    result = None
    if "result" in fields:
        result = getattr(diffrax.RESULTS, _RESULTS.get(int(fields["result"]), "successful"))
    return Trajectory(
        ts=jnp.asarray(fields["ts"]),
        xs=jnp.asarray(xs),
        weights=jnp.asarray(fields["weights"]),
        stats=stats,
        result=result,
    )


def save_run(
    directory: str | Path,
    *,
    trajectory: Trajectory | None = None,
    config: dict | None = None,
    metrics: dict | None = None,
    arrays: dict[str, Any] | None = None,
) -> Path:
    """Write the parts of a run into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if config is not None:
        write_json(directory / "config.json", config)
    if metrics is not None:
        write_json(directory / "metrics.json", metrics)
    if trajectory is not None:
        save_trajectory(directory / TRAJECTORY_FILE, trajectory)
    if arrays:
        np.savez(directory / "arrays.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    return directory


def load_run(directory: str | Path) -> dict[str, Any]:
    """Read a run directory: `{"config", "metrics", "trajectory", "arrays"}` (absent parts
    are `None`). A missing directory or a broken file raises an error naming the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such run directory")
    run: dict[str, Any] = {"config": None, "metrics": None, "trajectory": None, "arrays": None}
    for key, name in (("config", "config.json"), ("metrics", "metrics.json")):
        if (directory / name).exists():
            run[key] = read_json(directory / name)
    if (directory / TRAJECTORY_FILE).exists():
        run["trajectory"] = load_trajectory(directory / TRAJECTORY_FILE)
    if (directory / "arrays.npz").exists():
        with np.load(directory / "arrays.npz") as data:
            run["arrays"] = {k: data[k] for k in data.files}
    return run
