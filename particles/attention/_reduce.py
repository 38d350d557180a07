"""Row reductions of a logit matrix, evaluated in blocks of queries.

Every attention operator reduces the rows of $s_{ij} + b_j$ (the kernel logits plus a
per-key offset) against values $v_j$: a softmax average, a plain sum of exponentials, or a
log-sum-exp. The `(q, m)` matrix is never formed for large clouds: queries are processed in
blocks, and XLA usually fuses the logits, the exponential and the product with the values
into one loop nest that never writes a tile to memory; the block bounds the tile when it does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Queries are processed in blocks of about this many query-key pairs (16 MiB of float32).
BLOCK_PAIRS = 1 << 22


def _rows(op, kernel, beta, qf, kf, key_bias, values, idx, causal):
    nk = kf.shape[0]
    # the bias is added last, so large logits round the same way in every kernel
    s = kernel.logits(beta, qf, kf) + key_bias[None, :]
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


def reduce_rows(op: str, kernel, beta, qf, kf, key_bias, values, *, causal: bool, block):
    r"""Reduce each row of $s_{ij} + b_j$ without forming all rows at once.

    op: `"softmax"` gives $\sum_j \mathrm{softmax}_j(s_{ij} + b_j) v_j$; `"sum"` gives
    $\sum_j e^{s_{ij} + b_j} v_j$; `"lse"` gives $\log \sum_j e^{s_{ij} + b_j}$ (`values`
    unused). With `causal`, row `i` only sees columns `j <= i`.
    """
    nq, nk = qf.shape[0], kf.shape[0]
    if op == "softmax":
        # A column of ones makes the softmax denominator part of the same product, so the
        # weights p_ij are consumed once (and stay in the fused loop) instead of twice.
        values = jnp.concatenate([values, jnp.ones((nk, 1), values.dtype)], axis=1)

    def rows(q, idx):
        return _rows(op, kernel, beta, q, kf, key_bias, values, idx, causal)

    idx = jnp.arange(nq)
    if block is None:
        block = max(1, BLOCK_PAIRS // max(nk, 1))
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


def log_weights(weights, n: int, dtype):
    """$\\log w_j$, with $\\log 0 = -\\infty$ removing a token exactly (`None`: uniform)."""
    if weights is None:
        return jnp.full((n,), -math.log(n), dtype)
    positive = weights > 0
    # the inner where keeps gradients finite at w_j = 0
    return jnp.where(positive, jnp.log(jnp.where(positive, weights, 1)), -jnp.inf).astype(dtype)
