"""The registry of named experiments.

An experiment is a typed config (a frozen dataclass whose fields are its parameters, each
with a default and a docstring) plus a function `run(config, directory)` that writes the
run's files into `directory`. Modules in `sims.experiments` register themselves with the
`experiment` decorator and are discovered automatically. A module may also define
`summary(metrics) -> list[str]`, the headline numbers printed after a run (see
`sims._summary`). The first paragraph of the config's docstring is the one-line summary
that `python -m sims list` prints.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT = "sphere-clustering"
"""The experiment `python -m sims` runs when no command is given."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    config: type
    run: Callable[[Any, Path], None]
    summary: str

    def quick(self, **overrides):
        """The config of `--quick` (see `sims._quick`), with `overrides` on top."""
        from ._quick import QUICK

        if self.name not in QUICK:
            raise KeyError(f"experiment {self.name!r} has no --quick parameters in sims._quick")
        return self.config(**{**QUICK[self.name], **overrides})

    @property
    def draw_figures(self) -> Callable[..., list[Path]] | None:
        """Its own figures from a run directory (see `figures`), if it registered them."""
        _discover()
        return _FIGURES.get(self.name)

    @property
    def draw_animations(self) -> Callable[..., list[Path]] | None:
        """Its own animations from a run directory (see `animations`), if registered."""
        _discover()
        return _ANIMATIONS.get(self.name)

    @property
    def summarize(self) -> Callable[[dict], list[str]] | None:
        """The module's `summary(metrics)`, if it defines one."""
        own = getattr(sys.modules.get(self.run.__module__), "summary", None)
        return own if callable(own) else None


_EXPERIMENTS: dict[str, Experiment] = {}
_FIGURES: dict[str, Callable[..., list[Path]]] = {}
_ANIMATIONS: dict[str, Callable[..., list[Path]]] = {}
_DISCOVERED = False


def figures(name: str):
    """Register `fn(directory, *, dpi=None) -> [paths]`, which draws experiment `name`'s
    figures from the files of its run directory alone (`python -m sims plot`)."""

    def register(fn):
        _FIGURES[name] = fn
        return fn

    return register


def animations(name: str):
    """Register `fn(directory, *, gif=False, progress=True, **options) -> [paths]`, which
    renders experiment `name`'s animations from its run directory (`python -m sims animate`);
    `options` are those of `particles.plot.animate` the user gave (fps, dpi, ...)."""

    def register(fn):
        _ANIMATIONS[name] = fn
        return fn

    return register


def experiment(name: str, config: type):
    """Register `fn(config, directory)` as the experiment `name` with config type `config`."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"the config of {name!r} must be a dataclass")

    def register(fn):
        doc = (config.__doc__ or fn.__doc__ or "").strip()
        first = " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())
        _EXPERIMENTS[name] = Experiment(name, config, fn, first)
        return fn

    return register


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    package = importlib.import_module("sims.experiments")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def list_experiments() -> dict[str, Experiment]:
    """All registered experiments, by name."""
    # importing one experiment module registers only that one: always discover all
    _discover()
    return dict(sorted(_EXPERIMENTS.items()))


def get(name: str) -> Experiment:
    """The experiment called `name`; an unknown name is a `KeyError` suggesting the closest
    one."""
    table = list_experiments()
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise KeyError(f"unknown experiment {name!r}; {hint}choose from: {', '.join(table)}")
    return table[name]


def for_config(config) -> Experiment:
    for exp in list_experiments().values():
        if type(config) is exp.config:
            return exp
    raise TypeError(f"{type(config).__name__} is not the config of a registered experiment")
