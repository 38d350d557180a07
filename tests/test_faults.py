"""Fault injection: interrupted, starved and fed hostile files, sims never loses a run.

Every case checks the same contract: a one-line message on stderr naming the file or the
problem, the documented exit status (2 for a failure; 130 for SIGINT and 143 for SIGTERM,
as shells expect), the previous run (or figure, or animation) byte for byte, and no
half-written or temporary file anywhere.

- Signals: the run is interrupted in-process at named checkpoints spread over computing,
  saving, rendering and the final renames (the signal is raised by the process itself when
  the k-th call of a function is reached), and out-of-process with real SIGINT, SIGTERM and
  SIGKILL from the parent.
- A full disk is a file-size limit (RLIMIT_FSIZE) in a child process; a read-only
  directory is one the child (dropped to `nobody` when the suite runs as root) cannot write.
- `plot` and `animate` are fed missing, truncated, wrongly typed and hostile files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import _runs
import numpy as np
import pytest

import particles
import sims
from sims import _files
from sims.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
SMALL = [*_runs.SMALL, "--fps", "4"]
RUN_FILES = _runs.RUN_FILES
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _argv(out: Path, seed: int, *more: str) -> list[str]:
    return ["run", "sphere-clustering", *SMALL, "--seed", str(seed), "--out", str(out), *more]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _only_line(err: str) -> str:
    """The one message on stderr (progress bars of the solver and the renderer aside)."""
    lines = [line for line in err.strip().splitlines() if line.strip() and not _progress(line)]
    assert len(lines) == 1, lines
    return lines[0]


def _progress(line: str) -> bool:
    """A tqdm bar: `... |████      | [00:01<00:02, ...]`."""
    return re.search(r"\|.*\| .*\[\d\d:\d\d", line) is not None


def _no_leftovers(folder: Path) -> None:
    """No temporary directory or file of this program anywhere below `folder`."""
    hidden = [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.startswith(".") or p.name.endswith(_files.PARTIAL_SUFFIX)
    ]
    assert hidden == []


def _is_new_run(directory: Path, seed: int) -> None:
    assert {p.name for p in directory.iterdir()} == RUN_FILES
    config = json.loads((directory / "config.json").read_text())
    assert config["config"]["seed"] == seed and "wall_seconds" in config
    assert sims._run.run_problem(directory) is None
    with np.load(directory / "trajectory.npz", allow_pickle=False) as data:
        assert data["xs"].shape == (4, 12, 3)


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A complete run (seed 1), copied into each case as the run to be replaced."""
    out = tmp_path_factory.mktemp("old") / "run"
    assert main(_argv(out, 1)) == 0
    return out


# ---------------------------------------------------------------------------------------
# Signals raised in-process at checkpoints


