"""The command line and run directories."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import _runs
import numpy as np
import pytest

import sims
from sims.__main__ import main
from sims.experiments.sphere_clustering import Config

SMALL = _runs.SMALL


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_writes_every_file(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "sims", "run", "sphere-clustering", *SMALL, "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "MPLBACKEND": "Agg"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == _runs.RUN_FILES
    assert f"run directory: {out}" in proc.stdout
    # the run ends with its headline numbers, read from metrics.json
    summary = proc.stdout.split("sphere-clustering: results (metrics.json)\n", 1)[1]
    assert re.search(r"^  final\.clusters +12$", summary, re.M)
    assert re.search(r"^  solver\.name +tsit5$", summary, re.M)
    assert re.search(r"^  wall time: [0-9.]+ s$", summary, re.M)
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == (
        f"python -m sims run sphere-clustering {' '.join(SMALL)} --out {out}"
    )
    assert config["experiment"] == "sphere-clustering"
    assert config["config"]["n"] == 12 and config["config"]["seed"] == 0
    assert {"jax", "diffrax", "equinox", "numpy"} <= set(config["versions"])
    assert (config["devices"], config["platform"], config["processes"]) == (1, "cpu", 1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["ts"]) == 4 and metrics["series"]["clusters"][0] == 12
    with np.load(out / "trajectory.npz") as data:
        assert data["xs"].shape == (4, 12, 3)
    assert (out / "animation.mp4").stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_python_run_equals_cli_config(tmp_path):
    out = sims.run(
        Config(n=8, t1=1.0, frames=3, seed=5), tmp_path / "r", animation=False, gif=False
    )
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["seed"] == 5 and config["config"]["n"] == 8
    assert not (out / "animation.mp4").exists() and (out / "figure.png").exists()


def test_same_seed_same_trajectory(tmp_path):
    a = sims.run(Config(n=8, t1=1.0, frames=3, seed=1), tmp_path / "a", animation=False)
    b = sims.run(Config(n=8, t1=1.0, frames=3, seed=1), tmp_path / "b", animation=False)
    with np.load(a / "trajectory.npz") as da, np.load(b / "trajectory.npz") as db:
        np.testing.assert_array_equal(da["xs"], db["xs"])


def test_failed_run_leaves_no_directory(tmp_path, monkeypatch):
    exp = sims.get("sphere-clustering")

    def boom(config, directory, **options):
        (directory / "metrics.json").write_text("{}")
        raise RuntimeError("solver exploded")

    monkeypatch.setitem(
        sims._registry._EXPERIMENTS,
        exp.name,
        sims._registry.Experiment(exp.name, exp.config, boom, ""),
    )
    with pytest.raises(RuntimeError, match="solver exploded"):
        sims.run(Config(n=4), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "xyzzy"], "unknown experiment 'xyzzy'; choose from: causal, clustering, "),
        (
            ["run", "sphere-clustring"],
            "unknown experiment 'sphere-clustring'; did you mean 'sphere-clustering'? choose",
        ),
        (["run", "deep_limit"], "did you mean 'deep-limit'?"),
        (["run", "sphere-clustering", "--bogus", "1"], "unknown parameter --bogus"),
        (["run", "sphere-clustering", "--n", "0"], "n must be > 0; got 0"),
        (["run", "sphere-clustering", "--n", "-3"], "n must be > 0; got -3"),
        (["run", "sphere-clustering", "--beta", "0"], "beta must be > 0; got 0.0"),
        (["run", "sphere-clustering", "--beta", "-1.5"], "beta must be > 0; got -1.5"),
        (["run", "sphere-clustering", "--n", "abc"], "--n: invalid literal for int()"),
        (["run", "sphere-clustering", "--solver", "rk4"], "solver must be one of"),
        (["run"], "run needs an experiment name"),
        (["frobnicate"], "unknown command 'frobnicate' (see `python -m sims --help`)"),
        (["lst"], "unknown command 'lst'; did you mean 'list'?"),
        (["run", "sphere-clustering", "--solver", "kvaerno9"], "kvaerno3, kvaerno5; got"),
        (["animate"], "missing RUN_DIR (see `python -m sims animate --help`)"),
        (["plot", "x", "--fps", "3"], "unknown option --fps (see `python -m sims plot --help`)"),
        (["animate", "x", "--trail", "-1"], "--trail: must be >= 0; got -1"),
        (["animate", "x", "--view", "up"], "--view: expected two numbers like 20,-60; got 'up'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith("sims: error: ") and message in line


def test_existing_directory_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    assert main(["run", "sphere-clustering", *SMALL, "--out", str(out)]) == 2
    assert "already exists (pass --overwrite" in _error_line(capsys)
    assert list(out.iterdir()) == []


def test_unwritable_directory(tmp_path, capsys):
    if os.geteuid() == 0:
        target = "/proc/particles-run"  # not writable even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "run")
    assert main(["run", "sphere-clustering", *SMALL, "--out", target]) == 2
    assert "cannot write run directory" in _error_line(capsys)


def test_overwrite_replaces_a_run(tmp_path):
    out = tmp_path / "run"
    argv = ["run", "sphere-clustering", *SMALL, "--out", str(out), "--no-animation"]
    assert main([*argv, "--seed", "1"]) == 0
    (out / "stale.png").write_bytes(b"an old figure")  # what a run may hold
    old = (out / "trajectory.npz").read_bytes()
    assert main([*argv, "--seed", "2", "--overwrite"]) == 0
    assert not (out / "stale.png").exists() and (out / "trajectory.npz").read_bytes() != old
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing aside, no temp


def test_list_prints_every_summary_whole(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(sims.list_experiments())
    for line, exp in zip(lines, sims.list_experiments().values(), strict=True):
        name, summary = line.split(maxsplit=1)
        assert name == exp.name and summary == exp.summary
    deep = sims.get("deep-limit").summary
    # the config's whole first paragraph, on one line (it was cut at "discretise as")
    assert deep.startswith("Residual attention networks of depth L converge to the flow they")
    assert deep.endswith("with fitted orders (float64).") and "\n" not in deep


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--help"], ["usage: python -m sims", "list", "run", "animate", "plot", "kvaerno5"]),
        (["help"], ["usage: python -m sims", "COMMAND"]),
        (["animate", "--help"], ["usage: python -m sims animate", "--fps FPS", "--resolution"]),
        (["plot", "--help"], ["usage: python -m sims plot", "RUN_DIR", "--series A,B"]),
        (["run", "--help"], ["--overwrite", "experiments: causal, clustering"]),
        (
            ["run", "sphere-clustering", "--help"],
            ["--beta FLOAT", "inverse temperature", "(default: 9.0)", "--overwrite"],
        ),
        (["--version"], [f"particles {__import__('particles').__version__}\n"]),
    ],
)
def test_help_and_version_answer(argv, expected, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out


def test_help_lists_every_solver_of_the_library(capsys):
    from sims._options import SOLVERS

    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert main(["run", "sphere-clustering", "--help"]) == 0
    run = capsys.readouterr().out
    line = "solvers: " + ", ".join(SOLVERS)
    assert "kvaerno3" in line and "kvaerno5" in line
    assert line in run and ", ".join(SOLVERS) in top


def test_every_experiment_is_listed_after_importing_one(capsys):
    # this module imported sphere_clustering directly before anything asked for the list
    names = set(sims.list_experiments())
    assert {"sphere-clustering", "deep-limit", "phase-diagram", "lipschitz", "mean-field"} <= names


@pytest.fixture
def no_compute(monkeypatch):
    """Replace the experiment's computation by a failure: a refusal must come before it."""
    exp = sims.get("sphere-clustering")

    def compute(config, directory, **options):
        raise AssertionError("the experiment ran")

    monkeypatch.setitem(
        sims._registry._EXPERIMENTS,
        exp.name,
        sims._registry.Experiment(exp.name, exp.config, compute, exp.summary),
    )


