r"""Kernels that see the tokens' positions in the sequence: the hook the operator calls.

A positional kernel's logit depends on the token indices as well as the features,
$s_\beta(q_i, k_j; i, j)$ (rotary embeddings, Su et al. 2021). The operator appends each
token's position as one last feature column, $\tilde q_i = (q_i, p_i)$, $p_i = p_0 + i$, and
the kernel reads it back, so the blocked reductions, causal masks and Sinkhorn's transposed
kernel carry positions without knowing about them: a position is one more feature.
"""

from __future__ import annotations

import abc

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._kernels import AbstractKernel

__all__ = ["AbstractPositionalKernel", "with_positions"]


class AbstractPositionalKernel(AbstractKernel):
    """A kernel whose features end with the token's position (see the module docstring).

    `log_kernel(beta, q, k)` and `logits(beta, qf, kf)` receive features whose last entry
    is the position; `positions(n)` says where a sequence of `n` tokens sits.
    """

    @abc.abstractmethod
    def positions(self, n: int) -> Float[Array, " n"]:
        """Positions $p_0, p_0 + 1, \\dots$ of a sequence of `n` tokens."""


def with_positions(kernel: AbstractKernel, features: Float[Array, "n k"]) -> Float[Array, "n K"]:
    """`features` with the position column appended when `kernel` is positional; unchanged
    otherwise (the hook of `Attention`: every other kernel sees exactly its features)."""
    if not isinstance(kernel, AbstractPositionalKernel):
        return features
    p = kernel.positions(features.shape[0]).astype(features.dtype)
    return jnp.concatenate([features, p[:, None]], axis=1)
