"""The one registry of option names: where command-line strings become library objects.

The library takes objects (`particles.Softmax()`, `diffrax.Tsit5()`); configs and flags take
names. Every experiment turns a name into an object here, so the list of names that `--help`
shows and the objects the library receives cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import diffrax

import particles as P

KERNELS: dict[str, Callable[[], P.AbstractKernel]] = {
    "dot": P.DotProduct,
    "l2": P.L2,
}
NORMALIZATIONS: dict[str, Callable[[], P.AbstractNormalization]] = {
    "softmax": P.Softmax,
    "unnormalized": P.Unnormalized,
    "sinkhorn": P.Sinkhorn,
}
EVALUATIONS: dict[str, Callable[[], P.AbstractEvaluation]] = {
    "direct": P.Direct,
    "expansion": P.Expansion,
    "auto": P.Auto,
}
# the types of config fields that name a kernel, or one of the two normalizations the
# sphere experiments compare (SA and USA): the command line checks the names against them
Kernel = Literal[tuple(KERNELS)]
Normalization = Literal["softmax", "unnormalized"]
Evaluation = Literal[tuple(EVALUATIONS)]
SOLVERS: dict[str, Callable[[], diffrax.AbstractSolver]] = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "ralston": diffrax.Ralston,
    "bosh3": diffrax.Bosh3,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "tsit5": diffrax.Tsit5,
    # L-stable implicit ESDIRK methods (Kvaerno 2004), for stiff runs: unnormalized attention
    # at large beta contracts a formed cluster at a rate ~ e^beta (float64 only)
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno5": diffrax.Kvaerno5,
}


def _lookup(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"{what} must be one of {', '.join(table)}; got {name!r}")
    return table[name]()


def kernel(name: str) -> P.AbstractKernel:
    """The kernel called `name` (`dot`, `l2`)."""
    return _lookup(KERNELS, name, "kernel")


def normalization(name: str) -> P.AbstractNormalization:
    """The normalization called `name` (`softmax`, `unnormalized`, `sinkhorn`)."""
    return _lookup(NORMALIZATIONS, name, "normalization")


def evaluation(name: str) -> P.AbstractEvaluation:
    """How attention sums over keys (`direct`, `expansion`, `auto`; tolerance 1e-6)."""
    return _lookup(EVALUATIONS, name, "evaluation")


def solver(name: str) -> diffrax.AbstractSolver:
    """The diffrax solver called `name` (`tsit5`, `dopri8`, `kvaerno3`, ...)."""
    return _lookup(SOLVERS, name, "solver")
