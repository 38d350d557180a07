"""Saving and loading runs: arrays in `.npz`, metadata in `.json`, both lossless.

A run directory holds `config.json`, `metrics.json` and `trajectory.npz`; figures and
animations sit beside them. Every file is written atomically: into a hidden temporary file
beside it (`.NAME.XXXXXXXX.partial.SUFFIX`), then renamed over it, so an interruption leaves
the old file or the new one, never half of one; it gets the mode of an ordinary new file
(0644 under umask 022). Loading never unpickles (`allow_pickle=False`): an `.npz` holding
object arrays is refused like any other broken file, with an error naming it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diffrax
import jax.numpy as jnp
import numpy as np

from ._simulate import Trajectory
from ._solve import Stats

__all__ = [
    "TRAJECTORY_FILE",
    "load_arrays",
    "load_run",
    "load_trajectory",
    "read_json",
    "save_run",
    "save_trajectory",
    "write_json",
]

TRAJECTORY_FILE = "trajectory.npz"
"""The file name of a run's trajectory inside its run directory."""

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


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary file beside `path`, renamed over it once the block succeeds."""
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent
        )
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    try:
        yield Path(name)
        mask = os.umask(0o022)  # mkstemp makes 0600; give the file the mode open() would
        os.umask(mask)
        os.chmod(name, 0o666 & ~mask)
        os.replace(name, path)
    except OSError as e:  # a full disk, say: name the file meant, not the temporary one
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def write_json(path: str | Path, data: dict) -> None:
    """Write `data` as JSON (arrays as lists, floats with every digit), atomically."""
    text = json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n"
    with _atomic(Path(path)) as tmp:
        tmp.write_text(text)


def read_json(path: str | Path) -> dict:
    """Read a JSON file written by `write_json`. A missing file is a `FileNotFoundError`, an
    unreadable or malformed one a `ValueError`, each naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a JSON file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None


def _savez(path: Path, arrays: dict[str, Any]) -> None:
    with _atomic(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _real(a: np.ndarray) -> bool:
    return a.dtype.kind in "fiub"


def load_arrays(path: str | Path, what: str = "array") -> dict[str, np.ndarray]:
    """Every array of an `.npz` file, read without unpickling; a missing, truncated or
    hostile file (object arrays) raises an error naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as e:
        raise ValueError(f"{path}: not a readable {what} file ({e.strerror})") from None
    if magic != b"PK\x03\x04":  # numpy would take anything else for a pickle
        raise ValueError(f"{path}: not a readable {what} file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(
                f"{path}: holds pickled objects (object arrays), which are never loaded"
            ) from None
        raise ValueError(f"{path}: not a readable {what} file ({e})") from None
    except Exception as e:  # zipfile, OSError, EOF: a broken file
        raise ValueError(f"{path}: not a readable {what} file ({e})") from None


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
    _savez(Path(path), arrays)


def load_trajectory(path: str | Path) -> Trajectory:
    """Read a trajectory written by `save_trajectory`."""
    path = Path(path)
    fields = load_arrays(path, "trajectory")
    missing = {"ts", "xs", "weights"} - set(fields)
    if missing:
        raise ValueError(f"{path}: missing arrays {sorted(missing)}")
    for name in ("ts", "xs", "weights", "num_steps", "num_accepted", "num_rejected", "result"):
        if name in fields and not _real(fields[name]):
            raise ValueError(f"{path}: {name} has dtype {fields[name].dtype}, expected numbers")
    if "result" in fields and fields["result"].size != 1:
        raise ValueError(f"{path}: result has shape {fields['result'].shape}, expected a scalar")
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
        code = int(np.asarray(fields["result"]).reshape(()))
        result = getattr(diffrax.RESULTS, _RESULTS.get(code, "successful"))
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
        _savez(directory / "arrays.npz", {k: np.asarray(v) for k, v in arrays.items()})
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
        run["arrays"] = load_arrays(directory / "arrays.npz")
    return run