@pytest.mark.parametrize(
    "target, what",
    [
        (".", "the working directory"),
        ("..", "a parent of the working directory"),
        ("../..", "a parent of the working directory"),
        ("/", "the root directory"),
        ("~", "the home directory"),
    ],
)
def test_overwrite_refuses_protected_directories(
    target, what, tmp_path, monkeypatch, capsys, no_compute
):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    out = os.path.expanduser(target)
    assert main(["run", "sphere-clustering", "--out", out, "--overwrite"]) == 2
    assert _error_line(capsys) == f"sims: error: refusing to replace {out}: it is {what}"
    assert (work / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt"]


def _fake_run(directory, **config):
    directory.mkdir()
    record = {"experiment": "x", "config": {}, "created": "2026", "versions": {}, **config}
    (directory / "config.json").write_text(json.dumps(record))
    return directory


@pytest.mark.parametrize(
    "make, problem",
    [
        (
            lambda d: (d.mkdir(), (d / "thesis.tex").write_text("years of work")),
            "it has no config.json, so it is not a run of sims",
        ),
        (
            lambda d: (d.mkdir(), (d / "config.json").write_text('{"name": "my project"}')),
            "its config.json has no str field 'experiment', so it is not a run of sims",
        ),
        (
            lambda d: (d.mkdir(), (d / "config.json").write_text("[1, 2]")),
            "its config.json is not a JSON object, so it is not a run of sims",
        ),
        (
            lambda d: (d.mkdir(), (d / "config.json").write_text("{oops")),
            "its config.json is not readable JSON, so it is not a run of sims",
        ),
        (
            lambda d: _fake_run(d, versions="1.0"),
            "its config.json has no dict field 'versions', so it is not a run of sims",
        ),
        (
            lambda d: (_fake_run(d), (d / "notes.txt").write_text("my notes")),
            "it holds 'notes.txt', which a run does not write",
        ),
        (
            lambda d: (_fake_run(d), (d / "data").mkdir()),
            "it holds 'data', which a run does not write",
        ),
        (lambda d: d.write_text("a file"), "it is not a directory, so it is not a run of sims"),
        (
            lambda d: (_fake_run(d.parent / "elsewhere"), d.symlink_to(d.parent / "elsewhere")),
            "it is a symbolic link",
        ),
    ],
)
def test_overwrite_replaces_only_a_run_of_sims(make, problem, tmp_path, capsys, no_compute):
    out = tmp_path / "target"
    make(out)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(["run", "sphere-clustering", "--out", str(out), "--overwrite"]) == 2
    assert _error_line(capsys) == f"sims: error: refusing to replace {out}: {problem}"
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("mask, dirs, files", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_runs_and_redraws_get_ordinary_modes(tmp_path, mask, dirs, files):
    old = os.umask(mask)
    try:
        out = tmp_path / "run"
        assert main(["run", "sphere-clustering", *SMALL, "--fps", "4", "--out", str(out)]) == 0
        assert main(["plot", str(out)]) == 0
        assert main(["animate", str(out), "--quiet", "--out", str(out / "again.mp4")]) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == dirs
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == dict.fromkeys([*_runs.RUN_FILES, "again.mp4"], files)


def test_runs_go_to_the_checkout_runs_folder(tmp_path, monkeypatch):
    from sims._run import runs_root

    monkeypatch.delenv("PARTICLES_RUNS", raising=False)
    checkout = tmp_path / "checkout"
    (checkout / "sims").mkdir(parents=True)
    (checkout / "sims" / "__init__.py").write_text("")
    (checkout / "pyproject.toml").write_text("")
    (checkout / "notebooks").mkdir()
    monkeypatch.chdir(checkout / "notebooks")
    assert runs_root() == Path("../runs")
    monkeypatch.chdir(tmp_path)
    assert runs_root() == Path("runs")
    monkeypatch.setenv("PARTICLES_RUNS", str(tmp_path / "elsewhere"))
    assert runs_root() == tmp_path / "elsewhere"


def test_an_experiment_may_print_its_own_summary(tmp_path, monkeypatch, capsys):
    module = sys.modules[sims.get("sphere-clustering").run.__module__]
    monkeypatch.setattr(
        module,
        "summary",
        lambda m: [f"clusters at the end: {m['final']['clusters']}"],
        raising=False,
    )
    out = tmp_path / "run"
    assert main(["run", "sphere-clustering", *SMALL, "--out", str(out), "--no-animation"]) == 0
    text = capsys.readouterr().out
    results = text.split("sphere-clustering: results (metrics.json)\n", 1)[1]
    assert re.fullmatch(r"  clusters at the end: 12\n  wall time: [0-9.]+ s\n", results)


def test_no_fork_while_jax_runs(tmp_path):
    # a fork of a process running JAX threads can deadlock: ffmpeg (writing and reading
    # MP4s) must be started without one
    import imageio.v3 as iio
    import jax

    jax.numpy.zeros(1).block_until_ready()
    forks, counting = [], [True]
    os.register_at_fork(before=lambda: forks.append(1) if counting[0] else None)
    try:
        out = tmp_path / "run"
        assert main(["run", "sphere-clustering", *SMALL, "--out", str(out)]) == 0
        assert main(["animate", str(out), "--quiet", "--gif"]) == 0
        assert iio.imread(out / "animation.mp4").shape[0] == 4
    finally:
        counting[0] = False
    assert forks == []


def test_runtime_dependencies_cover_the_experiments():
    import tomllib

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    names = {re.split(r"[<>=\[ ]", d)[0].lower() for d in project["project"]["dependencies"]}
    # exact Wasserstein distances (mean-field, misspecified, lipschitz) need POT at run time
    assert {"jax", "diffrax", "equinox", "pot", "tyro", "imageio-ffmpeg", "tqdm"} <= names
    extras = project["project"]["optional-dependencies"]
    notebooks = {re.split(r"[<>=\[ ]", d)[0].lower() for d in extras["notebooks"]}
    assert {
        "jupyterlab",
        "jupytext",
        "ipykernel",
        "nbclient",
        "nbconvert",
        "ipywidgets",
    } <= notebooks
    assert any(d.startswith("hypothesis") for d in extras["test"])


@pytest.mark.parametrize(
    "argv0, prog",
    [
        ("/venv/bin/particles-sims", "particles-sims"),
        ("/work/particles/sims/__main__.py", "python -m sims"),
        ("-m", "python -m sims"),
    ],
)
def test_the_command_is_recorded_as_typed(argv0, prog, monkeypatch):
    from sims.__main__ import _prog

    monkeypatch.setattr(sys, "argv", [argv0, "run", "polytope"])
    assert _prog() == prog
