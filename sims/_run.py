"""Running an experiment into a run directory, atomically.

The run is computed into a hidden temporary sibling of the target, `.NAME.XXXXXXXX.partial`,
which holds the marker file `INCOMPLETE` until every file is written. Then, with signals held
back, the marker goes, an existing run at the target is renamed aside
(`.NAME.XXXXXXXX.replaced`), the new run is renamed into place and the old one removed. An
exception, Ctrl-C (SIGINT), SIGTERM or SIGHUP at any moment leaves either the old complete
run or the new complete run, and no temporary directory. A leftover of SIGKILL is hidden,
named `*.partial` and holds `INCOMPLETE`: `plot`, `animate` and `--overwrite` refuse it.

`--overwrite` replaces only a run of this program (its `config.json` has the fields written
here, the directory holds nothing a run does not write) and never `/`, the home directory,
the working directory or one of its parents.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from particles import __version__ as particles_version
from particles import devices as particles_devices
from particles import io as particles_io

from . import _files, _registry

_PACKAGES = ("jax", "jaxlib", "diffrax", "equinox", "numpy", "matplotlib")

RUN_FIELDS = {"experiment": str, "config": dict, "created": str, "versions": dict}
"""The fields of `config.json` by which a directory is recognised as a run of this program."""
RUN_SUFFIXES = (".json", ".npz", ".png", ".mp4", ".gif")
"""What a run directory holds: files with these suffixes, nothing else."""


class RunError(Exception):
    """A run cannot start or cannot be written: bad config or unusable output directory.
    The message is one line."""


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    # the version of the package imported, whatever distribution installed it (the
    # distribution is attention-particles; an unrelated "particles" exists on PyPI)
    out["particles"] = particles_version
    return out


def default_directory(name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return runs_root() / f"{name}-{stamp}"


def runs_root() -> Path:
    """Where runs go by default: `$PARTICLES_RUNS` if set, else `runs/` in the working
    directory, or in the project checkout holding it (so a notebook started in
    `notebooks/` writes to the checkout's ignored `runs/`, not beside the notebooks)."""
    if os.environ.get("PARTICLES_RUNS"):
        return Path(os.environ["PARTICLES_RUNS"])
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "sims" / "__init__.py").is_file():
            return Path(os.path.relpath(folder / "runs"))
    return Path("runs")


def run_problem(path: Path) -> str | None:
    """Why `path` is not a complete run directory of this program, or `None` if it is one."""
    path = Path(path)
    if not path.is_dir():
        return "it is not a directory"
    if path.name.endswith(_files.PARTIAL_SUFFIX) or (path / _files.PARTIAL_MARKER).exists():
        return "it is an incomplete run left by an interrupted run"
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        return "it has no config.json"
    except (OSError, ValueError, RecursionError):
        return "its config.json is not readable JSON"
    if not isinstance(config, dict):
        return "its config.json is not a JSON object"
    for field, kind in RUN_FIELDS.items():
        if not isinstance(config.get(field), kind):
            return f"its config.json has no {kind.__name__} field {field!r}"
    return None


def _foreign_entry(path: Path) -> str | None:
    """The first entry of run directory `path` that a run never writes, if any."""
    for entry in sorted(path.iterdir()):
        if entry.name.startswith(".") and _files.PARTIAL_SUFFIX in entry.name:
            continue  # a file left by an interrupted atomic write of this program
        if entry.is_symlink() or not entry.is_file() or entry.suffix not in RUN_SUFFIXES:
            return entry.name
    return None


def _protected(path: Path) -> str | None:
    """What `path` is, if it is a directory `--overwrite` must never replace."""
    real = Path(os.path.realpath(path))
    cwd = Path(os.path.realpath(Path.cwd()))
    if real == Path(real.anchor):
        return "the root directory"
    if real == Path(os.path.realpath(Path.home())):
        return "the home directory"
    if real == cwd:
        return "the working directory"
    if real in cwd.parents:
        return "a parent of the working directory"
    return None


def check_target(out: Path, overwrite: bool) -> None:
    """Raise `RunError` unless a new run may be written to `out`: it does not exist, or
    `overwrite` is set and it is a complete run of this program that is safe to replace."""
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise RunError(f"run directory {out} already exists (pass --overwrite to replace it)")
    what = _protected(out)
    if what is not None:
        raise RunError(f"refusing to replace {out}: it is {what}")
    if out.is_symlink():
        raise RunError(f"refusing to replace {out}: it is a symbolic link")
    problem = run_problem(out)
    if problem is not None:
        raise RunError(f"refusing to replace {out}: {problem}, so it is not a run of sims")
    foreign = _foreign_entry(out)
    if foreign is not None:
        raise RunError(
            f"refusing to replace {out}: it holds {foreign!r}, which a run does not write"
        )


