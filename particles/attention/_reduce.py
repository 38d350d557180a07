"""Row reductions of a logit matrix, evaluated in tiles of queries.

Every attention operator reduces the rows of $s_{ij} + b_j$ (the kernel logits plus a
per-key offset) against values $v_j$: a softmax average, a plain sum of exponentials, or a
log-sum-exp. `reduce_rows` is the direct path every evaluation method can fall back to: the
`(q, m)` matrix is never formed for large clouds, queries are processed in tiles of a
measured size (`_tiled`), each tile one fused kernel, recomputed when differentiated.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from ._tiled import tile_rows, tile_size, tiled_rows


def reduce_rows(op: str, kernel, beta, qf, kf, key_bias, values, *, causal: bool, block):
    r"""Reduce each row of $s_{ij} + b_j$ without forming all rows at once.

    op: `"softmax"` gives $\sum_j \mathrm{softmax}_j(s_{ij} + b_j) v_j$; `"sum"` gives
    $\sum_j e^{s_{ij} + b_j} v_j$; `"lse"` gives $\log \sum_j e^{s_{ij} + b_j}$ (`values`
    unused). With `causal`, row `i` only sees columns `j <= i`.

    block: queries per tile; `None` takes the measured fastest tile for the number of keys
    and the precision (`_tiled.TILES`). One tile holding every query is the direct formula;
    more tiles are mapped one at a time and recomputed when differentiated (`_tiled`), and
    agree with it to rounding.
    """
    nq, nk = qf.shape[0], kf.shape[0]
    if op == "softmax":
        # A column of ones makes the softmax denominator part of the same product, so the
        # weights p_ij are consumed once (and stay in the fused loop) instead of twice.
        values = jnp.concatenate([values, jnp.ones((nk, 1), values.dtype)], axis=1)
    if block is None:
        block = tile_size(nk, jnp.result_type(qf, kf))
    if nq <= block:
        return tile_rows(op, kernel, beta, qf, kf, key_bias, values, jnp.arange(nq), causal)
    return tiled_rows(op, kernel, beta, qf, kf, key_bias, values, causal=causal, tile=block)


def log_weights(weights, n: int, dtype):
    """$\\log w_j$, with $\\log 0 = -\\infty$ removing a token exactly (`None`: uniform)."""
    if weights is None:
        return jnp.full((n,), -math.log(n), dtype)
    positive = weights > 0
    # the inner where keeps gradients finite at w_j = 0
    return jnp.where(positive, jnp.log(jnp.where(positive, weights, 1)), -jnp.inf).astype(dtype)
