r"""Convergence of causal attention to its limit profile as the sequence grows.

Tokens sampled from a profile $X_0(s)$ at positions $s_i = i / n$
(`particles.meanfield.causal_tokens`) and moved by causal attention converge to the profile
$X(t, s)$ of the mean-field equation in sequence position; the $n$-token flow is a Riemann
sum of it, so its error is $O(1/n)$ for a smooth profile. `causal_convergence` simulates
several lengths against a finer reference and returns `causal_error` over time
(`docs/theory.md`, section 4.4; Castin, Ablin, Peyré 2024).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import diffrax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._simulate import simulate
from ..attention import Attention
from ..flows import AttentionFlow
from ..meanfield import causal_error, causal_tokens

__all__ = ["causal_convergence"]


def causal_convergence(
    attention: Attention,
    profile: Callable[[Float[Array, ""]], Float[Array, " d"]],
    ns: Sequence[int],
    reference: int,
    ts: Float[Array, " T"],
    *,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float = 1e-8,
    atol: float = 1e-8,
) -> Float[Array, "k T"]:
    r"""`causal_error` over time between $n$-token causal flows from `profile` and a reference
    flow of `reference` tokens, for each $n$ in `ns` (each must divide `reference`).

    Returns:
        Errors `(len(ns), T)`; `fit_power_law(ns, errors[:, -1])` gives the rate (about $-1$
        for a smooth profile: the $n$-token flow is a Riemann sum of the limit).
    """
    if not attention.causal:
        raise ValueError("attention must be causal (causal=True) for the causal mean-field limit")
    for n in ns:
        if reference % int(n):
            raise ValueError(f"reference = {reference} must be a multiple of every n; got n = {n}")
    flow = AttentionFlow(attention)

    def run(n):
        return simulate(
            flow, causal_tokens(profile, n)[1], ts, solver=solver, rtol=rtol, atol=atol
        ).xs

    ref = run(reference)
    return jnp.stack([causal_error(run(int(n)), ref) for n in ns])
