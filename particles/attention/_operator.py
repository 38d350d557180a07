r"""The attention operator: a map from a weighted point cloud to a velocity field.

A cloud $x_1, \dots, x_n \in \mathbb{R}^d$ with weights $w_j \ge 0$, $\sum_j w_j = 1$, is the
empirical measure $\mu = \sum_j w_j \delta_{x_j}$ (Vuckovic, Baratin, Tachet des Combes 2020,
"A Mathematical Theory of Attention"). Multi-head attention evaluates, at query points $x$,

$$ v[\mu](x) = \sum_{h=1}^{H} \sum_j A^h_{x j}\, V_h x_j, $$

where the averaging weights $A^h$ come from a kernel $k_h(x, y) = \exp s_\beta(Q_h x, K_h y)$
(`DotProduct`, `L2`, ...) and a normalization (`Softmax`, `Unnormalized`, `Sinkhorn`, ...).
A single head is the case $H = 1$. `causal=True` lets token $i$ see only tokens $j \le i$.

`Attention` is an `equinox.Module` whose arrays ($Q, K, V, \beta$) are pytree leaves, so
`jit`, `vmap` and `grad` act on them without recompiling. Large clouds are evaluated in
blocks of queries, so memory is $O(n \cdot \text{block})$ rather than $O(n^2)$.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_cloud, check_positive, check_weights
from ._expansion import AbstractEvaluation, Direct
from ._kernels import AbstractKernel, DotProduct
from ._normalizations import AbstractNormalization, Softmax
from ._reduce import log_weights

__all__ = ["AbstractAttention", "Attention"]


class AbstractAttention(eqx.Module):
    """An attention operator: a map from a weighted cloud to a velocity at query points.

    Attributes every operator declares:
        kernel: the `AbstractKernel`.
        normalization: the `AbstractNormalization`.
        causal: whether token `i` sees only tokens `j <= i`.
        block_size: queries per block of the reduction (`None`: automatic).

    Calling the operator on a cloud is self-attention (checked); `unchecked` is the same
    without input validation (for vector fields evaluated inside a solver, where a NaN
    trial step must reach the step-size controller instead of raising); `cross` evaluates
    the field of one measure at other points. An operator constant in time answers `at(t)`
    with itself and has no `jump_times`, like a `Layered` schedule of per-layer weights.
    """

    kernel: eqx.AbstractVar[AbstractKernel]
    normalization: eqx.AbstractVar[AbstractNormalization]
    causal: eqx.AbstractVar[bool]
    block_size: eqx.AbstractVar[int | None]

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """The dimension $d$ of the tokens."""

    @abc.abstractmethod
    def unchecked(
        self, x: Float[Array, "n d"], weights: Float[Array, " n"] | None = None
    ) -> Float[Array, "n d"]:
        """Self-attention without validating `x` or `weights`."""

    @abc.abstractmethod
    def cross(
        self,
        queries: Float[Array, "q d"],
        context: Float[Array, "n d"],
        weights: Float[Array, " n"] | None = None,
    ) -> Float[Array, "q d"]:
        """Velocity $v[\\nu](y)$ at each query $y$ in the field of the context measure
        $\\nu = \\sum_j w_j \\delta_{x_j}$ (cross-attention)."""

    def __call__(
        self, x: Float[Array, "n d"], weights: Float[Array, " n"] | None = None
    ) -> Float[Array, "n d"]:
        """Self-attention: the velocity $v[\\mu_x](x_i)$ of every token of the cloud."""
        x = _check_dim(check_cloud(x, "x"), "x", self.dim)
        return self.unchecked(x, check_weights(weights, x.shape[0]))

    def at(self, t) -> AbstractAttention:
        """The operator acting at time `t`: itself (its weights do not change in time)."""
        return self

    def jump_times(self) -> None:
        """Times where the operator changes discontinuously: none."""
        return None


def _check_dim(x, name, d):
    if x.shape[1] != d:
        raise ValueError(
            f"{name} has dimension {x.shape[1]} but the attention acts on dimension {d}"
        )
    return x


def _heads_array(a, name: str):
    a = jnp.asarray(a)
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape (d_k, d) or (heads, d_k, d); got {a.shape}")
    return a


class Attention(AbstractAttention):
    r"""Multi-head attention $v[\mu](x) = \sum_h \sum_j A^h_{xj} V_h x_j$; one head is $H = 1$.

    Args:
        Q, K: query and key matrices, shape `(d_k, d)` for one head or `(H, d_k, d)`.
        V: value matrices, shape `(d, d)` or `(H, d, d)` (each head's output already mapped
            back to $\mathbb{R}^d$: the usual output projection is folded into $V_h$).
        beta: inverse temperature $\beta > 0$, shared by the heads.
        kernel: an `AbstractKernel`; default `DotProduct()`, $e^{\beta\langle Qx, Ky\rangle}$.
        normalization: an `AbstractNormalization`; default `Softmax()`.
        causal: token `i` attends only to tokens `j <= i` (GPT-style masking).
        block_size: queries per tile of the direct sum; `None` takes the tile measured
            fastest for the number of keys and the precision (a table in
            `particles/attention/_tiled.py`, from `benchmarks/tune_tiles.py`). Tiled and
            direct evaluation agree to rounding, derivatives included.
        evaluation: how the sum over keys is computed: `Direct()` (default, $O(n^2)$),
            `Expansion(tol)` (harmonic expansion on $S^1$/$S^2$, $O(n L^2)$, error bounded
            by `error_estimate`) or `Auto(tol)` (the cheaper of the two).

    The arrays are stored with the head axis first: `Q.shape == (H, d_k, d)`.
    """

    Q: Float[Array, "h dk d"]
    K: Float[Array, "h dk d"]
    V: Float[Array, "h d d"]
    beta: Float[Array, ""]
    kernel: AbstractKernel
    normalization: AbstractNormalization
    causal: bool = eqx.field(static=True)
    block_size: int | None = eqx.field(static=True)
    evaluation: AbstractEvaluation

    def __init__(
        self,
        Q,
        K,
        V,
        beta=1.0,
        *,
        kernel: AbstractKernel = DotProduct(),
        normalization: AbstractNormalization = Softmax(),
        causal: bool = False,
        block_size: int | None = None,
        evaluation: AbstractEvaluation = Direct(),
    ):
        if not isinstance(kernel, AbstractKernel):
            raise TypeError(
                f"kernel must be an AbstractKernel (e.g. DotProduct(), L2()); got {kernel!r}"
            )
        if not isinstance(normalization, AbstractNormalization):
            raise TypeError(
                "normalization must be an AbstractNormalization (e.g. Softmax(), "
                f"Unnormalized(), Sinkhorn()); got {normalization!r}"
            )
        if causal and not normalization.supports_causal:
            raise ValueError(
                f"{type(normalization).__name__} normalization has no causal form (a "
                "lower-triangular doubly stochastic matrix is the identity)"
            )
        if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
            raise ValueError(
                f"block_size must be a positive int or None (automatic); got {block_size!r}"
            )
        Q, K, V = _heads_array(Q, "Q"), _heads_array(K, "K"), _heads_array(V, "V")
        h, _, d = Q.shape
        if K.shape != Q.shape:
            raise ValueError(f"K must have shape {Q.shape[1:]} like Q; got {K.shape[1:]}")
        if V.shape != (h, d, d):
            raise ValueError(f"V must have shape ({d}, {d}) per head, {h} heads; got {V.shape}")
        self.Q, self.K, self.V = Q, K, V
        self.beta = check_positive(beta, "beta")
        self.kernel = kernel
        self.normalization = normalization
        self.causal = bool(causal)
        self.block_size = block_size
        if not isinstance(evaluation, AbstractEvaluation):
            raise TypeError(
                "evaluation must be an AbstractEvaluation (e.g. Direct(), Expansion(tol=1e-6), "
                f"Auto(tol=1e-6)); got {evaluation!r}"
            )
        # an expansion fixes its order here, from the concrete beta, Q and K
        self.evaluation = evaluation.resolved(kernel, normalization, Q, K, self.beta)

    @classmethod
    def identity(cls, d: int, beta=1.0, **options) -> Attention:
        """One head with $Q = K = V = I_d$: the model of Geshkovski et al. (2023)."""
        eye = jnp.eye(d)
        return cls(eye, eye, eye, beta, **options)

    @classmethod
    def random(
        cls,
        key: PRNGKeyArray,
        d: int,
        *,
        heads: int = 1,
        d_k: int | None = None,
        beta=1.0,
        **options,
    ) -> Attention:
        """Gaussian heads: $Q_h, K_h$ entries $N(0, 1/d)$, $V_h$ entries $N(0, 1/(d H^2))$,
        so the summed field stays $O(1)$ as the number of heads $H$ grows."""
        d_k = d if d_k is None else d_k
        kq, kk, kv = jax.random.split(key, 3)
        scale = 1 / math.sqrt(d)
        return cls(
            scale * jax.random.normal(kq, (heads, d_k, d)),
            scale * jax.random.normal(kk, (heads, d_k, d)),
            scale / heads * jax.random.normal(kv, (heads, d, d)),
            beta,
            **options,
        )

    @property
    def heads(self) -> int:
        """The number of heads $H$."""
        return self.Q.shape[0]

    @property
    def dim(self) -> int:
        return self.Q.shape[2]

    def head(self, h: int) -> Attention:
        """Head `h` alone, as a one-head `Attention`."""
        return eqx.tree_at(
            lambda a: (a.Q, a.K, a.V),
            self,
            (self.Q[h : h + 1], self.K[h : h + 1], self.V[h : h + 1]),
        )

    def _head_rows(self, Q, K, queries, context, logw, values, causal, estimate=False):
        """$\\sum_j A_{ij}$ `values[j]` for one head's $Q, K$, at each query (with
        `estimate`: the bound on its error instead)."""
        method = self.evaluation.estimate if estimate else self.evaluation.rows
        return method(
            self.kernel,
            self.normalization,
            self.beta,
            Q,
            K,
            queries,
            context,
            logw,
            values,
            causal=causal,
            block=self.block_size,
        )

    def _evaluate(self, queries, context, weights, causal, estimate=False):
        # the dtype the logits come out in (float32 tokens against float64 Q give float64)
        dtype = jnp.result_type(queries, self.Q, self.beta)
        logw = log_weights(weights, context.shape[0], dtype)
        if self.heads == 1:
            values = context @ self.V[0].T
            return self._head_rows(
                self.Q[0], self.K[0], queries, context, logw, values, causal, estimate
            )
        values = jnp.einsum("nd,hed->hne", context, self.V)
        one = lambda Q, K, v: self._head_rows(  # noqa: E731
            Q, K, queries, context, logw, v, causal, estimate
        )
        return jnp.sum(jax.vmap(one)(self.Q, self.K, values), axis=0)

    def unchecked(self, x, weights=None):
        return self._evaluate(x, x, weights, self.causal)

    def error_estimate(
        self, x: Float[Array, "n d"], weights: Float[Array, " n"] | None = None
    ) -> Float[Array, " n"]:
        """A bound on $|v_i - v^{exact}_i|$ for each token of self-attention: the a
        posteriori truncation bound of an `Expansion` (summed over heads; see
        `particles.attention.Expansion`), zero for `Direct()`. It ignores rounding."""
        x = _check_dim(check_cloud(x, "x"), "x", self.dim)
        return self._evaluate(x, x, check_weights(weights, x.shape[0]), self.causal, True)

    def cross(self, queries, context, weights=None):
        queries = _check_dim(check_cloud(queries, "queries"), "queries", self.dim)
        context = _check_dim(check_cloud(context, "context"), "context", self.dim)
        if self.causal:
            raise ValueError(
                "causal attention has no cross form: token order exists only within one cloud"
            )
        if not self.normalization.supports_cross:
            raise ValueError(
                f"{type(self.normalization).__name__} normalization needs one measure on both "
                "sides: use self-attention"
            )
        weights = check_weights(weights, context.shape[0])
        return self._evaluate(queries, context, weights, False)

    def matrix(self, x: Float[Array, "n d"], weights=None) -> Float[Array, "h n n"]:
        """Each head's attention matrix $A^h$, with $v_i = \\sum_h \\sum_j A^h_{ij} V_h x_j$
        (rows sum to one when `normalization.sums_to_one`). Dense: for small clouds and
        figures."""
        x = _check_dim(check_cloud(x, "x"), "x", self.dim)
        weights = check_weights(weights, x.shape[0])
        # the matrix is the operator applied to one-hot values e_j = row j of I
        eye = jnp.eye(x.shape[0], dtype=x.dtype)
        logw = log_weights(weights, x.shape[0], jnp.result_type(x, self.Q, self.beta))
        one = lambda Q, K: self._head_rows(Q, K, x, x, logw, eye, self.causal)  # noqa: E731
        return jax.vmap(one)(self.Q, self.K)
