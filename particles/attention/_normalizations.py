r"""Normalizations: how a row of kernel values becomes the weights that average $V x_j$.

$$ v[\mu](x_i) = \sum_j A_{ij} V x_j, \qquad
A_{ij} = \begin{cases}
  w_j k_{ij} / \sum_l w_l k_{il} & \text{softmax (SA)} \\
  w_j k_{ij} & \text{unnormalized (USA)} \\
  \pi_{ij} / w_i & \text{Sinkhorn: } \pi \text{ doubly stochastic with marginals } w
\end{cases} $$

A normalization is a small equinox Module with one method, `rows`, that reduces the rows of
the logit matrix against values (the blocked reductions of `_reduce`), and two class flags
saying whether it has a causal and a cross form. A new normalization is one class.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax
from jaxtyping import Array, Float

from ._kernels import AbstractKernel
from ._reduce import reduce_rows

__all__ = ["AbstractNormalization", "Softmax", "Sinkhorn", "Unnormalized"]


class AbstractNormalization(eqx.Module):
    """Turns kernel rows into averaging weights. See the module docstring for the formulas.

    Class attributes:
        supports_causal: whether a causal (lower-triangular) form exists.
        supports_cross: whether queries may differ from the keys (cross-attention).
        sums_to_one: whether every row of the attention matrix sums to one.
    """

    supports_causal: eqx.AbstractClassVar[bool]
    supports_cross: eqx.AbstractClassVar[bool]
    sums_to_one: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def rows(
        self,
        kernel: AbstractKernel,
        beta: Float[Array, ""],
        qf: Float[Array, "q k"],
        kf: Float[Array, "m k"],
        log_weights: Float[Array, " m"],
        values: Float[Array, "m e"],
        *,
        causal: bool,
        block: int | None,
    ) -> Float[Array, "q e"]:
        """$\\sum_j A_{ij}$ `values[j]` for each query feature `qf[i]`."""


class Softmax(AbstractNormalization):
    r"""Softmax attention (SA): $A_{ij} = w_j k_{ij} / \sum_l w_l k_{il}$, evaluated stably
    (the row maximum is subtracted), so $\beta = 100$ on unit vectors is finite."""

    supports_causal: ClassVar[bool] = True
    supports_cross: ClassVar[bool] = True
    sums_to_one: ClassVar[bool] = True

    def rows(self, kernel, beta, qf, kf, log_weights, values, *, causal, block):
        return reduce_rows(
            "softmax", kernel, beta, qf, kf, log_weights, values, causal=causal, block=block
        )


class Unnormalized(AbstractNormalization):
    r"""Unnormalized attention (USA): $A_{ij} = w_j k_{ij}$ (Geshkovski et al. 2023). Its
    values are $O(e^{\beta})$ and overflow float32 once $\beta \gtrsim 88$."""

    supports_causal: ClassVar[bool] = True
    supports_cross: ClassVar[bool] = True
    sums_to_one: ClassVar[bool] = False

    def rows(self, kernel, beta, qf, kf, log_weights, values, *, causal, block):
        return reduce_rows(
            "sum", kernel, beta, qf, kf, log_weights, values, causal=causal, block=block
        )


class _Transposed(AbstractKernel):
    """The kernel with its arguments swapped, $s'(a, b) = s(b, a)$: the column update of
    Sinkhorn reduces over queries for each key."""

    kernel: AbstractKernel

    def log_kernel(self, beta, q, k):
        return self.kernel.log_kernel(beta, k, q)

    def logits(self, beta, qf, kf):
        return self.kernel.logits(beta, kf, qf).T


class Sinkhorn(AbstractNormalization):
    r"""Sinkhorn attention (Sander, Ablin, Blondel, Peyré 2022, "Sinkformers"): the kernel
    matrix is scaled to a transport plan $\pi_{ij} = w_i w_j e^{f_i + g_j} k_{ij}$ with both
    marginals $w$, by `iters` symmetric log-domain Sinkhorn iterations, and $A = \pi / w_i$.

    It needs one measure on both sides (no cross form) and has no causal form (a
    lower-triangular doubly stochastic matrix is the identity).
    """

    iters: int = eqx.field(default=20, static=True)

    supports_causal: ClassVar[bool] = False
    supports_cross: ClassVar[bool] = False
    sums_to_one: ClassVar[bool] = True

    def __check_init__(self):
        if not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"Sinkhorn iters must be a positive int; got {self.iters!r}")

    def rows(self, kernel, beta, qf, kf, log_weights, values, *, causal, block):
        logw = log_weights
        # the column update reduces s_ij over i for each j: the kernel with swapped arguments
        columns = _Transposed(kernel)

        def step(g, _):
            f = -reduce_rows("lse", kernel, beta, qf, kf, g + logw, None, causal=False, block=block)
            g = -reduce_rows(
                "lse", columns, beta, kf, qf, f + logw, None, causal=False, block=block
            )
            return g, None

        g, _ = jax.lax.scan(step, jax.numpy.zeros_like(logw), None, length=self.iters)
        # After a final row update the rows of the plan divided by w_i sum to one: softmax
        # attention with the key bias g_j.
        return reduce_rows(
            "softmax", kernel, beta, qf, kf, logw + g, values, causal=False, block=block
        )
