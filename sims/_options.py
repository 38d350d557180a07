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

# each kernel from (key, d): the variants with random parameters draw them from the key
KERNELS: dict[str, Callable[..., P.AbstractKernel]] = {
    "dot": lambda key, d: P.DotProduct(),
    "l2": lambda key, d: P.L2(),
    "linear": lambda key, d: P.Linear(),
    "performer": lambda key, d: P.Performer.random(key, d, 64),
    "additive": lambda key, d: P.Additive.random(key, d),
    "rotary": lambda key, d: P.Rotary(),
}
RANDOM_KERNELS = ("performer", "additive")
NORMALIZATIONS: dict[str, Callable[[], P.AbstractNormalization]] = {
    "softmax": P.Softmax,
    "unnormalized": P.Unnormalized,
    "sinkhorn": P.Sinkhorn,
}
# the types of config fields that name a kernel with the closed forms of the dot-product
# and L2 kernels (the Gaussian mean field), any kernel, or one of the two normalizations
# the sphere experiments compare (SA and USA): the command line checks the names against them
Kernel = Literal["dot", "l2"]
AnyKernel = Literal[tuple(KERNELS)]
EVALUATIONS: dict[str, Callable[[], P.AbstractEvaluation]] = {
    "direct": P.Direct,
    "expansion": P.Expansion,
    "auto": P.Auto,
}
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


def kernel(name: str, key=None, d: int | None = None) -> P.AbstractKernel:
    """The kernel called `name` (`dot`, `l2`, `linear`, `performer`, `additive`, `rotary`);
    `performer` and `additive` draw their parameters from `key` for tokens of dimension `d`."""
    if name in RANDOM_KERNELS and (key is None or d is None):
        raise ValueError(f"kernel {name!r} draws random parameters: give a key and d")
    if name not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {name!r}")
    return KERNELS[name](key, d)


def normalization(name: str) -> P.AbstractNormalization:
    """The normalization called `name` (`softmax`, `unnormalized`, `sinkhorn`)."""
    return _lookup(NORMALIZATIONS, name, "normalization")


def evaluation(name: str) -> P.AbstractEvaluation:
    """How attention sums over keys (`direct`, `expansion`, `auto`; tolerance 1e-6)."""
    return _lookup(EVALUATIONS, name, "evaluation")


def solver(name: str) -> diffrax.AbstractSolver:
    """The diffrax solver called `name` (`tsit5`, `dopri8`, `kvaerno3`, ...)."""
    return _lookup(SOLVERS, name, "solver")
