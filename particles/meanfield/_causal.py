r"""The mean-field limit of causal (masked) attention, in sequence position.

Causal attention is not a function of the measure of the tokens alone: token $i$ sees tokens
$j \le i$, so its limit keeps each token's position $s \in (0, 1]$. Tokens sampled from a
profile, $x_i(0) = X_0(i / n)$ (`causal_positions`, `causal_tokens`), converge as
$n \to \infty$ to the profile $X(t, s)$ solving

$$ \partial_t X(t, s) = \frac{\int_0^s k(X(t, s), X(t, r))\, V X(t, r)\, dr}
                             {\int_0^s k(X(t, s), X(t, r))\, dr}, $$

of which the $n$-token flow is a right-endpoint Riemann sum; `causal_error` measures the
distance between a sequence and a finer reference at the same positions, which decays like
$1/n$ for a smooth profile (`particles.studies.causal_convergence`).

Castin, Ablin, Peyré, *How Smooth Is Attention?* (ICML 2024) treat masked attention in a
mean-field framework; the equation and the rate are in `docs/theory.md`, section 4.4.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = ["causal_error", "causal_positions", "causal_tokens"]


def causal_positions(n: int, dtype=None) -> Float[Array, " n"]:
    r"""Positions $s_i = i / n$, $i = 1, \dots, n$, of the tokens of a sequence in $[0, 1]$.

    Token $i$ of a causal flow attends to tokens $j \le i$, i.e. to positions $s \le s_i$:
    with uniform weights its softmax is the average over $[0, s_i]$ of the $n$-point rule.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    return jnp.arange(1, n + 1, dtype=dtype or jnp.zeros(()).dtype) / n


def causal_tokens(
    profile: Callable[[Float[Array, ""]], Float[Array, " d"]], n: int
) -> tuple[Float[Array, " n"], Float[Array, "n d"]]:
    r"""A sequence of `n` tokens sampled from a profile: $x_i(0) = X_0(s_i)$, $s_i = i / n$.

    As $n \to \infty$ the causal flow of these tokens converges to the profile $X(t, s)$ solving

    $$ \partial_t X(t, s) = \frac{\int_0^s k(X(t, s), X(t, r))\, V X(t, r)\, dr}
                                 {\int_0^s k(X(t, s), X(t, r))\, dr}, $$

    the mean field of causal attention, whose measure is the law of $(s, X(t, s))$ for
    $s \sim U[0, 1]$. The $n$-token flow is a Riemann sum of this equation at the nodes $s_i$:
    its error is $O(1/n)$ for a smooth profile (measured by `causal_error`).

    Args:
        profile: $X_0$, a function from $s \in [0, 1]$ to $\mathbb{R}^d$ (vmapped).
        n: number of tokens.

    Returns:
        `(positions (n,), tokens (n, d))`.
    """
    s = causal_positions(n)
    x = jax.vmap(profile)(s)
    if x.ndim != 2:
        raise ValueError(
            f"profile must map a scalar s to a vector of shape (d,); got {x.shape[1:]}"
        )
    return s, x


def causal_error(
    x: Float[Array, "... n d"], reference: Float[Array, "... N d"]
) -> Float[Array, "..."]:
    r"""RMS distance in $s$ between an $n$-token sequence and a finer reference of $N$ tokens.

    $\big(\frac1n \sum_i |x_i - X_{i N / n}|^2\big)^{1/2}$: token $i$ of both sequences sits at
    the same position $s = i / n$, so `N` must be a multiple of `n`. Leading axes (time,
    batch) broadcast.
    """
    x, reference = jnp.asarray(x), jnp.asarray(reference)
    n, big = x.shape[-2], reference.shape[-2]
    if big % n:
        raise ValueError(f"the reference length {big} must be a multiple of n = {n}")
    matched = reference[..., big // n - 1 :: big // n, :]
    return jnp.sqrt(jnp.mean(jnp.sum((x - matched) ** 2, axis=-1), axis=-1))
