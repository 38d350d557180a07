r"""Attention kernels $k(x, y)$ as small equinox Modules.

A kernel is written in feature space: with query features $q = Qx$ and key features
$k = Ky$, it gives the logit $\log k(x, y) = s_\beta(q, k)$. `log_kernel` is the pointwise
definition (one pair); `logits` evaluates a whole tile of pairs and defaults to `vmap` of
the pointwise one, so a new kernel is one class with one method. The kernels shipped here
override `logits` with a form XLA fuses with the exponential that follows.

Closed forms that exist only for some kernels (the Gaussian mean field, Lipschitz bounds,
interaction energies) dispatch on these types and raise `NotImplementedError` naming the
kernel where none is known.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["AbstractKernel", "DotProduct", "L2"]

# Up to this many features, logits of small tiles (and all L2 logits) are an explicit sum
# over features: one elementwise fusion, and exact where L2's |q|^2 + |k|^2 - 2 q.k cancels.
_UNROLL_FEATURES = 8
# Tiles of at most this many query-key pairs count as small (see DotProduct.logits).
_SMALL_TILE = 1 << 12


class AbstractKernel(eqx.Module):
    r"""An attention kernel $k(x, y) = \exp(s_\beta(Qx, Ky))$, given by its logit $s_\beta$."""

    @abc.abstractmethod
    def log_kernel(
        self, beta: Float[Array, ""], q: Float[Array, " k"], k: Float[Array, " k"]
    ) -> Float[Array, ""]:
        """The logit $s_\\beta(q, k) = \\log k(x, y)$ of one query feature `q` and one key
        feature `k`."""

    def logits(
        self, beta: Float[Array, ""], qf: Float[Array, "b k"], kf: Float[Array, "m k"]
    ) -> Float[Array, "b m"]:
        """All-pairs logits of `b` query features and `m` key features."""
        pair = lambda q, k: self.log_kernel(beta, q, k)  # noqa: E731
        return jax.vmap(jax.vmap(pair, (None, 0)), (0, None))(qf, kf)


class DotProduct(AbstractKernel):
    r"""The dot-product kernel $k(x, y) = e^{\beta \langle Qx, Ky \rangle}$ (Vaswani et al.
    2017), the kernel of softmax attention."""

    def log_kernel(self, beta, q, k):
        return beta * jnp.dot(q, k)

    def logits(self, beta, qf, kf):
        # beta scales the b queries rather than the b * m logits
        qs = beta * qf
        if qf.shape[-1] > _UNROLL_FEATURES or qf.shape[0] * kf.shape[0] > _SMALL_TILE:
            # XLA's CPU backend fuses this matmul with the maximum, the exponential and the
            # product with the values into one kernel per tile, which measured faster than
            # the explicit sum below on tiles of 64 x 4096 (benchmarks/README.md)
            return qs @ kf.T
        # small tiles (e.g. n = 32 clouds batched by vmap): an explicit sum over features
        # is one elementwise fusion, where a batched matmul of 32 x 3 x 32 is a loop of
        # tiny products
        s = qs[:, :1] * kf[None, :, 0]
        for f in range(1, qf.shape[-1]):
            s = s + qs[:, f : f + 1] * kf[None, :, f]
        return s


class L2(AbstractKernel):
    r"""The L2 kernel $k(x, y) = e^{-\beta |Qx - Ky|^2 / 2}$ (Kim, Papamakarios, Mnih 2021,
    "The Lipschitz Constant of Self-Attention"), Lipschitz on all of $\mathbb{R}^d$ when
    $Q = K$."""

    def log_kernel(self, beta, q, k):
        return -0.5 * beta * jnp.sum((q - k) ** 2)

    def logits(self, beta, qf, kf):
        if qf.shape[-1] > _UNROLL_FEATURES:
            # |q - k|^2 expanded so no (b, m, k) array is formed; the cancellation error is
            # O(eps |q|^2), far below the spread of the logits that softmax distinguishes.
            sq = jnp.sum(qf**2, axis=-1)[:, None] + jnp.sum(kf**2, axis=-1)[None, :]
            return -0.5 * beta * jnp.maximum(sq - 2 * qf @ kf.T, 0)
        sq = (qf[:, :1] - kf[None, :, 0]) ** 2
        for f in range(1, qf.shape[-1]):
            sq = sq + (qf[:, f : f + 1] - kf[None, :, f]) ** 2
        return -0.5 * beta * sq
