r"""Tiled row reductions: queries in tiles under `lax.map`, each tile recomputed when
differentiated.

One tile of `b` queries against all `m` keys is the direct formula (`tile_rows`): the logits
$s_{ij} + b_j$, the row maximum, the exponential and the product with the values. XLA fuses
the four into one kernel that keeps the `(b, m)` tile in cache when the tile is small
enough; the tile size that runs fastest was measured for each size and precision
(`TILES`, from `python benchmarks/tune_tiles.py`).

Memory. The forward pass holds one tile at a time. Every tile function is wrapped in
`jax.checkpoint`, so reverse-mode differentiation (`jax.grad`, `jax.vjp`) saves only each
tile's inputs (the `b` query features) and recomputes the tile's logits and exponentials in
the backward pass, as memory-efficient attention does (Rabe and Staats 2021,
"Self-attention Does Not Need O(n^2) Memory"; Dao et al. 2022, "FlashAttention"):
gradients take $O(n \cdot b)$ memory instead of the $O(n m)$ of the stored exponentials.
Forward mode (`jax.jvp`) maps the tiles the same way and stores nothing. The rule is JAX's
own derivative of the tile, recomputed, rather than a hand-written `custom_vjp`: a
`custom_vjp` function refuses `jax.jvp`, which the Lipschitz estimates apply to the field
(and differentiate again, in `worst_cloud`).

Causal rows. Row $i$ sees keys $j \le i$ only, so a tile of queries ending at row $e$ needs
the first $e$ keys, not all $m$. The queries are cut into at most `CAUSAL_CHUNKS` chunks of
whole tiles; chunk $c$ is reduced against the keys up to its last row, which skips
$(C - 1) / 2C$ of the square (44% for $C = 8$) while every chunk keeps static shapes.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp

# Tile sizes (queries per tile), fastest median CPU time of the sphere softmax field (d = 3,
# beta = 4) for keys up to each size, on the 2-core AMD EPYC (Zen 4) CPU of the development
# machine. float32: measured idle (load average < 2) on 2026-12-02 at commit 550bd22 by
#     PYTHONPATH=. python benchmarks/tune_tiles.py --dtypes float32 --repeats 5
# (n = 16384: 128 and 64 within 0.5%; the other sizes' best tiles 7-50% ahead).
# float64: measured at commit dbc6f6c, while the machine was shared (load average 8-14), by
#     PYTHONPATH=. python benchmarks/tune_tiles.py --dtypes float64 --repeats 3
# (tiles 32 ... 1024; the direct T = n tried up to 4096; only T <= 256 at 65536); rerun it
# on an idle machine and paste its output here.
TILES: dict[tuple[str, int], int] = {
    ("float32", 1024): 32,
    ("float32", 4096): 256,
    ("float32", 16384): 128,
    ("float32", 1 << 62): 32,
    ("float64", 1024): 64,
    ("float64", 4096): 128,
    ("float64", 16384): 64,
    ("float64", 1 << 62): 64,
}

# Chunks of a causal reduction (each a separately compiled map over its own key prefix).
CAUSAL_CHUNKS = 8


def tile_size(nk: int, dtype) -> int:
    """The measured fastest number of queries per tile for `nk` keys of `dtype`."""
    name = "float64" if jnp.dtype(dtype) == jnp.float64 else "float32"
    for (kind, bound), tile in sorted(TILES.items(), key=lambda kv: kv[0][1]):
        if kind == name and nk <= bound:
            return tile
    raise AssertionError("TILES ends with an unbounded entry for each dtype")


def tile_rows(op, kernel, beta, qf, kf, key_bias, values, idx, causal):
    """The direct formula for one tile of queries `qf` (rows `idx`) against all keys."""
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


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _tile(op, causal, kernel_static, kernel_arrays, beta, qf, kf, key_bias, values, idx):
    """`tile_rows` with the derivative written out (`_tile_jvp`)."""
    kernel = eqx.combine(kernel_arrays, kernel_static)
    return tile_rows(op, kernel, beta, qf, kf, key_bias, values, idx, causal)


@_tile.defjvp
def _tile_jvp(op, causal, kernel_static, primals, tangents):
    r"""Forward derivative of one tile, linear in the tangents.

    With $p_{ij} = e^{s_{ij} + b_j - \mathrm{top}_i}$, $B = p\,[v, 1]$ and the output
    $o_i = B_{i,:e} / B_{i,e}$ (softmax), the tangent is
    $\dot o_i = (\dot B_{i,:e} - o_i \dot B_{i,e}) / B_{i,e}$ with
    $\dot B = (p \odot \dot s)[v, 1] + p\,[\dot v, 0]$: two products of the tile with the
    values, whose transposes are the backward pass of memory-efficient attention
    ($\bar s = p \odot (\bar B [v, 1]^\top)$, $\bar v = p^\top \bar B$). The logits'
    own tangent comes from `jax.jvp` of the kernel, so any kernel is supported.
    """
    kernel_arrays, beta, qf, kf, key_bias, values, idx = primals
    d_arrays, d_beta, d_qf, d_kf, d_bias, d_values, _ = tangents

    def logits(arrays, beta, qf, kf):
        return eqx.combine(arrays, kernel_static).logits(beta, qf, kf)

    s, ds = jax.jvp(logits, (kernel_arrays, beta, qf, kf), (d_arrays, d_beta, d_qf, d_kf))
    s = s + key_bias[None, :]
    ds = ds + d_bias[None, :]
    if causal:
        seen = jnp.arange(kf.shape[0])[None, :] <= idx[:, None]
        s = jnp.where(seen, s, -jnp.inf)
        ds = jnp.where(seen, ds, 0)
    if op == "sum":
        p = jnp.exp(s)
        return p @ values, (p * ds) @ values + p @ d_values
    top = jnp.maximum(jnp.max(s, axis=-1, keepdims=True), jnp.finfo(s.dtype).min)
    p = jnp.exp(s - top)
    if op == "lse":
        total = jnp.sum(p, axis=-1)
        safe = jnp.where(total > 0, total, 1)
        return jnp.log(total) + top[:, 0], jnp.sum(p * ds, axis=-1) / safe
    out = p @ values
    total = out[:, -1:]
    safe = jnp.where(total > 0, total, 1)
    rows = out[:, :-1] / safe
    d_out = (p * ds) @ values + p @ d_values
    return rows, (d_out[:, :-1] - rows * d_out[:, -1:]) / safe


def _map_tiles(op, kernel, beta, qf, idx, kf, key_bias, values, causal, tile):
    """`_tile` over tiles of `tile` queries (the last one padded), one at a time."""
    nq = qf.shape[0]
    pad = -nq % tile
    if pad:
        # padded rows are zero features at the last position: finite, and dropped below
        qf = jnp.concatenate([qf, jnp.zeros((pad, qf.shape[1]), qf.dtype)])
        idx = jnp.concatenate([idx, jnp.full((pad,), idx[-1], idx.dtype)])
    kernel_arrays, kernel_static = eqx.partition(kernel, eqx.is_inexact_array)

    # Without saved residuals the backward pass recomputes the tile from its queries.
    @jax.checkpoint
    def one(q, i, kernel_arrays, beta, kf, key_bias, values):
        return _tile(op, causal, kernel_static, kernel_arrays, beta, q, kf, key_bias, values, i)

    tiles = (qf.reshape(-1, tile, qf.shape[1]), idx.reshape(-1, tile))
    out = jax.lax.map(lambda a: one(*a, kernel_arrays, beta, kf, key_bias, values), tiles)
    return out.reshape((nq + pad,) + out.shape[2:])[:nq]


def tiled_rows(op, kernel, beta, qf, kf, key_bias, values, *, causal: bool, tile: int):
    """`tile_rows` on every query, `tile` queries at a time; causal rows skip the keys
    above the diagonal chunk by chunk (module docstring). Equal to the direct formula on all
    rows at once, up to rounding, with its derivatives."""
    nq = qf.shape[0]
    idx = jnp.arange(nq)
    tiles = -(-nq // tile)
    if not causal or tiles == 1:
        return _map_tiles(op, kernel, beta, qf, idx, kf, key_bias, values, causal, tile)
    chunks = min(CAUSAL_CHUNKS, tiles)
    outs = []
    for c in range(chunks):
        first, last = c * tiles // chunks * tile, min((c + 1) * tiles // chunks * tile, nq)
        # row i sees keys j <= i < last: the keys past the chunk's last row never count
        vals = None if values is None else values[:last]
        outs.append(
            _map_tiles(
                op,
                kernel,
                beta,
                qf[first:last],
                idx[first:last],
                kf[:last],
                key_bias[:last],
                vals,
                causal,
                tile,
            )
        )
    return jnp.concatenate(outs)