def _unique_sibling(out: Path, suffix: str) -> Path:
    # mkdtemp reserves a fresh name; the empty directory is removed at once and its name is
    # used as the rename target (nothing else creates hidden names of this pattern)
    name = tempfile.mkdtemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    os.rmdir(name)
    return Path(name)


def _put_in_place(tmp: Path, out: Path) -> None:
    """Rename the complete run `tmp` to `out`, replacing the run there, with signals held."""
    with _files.signals_held():
        (tmp / _files.PARTIAL_MARKER).unlink()
        if not (out.exists() or out.is_symlink()):
            os.rename(tmp, out)
            return
        aside = _unique_sibling(out, _files.ASIDE_SUFFIX)
        os.rename(out, aside)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(aside, out)
            raise
        _discard(aside)


def _discard(old_run: Path) -> None:
    """Remove the old run renamed aside, once the new one is in place."""
    shutil.rmtree(old_run, ignore_errors=True)


def _oserror_message(out: Path, e: OSError) -> str:
    what = e.strerror or str(e) or type(e).__name__
    name = _files.target_name(Path(e.filename).name) if getattr(e, "filename", None) else ""
    where = f" (writing {name})" if name else ""
    return f"cannot write run directory {out}: {what}{where}"


def run(
    config,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    command: str | None = None,
    devices: int | str = "all",
    **options,
) -> Path:
    """Run the experiment whose config this is and return its run directory.

    Args:
        config: an experiment config (e.g. `sims.experiments.sphere_clustering.Config()`).
        out: the run directory; default `runs/<experiment>-<timestamp>` (see `runs_root`).
        overwrite: replace `out` if it is a complete run of this program (never anything
            else: see the module docstring).
        command: the command line as typed, recorded in `config.json` (the command line
            passes it; from Python the call itself is recorded).
        devices: how many devices the experiment's ensembles and large clouds are split
            over: `"all"` (every device JAX sees, of every process) or a count (see
            `particles.devices`); recorded in `config.json` with the platform.
        options: passed on to the experiment function (e.g. `gif=True`).

    With several processes (`particles.devices.initialize`), every process calls `run`: all
    compute their share, and process 0 alone writes the run directory (the others compute
    into a private temporary directory that is removed).

    Raises:
        RunError: `out` cannot be written or replaced (before any computation), or writing
            failed (disk full, read-only); nothing is left behind and an old run is kept.
    """
    exp = _registry.for_config(config)
    out = Path(out) if out is not None else default_directory(exp.name)
    try:
        used = particles_devices.count(devices)
    except ValueError as e:
        raise RunError(str(e)) from None
    check_target(out, overwrite)
    # process 0 writes the run; any other computes its share of every sharded computation
    # (each needs every process) into a private temporary directory, then removes it
    lead = particles_devices.process_index() == 0
    if not lead:
        options = {**options, "animation": False}
    record = {
        "experiment": exp.name,
        "config": dataclasses.asdict(config),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command if command is not None else f"sims.run({config!r})",
        "versions": versions(),
        "devices": used,
        "platform": particles_devices.platform(),
        "processes": particles_devices.process_count(),
    }
    with _files.signals_raise():
        try:
            if lead:
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(
                    tempfile.mkdtemp(
                        prefix=f".{out.name}.", suffix=_files.PARTIAL_SUFFIX, dir=out.parent
                    )
                )
            else:
                tmp = Path(tempfile.mkdtemp(prefix="particles-share."))
        except OSError as e:
            raise RunError(f"cannot write run directory {out}: {e.strerror}") from None
        try:
            (tmp / _files.PARTIAL_MARKER).write_text(
                "this run was interrupted before it was complete; it is safe to delete\n"
            )
            particles_io.write_json(tmp / "config.json", record)
            start = time.perf_counter()
            with particles_devices.use(devices):
                exp.run(config, tmp, **options)
            record["wall_seconds"] = round(time.perf_counter() - start, 3)
            if not lead:
                return out
            particles_io.write_json(tmp / "config.json", record)
            for path in sorted(tmp.iterdir()):  # figures and videos written by the experiment
                problem = _files.media_problem(path) if path.is_file() else None
                if problem is not None:
                    raise OSError(None, problem, str(path))
            _files.normalize_modes(tmp)
            check_target(out, overwrite)  # the target may have changed while computing
            _files.raise_if_interrupted()
            _put_in_place(tmp, out)
        except OSError as e:
            raise RunError(_oserror_message(out, e)) from None
        finally:
            with _files.signals_held():  # a second Ctrl-C must not leave half of it
                shutil.rmtree(tmp, ignore_errors=True)
    return out
