"""The command line and run directories."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sims
from sims.__main__ import main
from sims.experiments.sphere_clustering import Config

SMALL = ["--n", "12", "--t1", "2", "--frames", "4"]


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
    names = {p.name for p in out.iterdir()}
    assert names == {
        "config.json",
        "metrics.json",
        "trajectory.npz",
        "figure.png",
        "final_state.png",
        "animation.mp4",
    }
    assert f"run directory: {out}" in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == "sphere-clustering"
    assert config["config"]["n"] == 12 and config["config"]["seed"] == 0
    assert {"jax", "diffrax", "equinox", "numpy"} <= set(config["versions"])
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
        (["run", "nope"], "unknown experiment 'nope'; choose from: "),
        (["run", "sphere-clustering", "--bogus", "1"], "unknown parameter --bogus"),
        (["run", "sphere-clustering", "--n", "0"], "n must be > 0; got 0"),
        (["run", "sphere-clustering", "--n", "-3"], "n must be > 0; got -3"),
        (["run", "sphere-clustering", "--beta", "0"], "beta must be > 0; got 0.0"),
        (["run", "sphere-clustering", "--beta", "-1.5"], "beta must be > 0; got -1.5"),
        (["run", "sphere-clustering", "--n", "abc"], "--n: invalid literal for int()"),
        (["run", "sphere-clustering", "--solver", "rk4"], "solver must be one of"),
        (["run"], "run needs an experiment name"),
        (["frobnicate"], "unknown command 'frobnicate'"),
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


def test_overwrite_replaces(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert (
        main(
            ["run", "sphere-clustering", *SMALL, "--out", str(out), "--overwrite", "--no-animation"]
        )
        == 0
    )
    assert not (out / "stale.txt").exists() and (out / "metrics.json").exists()


def test_list_and_help(capsys):
    assert main(["list"]) == 0
    assert "sphere-clustering" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "run NAME" in capsys.readouterr().out
    assert main(["run", "sphere-clustering", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--beta FLOAT" in out and "inverse temperature" in out and "(default: 9.0)" in out


def test_every_experiment_is_listed_after_importing_one(capsys):
    # this module imported sphere_clustering directly before anything asked for the list
    names = set(sims.list_experiments())
    assert {"sphere-clustering", "deep-limit", "phase-diagram", "lipschitz", "mean-field"} <= names
