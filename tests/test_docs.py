"""The API reference of the documentation site covers the public API.

Every public module has a `::: module` directive in `docs/api/*.md` (mkdocstrings renders
the names of its `__all__`), every name in every `__all__` has a docstring (a class or a
function its own, a constant the string literal after its assignment), and every name the
top-level package re-exports is documented in some module. The site itself is built by
`mkdocs build --strict` in CI (`.ci/run`), which fails on a broken link or reference.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = [
    "particles.attention",
    "particles.flows",
    "particles.spaces",
    "particles.networks",
    "particles.meanfield",
    "particles.regularity",
    "particles.metrics",
    "particles.studies",
    "particles.wasserstein",
    "particles.clouds",
    "particles.closedforms",
    "particles.io",
    "particles.devices",
    "particles.plot",
    "sims",
]


def _directives() -> set[str]:
    text = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    return set(re.findall(r"^::: ([\w.]+)\s*$", text, re.M))


def _attribute_docstrings(package: str) -> set[str]:
    """Names assigned at module level and followed by a string literal, in every source
    file of `package` (where a re-exported constant is defined)."""
    module = importlib.import_module(package)
    files = Path(module.__file__).parent.glob("*.py")
    names = set()
    for path in [Path(module.__file__)] if not hasattr(module, "__path__") else files:
        body = ast.parse(path.read_text()).body
        for stmt, after in zip(body, body[1:], strict=False):
            documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            if documented and isinstance(after.value.value, str):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if isinstance(stmt, ast.Assign | ast.AnnAssign):
                    names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_every_public_module_has_an_api_page():
    missing = [m for m in PUBLIC if m not in _directives()]
    assert missing == []


@pytest.mark.parametrize("module", PUBLIC)
def test_every_name_in_all_has_a_docstring(module):
    mod = importlib.import_module(module)
    constants = _attribute_docstrings(module)
    undocumented = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.isclass(obj) or inspect.isfunction(obj) or callable(obj):
            documented = bool((inspect.getdoc(obj) or "").strip())
        else:
            documented = name in constants
        if not documented:
            undocumented.append(name)
    assert undocumented == []


def test_every_top_level_name_is_documented_in_a_module():
    import particles

    documented = {
        id(getattr(importlib.import_module(m), n))
        for m in PUBLIC
        for n in importlib.import_module(m).__all__
    }
    pages = _directives()
    missing = []
    for name in dir(particles):
        obj = getattr(particles, name)
        if name.startswith("_") or inspect.ismodule(obj):
            continue
        if id(obj) not in documented and f"particles.{name}" not in pages:
            missing.append(name)
    assert missing == []


def test_a_missing_docstring_would_be_caught():
    # the check itself: a function without a docstring has none, a constant without a
    # string after it is not among the documented ones
    def bare():
        pass

    assert not (inspect.getdoc(bare) or "").strip()
    assert "TRAJECTORY_FILE" in _attribute_docstrings("particles.io")
    assert "_RESULTS" not in _attribute_docstrings("particles.io")
