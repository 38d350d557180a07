"""Every experiment at `--quick`: it runs, and `plot` / `animate` redraw its own files.

The default suite covers the cheapest experiments; `-m slow` covers all of them. Every
experiment draws its figures and animations from its run directory alone (functions it
registers with `sims._registry.figures` / `animations`), so `plot` gives back the very same
PNG files.
"""

from __future__ import annotations

import json

import pytest

import sims
from sims import _files
from sims.__main__ import main, parse_config
from sims._quick import QUICK

CHEAP = ["sphere-clustering", "polytope"]


def test_every_experiment_has_valid_quick_parameters():
    assert set(QUICK) == set(sims.list_experiments())
    for name, exp in sims.list_experiments().items():
        config = exp.quick()
        for field, value in QUICK[name].items():
            assert getattr(config, field) == value, (name, field)


def test_flags_apply_on_top_of_quick():
    config = parse_config("sphere-clustering", ["--n", "9"], quick=True)
    assert config.n == 9 and config.t1 == QUICK["sphere-clustering"]["t1"]
    assert parse_config("sphere-clustering", [], quick=False).t1 == 30.0


def _media(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.suffix in (".png", ".mp4")}


def _run_then_redraw(name, tmp_path, capsys):
    out = tmp_path / name
    assert main(["run", name, "--quick", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["command"].endswith(f"run {name} --quick --out {out}")
    drawn = _media(out)
    assert any(n.endswith(".png") for n in drawn) and "animation.mp4" in drawn
    for path in out.iterdir():
        if path.suffix in (".png", ".mp4"):
            path.unlink()
    assert main(["plot", str(out)]) == 0
    assert main(["animate", str(out), "--quiet"]) == 0
    redrawn = _media(out)
    assert set(redrawn) == set(drawn)  # the experiment's own figures, not generic ones
    for png in (n for n in drawn if n.endswith(".png")):
        assert redrawn[png] == drawn[png], png  # drawn from the same files: same pixels
    assert _files.media_problem(out / "animation.mp4") is None
    capsys.readouterr()


@pytest.mark.parametrize("name", CHEAP)
def test_quick_run_then_plot_and_animate_redraw_it(name, tmp_path, capsys):
    _run_then_redraw(name, tmp_path, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in sorted(QUICK) if n not in CHEAP])
def test_every_experiment_at_quick_redraws_from_its_files(name, tmp_path, capsys):
    _run_then_redraw(name, tmp_path, capsys)


def test_every_experiment_registers_its_own_drawings():
    # sphere-clustering's figures are the generic ones of its trajectory, drawn by
    # sims._replay from the same files; every other experiment registers its own
    for name, exp in sims.list_experiments().items():
        if name != "sphere-clustering":
            assert exp.draw_figures is not None and exp.draw_animations is not None, name