class Checkpoints:
    """Wraps functions so that the `at`-th call of checkpoint `name` raises `signum` in this
    process just before (or, for `name:after`, just after) the real call."""

    def __init__(self, monkeypatch, name: str, at: int, signum: int):
        self.name, self.at, self.signum = name, at, signum
        self.counts: dict[str, int] = {}
        self.fired = False
        self.monkeypatch = monkeypatch

    def hit(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        if name == self.name and self.counts[name] == self.at and not self.fired:
            self.fired = True
            signal.raise_signal(self.signum)  # handled at once, in this (main) thread

    def wrap(self, owner, attribute: str, name: str, after: bool = False) -> None:
        real = getattr(owner, attribute)

        def wrapper(*args, **kwargs):
            self.hit(name)
            result = real(*args, **kwargs)
            if after:
                self.hit(f"{name}:after")
            return result

        self.monkeypatch.setattr(owner, attribute, wrapper)

    def install(self) -> Checkpoints:
        import matplotlib.figure

        from particles.plot import _animate

        self.wrap(particles, "simulate", "simulate", after=True)
        self.wrap(particles.metrics, "over_time", "over_time")
        self.wrap(particles.io, "write_json", "write_json")
        self.wrap(particles.io, "save_trajectory", "save_trajectory")
        self.wrap(np, "savez", "savez")
        self.wrap(os, "replace", "replace")
        self.wrap(os, "rename", "rename")
        self.wrap(shutil, "rmtree", "rmtree")
        self.wrap(sims._run, "_discard", "discard")
        self.wrap(_files, "normalize_modes", "normalize_modes")
        self.wrap(matplotlib.figure.Figure, "savefig", "savefig")
        self.wrap(_animate.Renderer, "render", "render")
        self.wrap(_animate, "_write_mp4", "write_mp4")
        return self


# (checkpoint, occurrence, stage, what the target holds afterwards)
RUN_POINTS = [
    ("simulate", 1, "computing", "old"),
    ("simulate:after", 1, "computing", "old"),
    ("over_time", 1, "computing", "old"),
    ("over_time", 3, "computing", "old"),
    ("write_json", 1, "saving", "old"),  # config.json
    ("save_trajectory", 1, "saving", "old"),
    ("savez", 1, "saving", "old"),  # inside the temporary trajectory file
    ("replace", 1, "saving", "old"),  # renaming the complete trajectory.npz
    ("write_json", 2, "saving", "old"),  # metrics.json
    ("savefig", 1, "rendering", "old"),
    ("savefig", 2, "rendering", "old"),
    ("render", 1, "rendering", "old"),
    ("render", 3, "rendering", "old"),
    ("write_mp4", 1, "rendering", "old"),
    ("write_json", 3, "finishing", "old"),  # config.json again, with the wall time
    ("normalize_modes", 1, "finishing", "old"),
    # the swap runs with signals held: a signal there is delivered once the new run is in
    ("rename", 1, "swapping", "new"),  # the old run, aside
    ("rename", 2, "swapping", "new"),  # the new run, into place
    ("discard", 1, "swapping", "new"),  # the old run, removed
]
REPLAY_POINTS = [
    ("plot", "savefig", 1),
    ("plot", "replace", 1),  # figure.png, complete, about to replace the old one
    ("plot", "savefig", 2),
    ("plot", "rmtree", 1),  # removing the temporary folder of figure.png, once renamed
    ("animate", "render", 2),
    ("animate", "write_mp4", 1),
    ("animate", "replace", 2),  # the finished MP4 over the old animation.mp4
]
SIGNALS = [signal.SIGINT, signal.SIGTERM]


def _cases(points, slow_half: bool):
    """Every point with both signals; the default suite alternates them, `-m slow` adds
    the other half."""
    cases = []
    for i, point in enumerate(points):
        for j, signum in enumerate(SIGNALS):
            marks = [pytest.mark.slow] if (i + j) % 2 and slow_half else []
            cases.append(pytest.param(*point, signum, marks=marks, id=f"{point}-{signum.name}"))
    return cases


@pytest.mark.parametrize("point, at, stage, expected, signum", _cases(RUN_POINTS, True))
def test_run_interrupted_at_a_checkpoint_keeps_old_or_new_run(
    tmp_path, old_run, monkeypatch, capsys, point, at, stage, expected, signum
):
    out = tmp_path / "run"
    shutil.copytree(old_run, out)
    before = _snapshot(out)
    capsys.readouterr()
    points = Checkpoints(monkeypatch, point, at, signum).install()
    code = main(_argv(out, 2, "--overwrite"))
    monkeypatch.undo()
    assert points.fired, f"checkpoint {point} #{at} ({stage}) was never reached"
    assert code == EXIT[signum]
    line = _only_line(capsys.readouterr().err)
    assert line == f"sims: interrupted ({signum.name}); no partial files were left behind"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    _no_leftovers(tmp_path)
    if expected == "old":
        assert _snapshot(out) == before
    else:
        _is_new_run(out, seed=2)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("command", ["run", "plot"])
def test_a_signal_whose_exception_was_swallowed_still_stops_the_commit(
    tmp_path, old_run, monkeypatch, capsys, command, signum
):
    # Python runs a signal handler between any two bytecodes, garbage-collector callbacks
    # included, where the exception it raises is printed and lost (seen with JAX's XLA gc
    # callback: the run went on and replaced the old one). Here the handler runs inside
    # such a swallowing frame just before the files are put in place.
    out = tmp_path / "run"
    shutil.copytree(old_run, out)
    before = _snapshot(out)
    real = _files.media_problem

    def swallowing(path):
        try:
            _files._raise_interrupted(signum, None)
        except BaseException:
            pass
        return real(path)

    monkeypatch.setattr(_files, "media_problem", swallowing)
    argv = _argv(out, 2, "--overwrite") if command == "run" else ["plot", str(out)]
    capsys.readouterr()
    code = main(argv)
    monkeypatch.undo()
    assert code == EXIT[signum]
    line = _only_line(capsys.readouterr().err)
    assert line == f"sims: interrupted ({signum.name}); no partial files were left behind"
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    _no_leftovers(tmp_path)
    # outside the command nothing stays pending
    assert _files._received == []


@pytest.mark.parametrize("command, point, at, signum", _cases(REPLAY_POINTS, False))
def test_replay_interrupted_keeps_every_file(
    tmp_path, old_run, monkeypatch, capsys, command, point, at, signum
):
    out = tmp_path / "run"
    shutil.copytree(old_run, out)
    before = _snapshot(out)
    points = Checkpoints(monkeypatch, point, at, signum).install()
    extra = ["--quiet", "--fps", "4"] if command == "animate" else []
    code = main([command, str(out), *extra])
    monkeypatch.undo()
    assert points.fired, f"checkpoint {point} #{at} of {command} was never reached"
    assert code == EXIT[signum]
    assert _only_line(capsys.readouterr().err).startswith(f"sims: interrupted ({signum.name})")
    assert _snapshot(out) == before
    _no_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------
# Real signals from outside, and SIGKILL


def _child_env(**more: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["MPLBACKEND"] = "Agg"
    env.update(more)
    return env


def _start(argv: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sims", *argv],
        cwd=cwd,
        env=_child_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_partial(folder: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in folder.glob(".run.*.partial") if (p / "config.json").exists()]
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the run never started")


BIG = ["--n", "64", "--t1", "20", "--frames", "40", "--fps", "10"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_real_signal_during_computing_keeps_old_run(tmp_path, old_run, signum):
    out = tmp_path / "run"
    shutil.copytree(old_run, out)
    before = _snapshot(out)
    proc = _start(["run", "sphere-clustering", *BIG, "--out", "run", "--overwrite"], cwd=tmp_path)
    _wait_for_partial(tmp_path, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT[signum], err
    assert _only_line(err) == (
        f"sims: interrupted ({signum.name}); no partial files were left behind"
    )
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_sigkill_leaves_a_partial_that_is_never_taken_for_a_run(tmp_path, old_run, capsys):
    out = tmp_path / "run"
    shutil.copytree(old_run, out)
    before = _snapshot(out)
    proc = _start(["run", "sphere-clustering", *BIG, "--out", "run", "--overwrite"], cwd=tmp_path)
    partial = _wait_for_partial(tmp_path, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert _snapshot(out) == before  # the old run is untouched
    # the leftover is hidden, named *.partial and marked INCOMPLETE
    assert partial.name.startswith(".run.") and partial.name.endswith(".partial")
    assert (partial / _files.PARTIAL_MARKER).exists()
    assert sims._run.run_problem(partial) == "it is an incomplete run left by an interrupted run"
    for argv in (["plot", str(partial)], ["animate", str(partial), "--quiet"]):
        assert main(argv) == 2
        assert _only_line(capsys.readouterr().err) == (
            f"sims: error: {partial}: an incomplete run left by an interrupted run, "
            "not a run to redraw"
        )
    assert main(_argv(partial, 3, "--overwrite")) == 2
    assert _only_line(capsys.readouterr().err) == (
        f"sims: error: refusing to replace {partial}: it is an incomplete run left by an "
        "interrupted run, so it is not a run of sims"
    )
    # a directory holding only the marker is refused the same way
    marked = tmp_path / "marked"
    shutil.copytree(old_run, marked)
    (marked / _files.PARTIAL_MARKER).write_text("")
    assert main(["plot", str(marked)]) == 2
    assert "an incomplete run left by an interrupted run" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# A full disk (RLIMIT_FSIZE) and a read-only directory, in child processes

_LIMITED = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from sims.__main__ import main
sys.exit(main(sys.argv[2:]))
"""

_WITHOUT_OVERRIDE = """
import ctypes, os, sys
if os.geteuid() == 0:
    # root writes anywhere: drop the capabilities that bypass file permissions from the
    # bounding set, then exec, so that this process is root bound by permissions
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            sys.exit(77)
os.execv(sys.executable, [sys.executable, "-m", "sims", *sys.argv[1:]])
"""


def _python(code: str, *args, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=cwd,
        env=_child_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "command, limit, message",
    [
        (
            "run",
            40_000,  # trajectory and JSON fit; figure.png (about 150 KB) does not
            "sims: error: cannot write run directory run: File too large (writing figure.png)",
        ),
        ("plot", 40_000, "sims: error: {run}/figure.png: cannot write (File too large)"),
        (
            "animate",
            1_000,  # the MP4 of this small run is about 4 KB
            "sims: error: {run}/animation.mp4: cannot write "
            "(the video encoder wrote an incomplete MP4)",
        ),
    ],
)
def test_full_disk_is_one_line_and_loses_nothing(tmp_path, old_run, command, limit, message):
    out = tmp_path / "run"
    shutil.copytree(old_run, out)
    before = _snapshot(out)
    if command == "run":
        argv = _argv(Path("run"), 2, "--overwrite")
    else:
        argv = [command, "run", *(["--quiet"] if command == "animate" else [])]
    proc = _python(_LIMITED, limit, *argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = _only_line(proc.stderr)
    assert line.startswith(message.format(run="run")), line
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("command", ["run", "plot", "animate"])
def test_read_only_directory_is_one_line_and_loses_nothing(tmp_path, old_run, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked / "run"
    shutil.copytree(old_run, out)
    for path in [out, *out.iterdir()]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    os.chmod(out, 0o555)
    os.chmod(locked, 0o555)
    before = _snapshot(out)
    if command == "run":
        argv, message = (
            _argv(Path("locked/new"), 2),
            "sims: error: cannot write run directory locked/new: Permission denied",
        )
    else:
        extra = ["--quiet"] if command == "animate" else []
        name = "figure.png" if command == "plot" else "animation.mp4"
        argv, message = (
            [command, "locked/run", *extra],
            f"sims: error: locked/run/{name}: cannot write (Permission denied)",
        )
    proc = _python(_WITHOUT_OVERRIDE, *argv, cwd=tmp_path)
    if proc.returncode == 77:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE")
    os.chmod(locked, 0o755)  # so that pytest can clean up
    os.chmod(out, 0o755)
    assert proc.returncode == 2, proc.stderr
    assert _only_line(proc.stderr) == message
    assert _snapshot(out) == before
    assert sorted(p.name for p in locked.iterdir()) == ["run"]


def test_cut_short_media_are_recognised(old_run, tmp_path):
    # ffmpeg stopped by a full disk exits with an error that imageio-ffmpeg ignores: the
    # structure of the file is what tells a complete video from a truncated one
    assert (
        main(["animate", str(old_run), "--quiet", "--gif", "--out", str(tmp_path / "a.gif")]) == 0
    )
    for path in [old_run / "animation.mp4", old_run / "figure.png", tmp_path / "a.gif"]:
        assert _files.media_problem(path) is None
        data = path.read_bytes()
        for cut in (len(data) - 1, len(data) // 2, 100):
            short = tmp_path / f"short{path.suffix}"
            short.write_bytes(data[:cut])
            assert _files.media_problem(short) is not None, (path.name, cut)


# ---------------------------------------------------------------------------------------
# plot and animate fed broken files


def _write_npz(path: Path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _trajectory(run: Path, **changes) -> None:
    with np.load(run / "trajectory.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    (run / "trajectory.npz").unlink()
    _write_npz(run / "trajectory.npz", **{k: v for k, v in arrays.items() if v is not None})


def _json(run: Path, name: str, change) -> None:
    data = json.loads((run / name).read_text())
    (run / name).write_text(json.dumps(change(data)))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BROKEN = {
    "trajectory-missing": (
        lambda r: (r / "trajectory.npz").unlink(),
        "{run}/trajectory.npz: no such file",
    ),
    "trajectory-truncated": (
        lambda r: _truncate(r / "trajectory.npz"),
        "{run}/trajectory.npz: not a readable trajectory file",
    ),
    "trajectory-empty": (
        lambda r: (r / "trajectory.npz").write_bytes(b""),
        "{run}/trajectory.npz: not a readable trajectory file",
    ),
    "trajectory-object-array": (
        lambda r: _trajectory(r, xs=np.array([{"x": 1}, None], dtype=object)),
        "{run}/trajectory.npz: holds pickled objects (object arrays), which are never loaded",
    ),
    "trajectory-pickle": (
        lambda r: (r / "trajectory.npz").write_bytes(__import__("pickle").dumps({"ts": [0.0]})),
        "{run}/trajectory.npz: not a readable trajectory file (not an .npz archive)",
    ),
    "trajectory-strings": (
        lambda r: _trajectory(r, xs=np.full((4, 12, 3), "a")),
        "{run}/trajectory.npz: xs has dtype <U1, expected numbers",
    ),
    "trajectory-complex": (
        lambda r: _trajectory(r, ts=np.zeros(4, complex)),
        "{run}/trajectory.npz: ts has dtype complex128, expected numbers",
    ),
    "trajectory-missing-xs": (
        lambda r: _trajectory(r, xs=None),
        "{run}/trajectory.npz: missing arrays ['xs']",
    ),
    "trajectory-flat-xs": (
        lambda r: _trajectory(r, xs=np.zeros((4, 36), np.float32)),
        "{run}/trajectory.npz: inconsistent shapes",
    ),
    "trajectory-nan": (
        lambda r: _trajectory(r, xs=np.full((4, 12, 3), np.nan, np.float32)),
        "{run}/trajectory.npz: the trajectory holds NaN or inf",
    ),
    "trajectory-result-vector": (
        lambda r: _trajectory(r, result=np.zeros(3, np.int32)),
        "{run}/trajectory.npz: result has shape (3,), expected a scalar",
    ),
    "trajectory-is-a-directory": (
        lambda r: ((r / "trajectory.npz").unlink(), (r / "trajectory.npz").mkdir()),
        "{run}/trajectory.npz: not a regular file",
    ),
    "trajectory-is-a-device": (
        lambda r: ((r / "trajectory.npz").unlink(), (r / "trajectory.npz").symlink_to("/dev/zero")),
        "{run}/trajectory.npz: not a regular file",
    ),
    "config-truncated": (
        lambda r: _truncate(r / "config.json"),
        "{run}/config.json: not valid JSON",
    ),
    "config-a-list": (
        lambda r: (r / "config.json").write_text("[1, 2, 3]"),
        "{run}/config.json: expected a JSON object",
    ),
    "config-config-a-string": (
        lambda r: _json(r, "config.json", lambda c: {**c, "config": "n=12"}),
        "{run}/config.json: 'config' must be an object",
    ),
    "config-cluster-tol-a-string": (
        lambda r: _json(
            r, "config.json", lambda c: {**c, "config": {**c["config"], "cluster_tol": "small"}}
        ),
        "{run}/config.json: cluster_tol must be a number > 0; got 'small'",
    ),
    "config-nested-too-deeply": (
        lambda r: (r / "config.json").write_text("[" * 100_000 + "]" * 100_000),
        "{run}/config.json: not valid JSON (nested too deeply)",
    ),
    "config-not-utf8": (
        lambda r: (r / "config.json").write_bytes(b"\xff\xfe{\x00}"),
        "{run}/config.json: not valid JSON (not UTF-8 text)",
    ),
    "config-a-fifo": (
        lambda r: ((r / "config.json").unlink(), os.mkfifo(r / "config.json")),
        "{run}/config.json: not a regular file",
    ),
    "metrics-truncated": (
        lambda r: _truncate(r / "metrics.json"),
        "{run}/metrics.json: not valid JSON",
    ),
    "metrics-series-a-list": (
        lambda r: _json(r, "metrics.json", lambda m: {**m, "series": [1, 2]}),
        "{run}/metrics.json: 'series' must be an object of lists on 'ts'",
    ),
    "metrics-ts-a-string": (
        lambda r: _json(r, "metrics.json", lambda m: {**m, "ts": "0 1 2 3"}),
        "{run}/metrics.json: series are not numbers",
    ),
    "metrics-series-of-strings": (
        lambda r: _json(
            r, "metrics.json", lambda m: {**m, "series": {"energy": ["a", "b", "c", "d"]}}
        ),
        "{run}/metrics.json: series are not numbers",
    ),
    "metrics-short-ts": (
        lambda r: _json(r, "metrics.json", lambda m: {**m, "ts": [0, 1]}),
        "{run}/metrics.json: 'ts' has 2 times but the trajectory has 4 frames",
    ),
    "arrays-object-array": (
        lambda r: _write_npz(r / "arrays.npz", names=np.array([object()], dtype=object)),
        "{run}/arrays.npz: holds pickled objects (object arrays), which are never loaded",
    ),
    "arrays-not-a-zip": (
        lambda r: (r / "arrays.npz").write_bytes(b"PK\x03\x04 not really a zip"),
        "{run}/arrays.npz: not a readable array file",
    ),
    "arrays-attention-shape": (
        lambda r: _write_npz(r / "arrays.npz", attention=np.zeros((4, 12, 11))),
        "{run}/arrays.npz: attention has shape (4, 12, 11), expected (T, n, n) = (4, 12, 12)",
    ),
    "run-dir-missing": (
        lambda r: shutil.rmtree(r),
        "{run}: no such run directory",
    ),
}


@pytest.mark.parametrize("command", ["plot", "animate"])
@pytest.mark.parametrize("breakage", list(BROKEN))
def test_replay_refuses_broken_files(tmp_path, old_run, capsys, breakage, command):
    run = tmp_path / "run"
    shutil.copytree(old_run, run)
    if breakage == "config-a-fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    breaker, message = BROKEN[breakage]
    breaker(run)
    before = _regular_files(run)
    extra = ["--quiet"] if command == "animate" else []
    assert main([command, str(run), *extra]) == 2
    line = _only_line(capsys.readouterr().err)
    assert line.startswith("sims: error: " + message.format(run=run)), line
    assert _regular_files(run) == before  # nothing written, nothing changed
    _no_leftovers(tmp_path)


def _regular_files(run: Path) -> dict[str, bytes] | None:
    if not run.exists():
        return None
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.is_symlink()}


def test_an_npz_member_that_is_not_an_array_is_refused(tmp_path, old_run, capsys):
    # an .npz whose members are not .npy arrays at all
    run = tmp_path / "run"
    shutil.copytree(old_run, run)
    with zipfile.ZipFile(run / "arrays.npz", "w") as z:
        z.writestr("attention.npy", b"\x93NUMPY garbage")
    assert main(["plot", str(run)]) == 2
    assert _only_line(capsys.readouterr().err).startswith(
        f"sims: error: {run}/arrays.npz: not a readable array file"
    )
