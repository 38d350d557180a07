"""Running an experiment into a run directory, atomically.

The run is written into a hidden temporary directory beside the target and renamed into
place only when every file is written, so an interrupted or failed run never leaves a
directory that looks complete.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from particles.io import write_json

from . import _registry

_PACKAGES = ("jax", "jaxlib", "diffrax", "equinox", "numpy", "matplotlib", "particles")


class RunError(Exception):
    """A run cannot start: bad config or unusable output directory. The message is one line."""


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def default_directory(name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise RunError(f"run directory {out} already exists (pass --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a directory")


def run(config, out: str | Path | None = None, *, overwrite: bool = False, **options) -> Path:
    """Run the experiment whose config this is and return its run directory.

    Args:
        config: an experiment config (e.g. `sims.experiments.sphere_clustering.Config()`).
        out: the run directory; default `runs/<experiment>-<timestamp>`.
        overwrite: replace `out` if it exists.
        options: passed on to the experiment function (e.g. `gif=True`).
    """
    exp = _registry.for_config(config)
    out = Path(out) if out is not None else default_directory(exp.name)
    _check_target(out, overwrite)
    try:
        # the run is written here and renamed into place once complete
        out.resolve().parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.resolve().parent)
        )
    except OSError as e:
        raise RunError(f"cannot write run directory {out}: {e.strerror}") from None
    try:
        write_json(
            tmp / "config.json",
            {
                "experiment": exp.name,
                "config": dataclasses.asdict(config),
                "created": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv) if sys.argv and sys.argv[0] else None,
                "versions": versions(),
            },
        )
        exp.run(config, tmp, **options)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
