r"""Attention as an operator that maps a weighted point cloud to a velocity field.

A cloud $x_1, \dots, x_n \in \mathbb{R}^d$ with weights $w_j \ge 0$, $\sum_j w_j = 1$, is the
empirical measure $\mu = \sum_j w_j \delta_{x_j}$. Attention evaluates, at query points $x$,

$$ v[\mu](x) = \frac{\sum_j w_j k(x, x_j) V x_j}{\sum_j w_j k(x, x_j)} \quad \text{(softmax, SA)},
\qquad v[\mu](x) = \sum_j w_j k(x, x_j) V x_j \quad \text{(unnormalized, USA)}, $$

with the dot-product kernel $k(x, y) = e^{\beta \langle Qx, Ky \rangle}$ or the L2 kernel
$k(x, y) = e^{-\beta |Qx - Ky|^2 / 2}$ (Kim, Papamakarios, Mnih 2021). Sinkhorn normalisation
(Sander, Ablin, Blondel, Peyré 2022) makes the kernel matrix a transport plan with both
marginals equal to `weights` before it multiplies $V x$. See Vuckovic et al. (2020) for
attention as an operator on measures.

Every operator here is an `equinox.Module` whose arrays ($Q, K, V, \beta$) are pytree leaves,
so `jit`, `vmap` and `grad` act on them without recompiling. Large clouds are evaluated in
blocks of queries, so memory is $O(n \cdot \text{block})$ rather than $O(n^2)$.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import check_choice, check_cloud, check_matrix, check_positive, check_weights

KERNELS = ("dot", "l2")
NORMALIZATIONS = ("softmax", "unnormalized", "sinkhorn")

# Queries are processed in blocks of about this many query-key pairs. XLA usually fuses the
# logits, the exponential and the product with the values into one loop nest that never
# writes a logit tile to memory; the block bounds the tile (16 MiB of float32) when it does.
_BLOCK_PAIRS = 1 << 22
# Up to this many features, logits are written as an explicit sum over features: it fuses with
# the exponential that follows, where a matmul would materialise the logit tile.
_UNROLL_FEATURES = 8


def _logits(kernel: str, beta, qf, kf, key_bias):
    r"""Logits $\log k(q_i, k_j) + b_j$ between query features `qf` (b, k) and key features
    `kf` (m, k), with the per-key offset `key_bias` (m,)."""
    if qf.shape[-1] <= _UNROLL_FEATURES:
        if kernel == "dot":
            # beta scales the b queries rather than the b * m logits; the bias is added
            # last, as in the matmul form, so large logits round the same way
            qs = beta * qf
            s = qs[:, :1] * kf[:, 0]
            for f in range(1, qf.shape[-1]):
                s = s + qs[:, f : f + 1] * kf[:, f]
            return s + key_bias
        sq = (qf[:, :1] - kf[:, 0]) ** 2
        for f in range(1, qf.shape[-1]):
            sq = sq + (qf[:, f : f + 1] - kf[:, f]) ** 2
        return key_bias - 0.5 * beta * sq
    if kernel == "dot":
        return (beta * qf) @ kf.T + key_bias
    # |q - k|^2 expanded so no (b, m, k) array is formed; the cancellation error is
    # O(eps |q|^2), far below the spread of the logits that softmax distinguishes.
    dots = qf @ kf.T
    sq = jnp.sum(qf**2, axis=-1)[:, None] + jnp.sum(kf**2, axis=-1)[None, :] - 2 * dots
    return key_bias - 0.5 * beta * jnp.maximum(sq, 0)


def _reduce_rows(op, kernel, beta, qf, kf, key_bias, values, *, causal, block):
    r"""Reduce each row of the logit matrix `s_ij + key_bias_j` without forming all rows.

    op: "softmax" gives $\sum_j \mathrm{softmax}_j(s_{ij}) v_j$; "sum" gives
    $\sum_j e^{s_{ij}} v_j$; "lse" gives $\log \sum_j e^{s_{ij}}$. With `causal`, row `i`
    only sees columns `j <= i`.
    """
    nq, nk = qf.shape[0], kf.shape[0]
    if op == "softmax":
        # A column of ones makes the softmax denominator part of the same product, so the
        # weights p_ij are consumed once (and stay in the fused loop) instead of twice.
        values = jnp.concatenate([values, jnp.ones((nk, 1), values.dtype)], axis=1)

    def rows(q, idx):
        s = _logits(kernel, beta, q, kf, key_bias)
        if causal:
            s = jnp.where(jnp.arange(nk)[None, :] <= idx[:, None], s, -jnp.inf)
        if op == "sum":
            return jnp.exp(s) @ values
        top = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
        # A row that sees no key has top = -inf; any finite shift keeps its p_ij = 0. A
        # maximum (not a where on isfinite) keeps the row computation a single fusion.
        top = jnp.maximum(top, jnp.finfo(s.dtype).min)
        p = jnp.exp(s - top)
        if op == "lse":
            return jnp.log(jnp.sum(p, axis=-1)) + top[:, 0]
        out = p @ values
        total = out[:, -1:]
        # A row that sees no mass (all its weights zero) moves with velocity zero.
        return out[:, :-1] / jnp.where(total > 0, total, 1)

    idx = jnp.arange(nq)
    if block is None:
        block = max(1, _BLOCK_PAIRS // max(nk, 1))
    if nq <= block:
        return rows(qf, idx)
    # Whole blocks run under lax.map on (block, m) tiles; the remainder is one smaller tile.
    full = nq - nq % block
    tiles = (qf[:full].reshape(-1, block, qf.shape[1]), idx[:full].reshape(-1, block))
    out = jax.lax.map(lambda a: rows(*a), tiles)
    out = out.reshape((full,) + out.shape[2:])
    if full < nq:
        out = jnp.concatenate([out, rows(qf[full:], idx[full:])])
    return out


def _log_weights(weights, n, dtype):
    if weights is None:
        return jnp.full((n,), -math.log(n), dtype)
    # log 0 = -inf removes a token exactly; the where keeps gradients finite.
    positive = weights > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, weights, 1)), -jnp.inf).astype(dtype)


def _key_bias(kernel, beta, qf, kf, logw, *, normalization, block, iters):
    """Per-key log-offset added to the logits: the log-weights, plus for Sinkhorn the
    column potential $g$ that makes the plan doubly stochastic."""
    if normalization != "sinkhorn":
        return logw

    # Symmetric log-domain Sinkhorn for the plan pi_ij = w_i w_j exp(f_i + g_j + s_ij) with
    # both marginals w. Query and key roles swap for the column update.
    def step(g, _):
        f = -_reduce_rows("lse", kernel, beta, qf, kf, g + logw, None, causal=False, block=block)
        g = -_reduce_rows("lse", kernel, beta, kf, qf, f + logw, None, causal=False, block=block)
        return g, None

    g, _ = jax.lax.scan(step, jnp.zeros_like(logw), None, length=iters)
    # After a final row update the rows of the plan divided by w_i sum to one: softmax
    # attention with the key bias g_j.
    return logw + g


def _single_head(
    Q, K, V, beta, queries, context, weights, *, kernel, normalization, causal, block, iters
):
    qf = queries @ Q.T
    kf = context @ K.T
    vx = context @ V.T
    logw = _log_weights(weights, context.shape[0], qf.dtype)
    bias = _key_bias(
        kernel, beta, qf, kf, logw, normalization=normalization, block=block, iters=iters
    )
    op = "sum" if normalization == "unnormalized" else "softmax"
    return _reduce_rows(op, kernel, beta, qf, kf, bias, vx, causal=causal, block=block)


class AbstractAttention(eqx.Module):
    """An attention operator: a map from a weighted cloud to a velocity at query points.

    Subclasses implement `cross`. Calling the operator on a cloud is self-attention.
    """

    @abc.abstractmethod
    def cross(
        self,
        queries: Float[Array, "q d"],
        context: Float[Array, "n d"],
        weights: Float[Array, " n"] | None = None,
    ) -> Float[Array, "q d"]:
        """Velocity $v[\\nu](y)$ at each query $y$ in the field of the context measure
        $\\nu = \\sum_j w_j \\delta_{x_j}$ (cross-attention)."""

    @abc.abstractmethod
    def __call__(
        self, x: Float[Array, "n d"], weights: Float[Array, " n"] | None = None
    ) -> Float[Array, "n d"]:
        """Self-attention: the velocity $v[\\mu_x](x_i)$ of every token of the cloud."""


def _validate_options(kernel, normalization, causal):
    check_choice(kernel, KERNELS, "kernel")
    check_choice(normalization, NORMALIZATIONS, "normalization")
    if causal and normalization == "sinkhorn":
        raise ValueError(
            "normalization='sinkhorn' cannot be combined with causal=True: a lower-triangular "
            "doubly stochastic matrix is the identity"
        )


def _validate_block(block_size):
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(
            f"block_size must be a positive int or None (automatic); got {block_size!r}"
        )


class SelfAttention(AbstractAttention):
    r"""Single-head attention $v[\mu](x) = \sum_j \frac{w_j k(x, x_j)}{Z(x)} V x_j$.

    Args:
        Q, K: query and key matrices, shape `(d_k, d)`.
        V: value matrix, shape `(d, d)`.
        beta: inverse temperature $\beta > 0$.
        kernel: `"dot"` for $e^{\beta \langle Qx, Ky\rangle}$, `"l2"` for
            $e^{-\beta |Qx - Ky|^2 / 2}$.
        normalization: `"softmax"` (SA, $Z = \sum_j w_j k$), `"unnormalized"` (USA, $Z = 1$),
            or `"sinkhorn"` (doubly stochastic, Sander et al. 2022).
        causal: token `i` attends only to tokens `j <= i` (GPT-style masking).
        block_size: queries per block; `None` picks direct evaluation for small clouds and
            blocks of about $2^{22}/n$ queries otherwise. Blocked and direct evaluation agree
            to rounding.
        sinkhorn_iters: number of Sinkhorn iterations for `normalization="sinkhorn"`.

    Softmax is evaluated stably (the row maximum is subtracted), so $\beta = 100$ on unit
    vectors is finite. Unnormalized attention has no such rescaling: its values are
    $O(e^{\beta})$ and overflow float32 once $\beta \gtrsim 88$.
    """

    Q: Float[Array, "dk d"]
    K: Float[Array, "dk d"]
    V: Float[Array, "d d"]
    beta: Float[Array, ""]
    kernel: str = eqx.field(static=True)
    normalization: str = eqx.field(static=True)
    causal: bool = eqx.field(static=True)
    block_size: int | None = eqx.field(static=True)
    sinkhorn_iters: int = eqx.field(static=True)

    def __init__(
        self,
        Q,
        K,
        V,
        beta=1.0,
        *,
        kernel: str = "dot",
        normalization: str = "softmax",
        causal: bool = False,
        block_size: int | None = None,
        sinkhorn_iters: int = 20,
    ):
        _validate_options(kernel, normalization, causal)
        _validate_block(block_size)
        Q = check_matrix(Q, (None, None), "Q")
        d = Q.shape[1]
        self.Q = Q
        self.K = check_matrix(K, Q.shape, "K")
        self.V = check_matrix(V, (d, d), "V")
        self.beta = check_positive(beta, "beta")
        self.kernel = kernel
        self.normalization = normalization
        self.causal = bool(causal)
        self.block_size = block_size
        self.sinkhorn_iters = int(sinkhorn_iters)

    @classmethod
    def identity(cls, d: int, beta=1.0, **options) -> SelfAttention:
        """$Q = K = V = I_d$: the model of Geshkovski et al. (2023)."""
        eye = jnp.eye(d)
        return cls(eye, eye, eye, beta, **options)

    @classmethod
    def random(
        cls, key: PRNGKeyArray, d: int, d_k: int | None = None, beta=1.0, **options
    ) -> SelfAttention:
        """Gaussian $Q, K$ (entries $N(0, 1/d)$) and $V$ (entries $N(0, 1/d)$)."""
        d_k = d if d_k is None else d_k
        kq, kk, kv = jax.random.split(key, 3)
        scale = 1 / math.sqrt(d)
        return cls(
            scale * jax.random.normal(kq, (d_k, d)),
            scale * jax.random.normal(kk, (d_k, d)),
            scale * jax.random.normal(kv, (d, d)),
            beta,
            **options,
        )

    @property
    def dim(self) -> int:
        return self.Q.shape[1]

    def _evaluate(self, queries, context, weights, causal):
        return _single_head(
            self.Q,
            self.K,
            self.V,
            self.beta,
            queries,
            context,
            weights,
            kernel=self.kernel,
            normalization=self.normalization,
            causal=causal,
            block=self.block_size,
            iters=self.sinkhorn_iters,
        )

    def cross(self, queries, context, weights=None):
        _check_cross(self, queries, context, self.dim)
        weights = check_weights(weights, context.shape[0])
        return self._evaluate(queries, context, weights, False)

    def __call__(self, x, weights=None):
        x = _check_self(x, self.dim)
        weights = check_weights(weights, x.shape[0])
        return self._evaluate(x, x, weights, self.causal)

    def unchecked(self, x, weights=None):
        return self._evaluate(x, x, weights, self.causal)

    def matrix(self, x: Float[Array, "n d"], weights=None) -> Float[Array, "n n"]:
        """The attention matrix $A$ with $v_i = \\sum_j A_{ij} V x_j$ (rows sum to one for
        softmax and Sinkhorn). Dense: for small clouds and figures."""
        x = _check_self(x, self.dim)
        weights = check_weights(weights, x.shape[0])
        # The matrix is the operator applied with V = I to one-hot values e_j = row j of I.
        eye = jnp.eye(x.shape[0], dtype=x.dtype)
        qf, kf = x @ self.Q.T, x @ self.K.T
        logw = _log_weights(weights, x.shape[0], qf.dtype)
        bias = _key_bias(
            self.kernel,
            self.beta,
            qf,
            kf,
            logw,
            normalization=self.normalization,
            block=self.block_size,
            iters=self.sinkhorn_iters,
        )
        op = "sum" if self.normalization == "unnormalized" else "softmax"
        return _reduce_rows(
            op, self.kernel, self.beta, qf, kf, bias, eye, causal=self.causal, block=self.block_size
        )


def _check_self(x, d):
    x = check_cloud(x, "x")
    if x.shape[1] != d:
        raise ValueError(f"x has dimension {x.shape[1]} but the attention acts on dimension {d}")
    return x


def _check_cross(attn, queries, context, d):
    check_cloud(queries, "queries")
    check_cloud(context, "context")
    for name, a in (("queries", queries), ("context", context)):
        if a.shape[1] != d:
            raise ValueError(
                f"{name} has dimension {a.shape[1]} but the attention acts on dimension {d}"
            )
    if getattr(attn, "causal", False):
        raise ValueError(
            "causal attention has no cross form: token order exists only within one cloud"
        )
    if getattr(attn, "normalization", None) == "sinkhorn":
        raise ValueError(
            "sinkhorn normalization needs one measure on both sides: use self-attention"
        )


class MultiHeadAttention(AbstractAttention):
    r"""Multi-head attention $v = \sum_h v_h$, head $h$ with its own $Q_h, K_h, V_h$.

    Args:
        Q, K: stacked query and key matrices, shape `(h, d_k, d)`.
        V: stacked value matrices, shape `(h, d, d)` (each head's output already mapped back
            to $\mathbb{R}^d$, so the usual output projection is folded into $V_h$).
        beta, kernel, normalization, causal, block_size, sinkhorn_iters: as in
            `SelfAttention`, shared by all heads.
    """

    Q: Float[Array, "h dk d"]
    K: Float[Array, "h dk d"]
    V: Float[Array, "h d d"]
    beta: Float[Array, ""]
    kernel: str = eqx.field(static=True)
    normalization: str = eqx.field(static=True)
    causal: bool = eqx.field(static=True)
    block_size: int | None = eqx.field(static=True)
    sinkhorn_iters: int = eqx.field(static=True)

    def __init__(
        self,
        Q,
        K,
        V,
        beta=1.0,
        *,
        kernel: str = "dot",
        normalization: str = "softmax",
        causal: bool = False,
        block_size: int | None = None,
        sinkhorn_iters: int = 20,
    ):
        _validate_options(kernel, normalization, causal)
        _validate_block(block_size)
        Q, K, V = jnp.asarray(Q), jnp.asarray(K), jnp.asarray(V)
        if Q.ndim != 3:
            raise ValueError(f"Q must have shape (heads, d_k, d); got {Q.shape}")
        h, _, d = Q.shape
        if K.shape != Q.shape:
            raise ValueError(f"K must have shape {Q.shape} like Q; got {K.shape}")
        if V.shape != (h, d, d):
            raise ValueError(f"V must have shape ({h}, {d}, {d}); got {V.shape}")
        self.Q, self.K, self.V = Q, K, V
        self.beta = check_positive(beta, "beta")
        self.kernel = kernel
        self.normalization = normalization
        self.causal = bool(causal)
        self.block_size = block_size
        self.sinkhorn_iters = int(sinkhorn_iters)

    @classmethod
    def random(
        cls, key: PRNGKeyArray, d: int, heads: int, d_k: int | None = None, beta=1.0, **options
    ) -> MultiHeadAttention:
        """Gaussian heads; values scaled by $1/h$ so the summed field stays $O(1)$."""
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
        return self.Q.shape[0]

    @property
    def dim(self) -> int:
        return self.Q.shape[2]

    def head(self, h: int) -> SelfAttention:
        """Head `h` as a `SelfAttention`."""
        return SelfAttention(
            self.Q[h],
            self.K[h],
            self.V[h],
            self.beta,
            kernel=self.kernel,
            normalization=self.normalization,
            causal=self.causal,
            block_size=self.block_size,
            sinkhorn_iters=self.sinkhorn_iters,
        )

    def _evaluate(self, queries, context, weights, causal):
        def one(Q, K, V):
            return _single_head(
                Q,
                K,
                V,
                self.beta,
                queries,
                context,
                weights,
                kernel=self.kernel,
                normalization=self.normalization,
                causal=causal,
                block=self.block_size,
                iters=self.sinkhorn_iters,
            )

        return jnp.sum(jax.vmap(one)(self.Q, self.K, self.V), axis=0)

    def cross(self, queries, context, weights=None):
        _check_cross(self, queries, context, self.dim)
        weights = check_weights(weights, context.shape[0])
        return self._evaluate(queries, context, weights, False)

    def __call__(self, x, weights=None):
        x = _check_self(x, self.dim)
        weights = check_weights(weights, x.shape[0])
        return self._evaluate(x, x, weights, self.causal)

    def unchecked(self, x, weights=None):
        return self._evaluate(x, x, weights, self.causal)

    def matrix(self, x, weights=None) -> Float[Array, "h n n"]:
        """Each head's attention matrix, stacked."""
        return jnp.stack([self.head(h).matrix(x, weights) for h in range(self.heads)])
