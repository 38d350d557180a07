"""Every notebook in `notebooks/` runs top to bottom at small size; one that raises fails.

Notebooks are jupytext percent-format `.py` files. Each is converted to a notebook and
executed by nbclient in a `python3` kernel of the interpreter running the tests, with
`PARTICLES_SIZE=small` and the inline matplotlib backend, from `notebooks/` as Jupyter would
start it; runs go to `$PARTICLES_RUNS` (a temporary folder here, the checkout's `runs/` by
default) and nothing may appear in `notebooks/`. New notebooks join automatically.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
TIMEOUT_PER_CELL = 300


def _kernel_manager():
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    # no kernel directories: the native "python3" kernel of this interpreter (sys.executable),
    # whatever kernelspecs are installed on the machine
    specs = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def run_notebook(path: Path, tmp: Path, cwd: Path | None = None):
    """Execute the percent-format notebook `path` from `cwd` (default `tmp`), its runs
    under `tmp/runs`; returns the executed notebook."""
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    env = dict(os.environ)
    env["PARTICLES_SIZE"] = "small"
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PARTICLES_RUNS"] = str(tmp / "runs")
    client = NotebookClient(
        notebook,
        km=_kernel_manager(),
        timeout=TIMEOUT_PER_CELL,
        resources={"metadata": {"path": str(cwd or tmp)}},
    )
    client.execute(env=env)
    return notebook


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no *.py notebook"


def test_the_kernel_is_this_interpreter():
    spec = _kernel_manager().kernel_spec
    assert spec.argv[0] == sys.executable


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_header_names_the_kernel_and_pairing(path):
    import jupytext

    metadata = jupytext.read(path).metadata
    # the python3 kernel is the interpreter Jupyter runs in: the venv's, once ipykernel is in
    assert metadata["kernelspec"]["name"] == "python3"
    assert metadata["kernelspec"]["language"] == "python"
    assert metadata["jupytext"]["formats"] == "ipynb,py:percent"


# The longest notebooks run under -m slow here; CI executes every notebook all the same when
# it builds the documentation site (`mkdocs build --strict`, which fails on a cell's error).
SLOW = {"07_pretrained", "08_variants"}


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW else p for p in NOTEBOOKS],
    ids=[p.stem for p in NOTEBOOKS],
)
def test_notebook_runs(path, tmp_path):
    before = sorted(p.name for p in path.parent.iterdir())
    notebook = run_notebook(path, tmp_path, cwd=path.parent)
    assert sorted(p.name for p in path.parent.iterdir()) == before  # runs go to runs/
    errors = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors  # nbclient raises CellExecutionError first; this guards allow_errors


def test_a_notebook_that_raises_fails(tmp_path):
    from nbclient.exceptions import CellExecutionError

    broken = tmp_path / "broken.py"
    broken.write_text("# %%\nx = 1\n\n# %%\nraise RuntimeError('boom in a cell')\n")
    with pytest.raises(CellExecutionError, match="boom in a cell"):
        run_notebook(broken, tmp_path)
