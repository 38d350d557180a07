r"""How an attention operator sums over keys: directly, or by a harmonic expansion.

`Direct()` reduces every query against every key: $O(n^2)$ kernel values, exact to rounding
(the blocked reductions of `_reduce`). `Expansion(tol)` writes the kernel, for features on a
circle or a 2-sphere, as a truncated sum of products of harmonics (`_harmonics`),

$$ e^{\beta \langle q, k\rangle} \approx e^{z}\sum_{l \le L} c_l(z) \sum_m Y_{lm}(\hat q)
   Y_{lm}(\hat k), \qquad z = \beta |q| |k|, $$

so that $\sum_j w_j k(x_i, x_j) v_j$ needs only the moments $M_{lm} = \sum_j w_j
Y_{lm}(\hat k_j) v_j$: $O(n L^2)$ on $S^2$ and $O(n L)$ on $S^1$ instead of $O(n^2)$. Softmax
takes numerator and denominator from the same moments (a column of ones among the values);
causal attention uses prefix sums of block moments plus a direct sum inside the block of
the query, so it stays $O(n L^2 + n B)$. `Auto(tol)` picks the cheaper of the two from the
cloud's size, which is static under `jit`.

**Where it applies.** The dot-product and L2 kernels with softmax or unnormalized rows,
when the bilinear part $\langle Qx, Ky\rangle = \langle K^\top Q x, y\rangle$ lives in
dimension 2 or 3: tokens in $\mathbb{R}^d$, $d \in \{2, 3\}$, with any $Q, K$ (features
$q = K^\top Q x$, $k = y$; this is the change of variables that makes a rank $\le 3$
$Q^\top K$ three-dimensional), or key dimension $d_k \in \{2, 3\}$ (features $Qx, Ky$). The
key features must lie on one sphere $|k_j| = b$ (tokens on $S^{d-1}$, the setting of
Geshkovski et al. 2023); query features may have any norm (their Bessel coefficients are
evaluated per query). The L2 kernel $-\beta|Qx - Ky|^2/2$ differs from the dot product by a
per-query factor (cancelled by softmax) and a per-key factor (folded into the weights).
Since keys are modelled on their sphere, derivatives with respect to the key tokens are
exact in tangent directions (the only ones a flow on the sphere uses) and those of the
kernel restricted to the sphere in the radial one; derivatives in the queries, $\beta$,
$Q$ and $K$ (when $d \le d_k$) are exact.

**Truncation, a priori.** Both series sum to one at $\hat q = \hat k$ with positive terms,
so after degree $L$ the kernel error is at most $\varepsilon_L(z)\, e^{z}$ uniformly in the
angle, $\varepsilon_L$ the coefficient tail; the order is the least $L$ with
$\varepsilon_L(z_{max}) \le$ `tol`, $z_{max} = \beta \max_h \|K_h^\top Q_h\|_2$ for unit
tokens, fixed when the `Attention` is built (shapes must be static under `jit`).

**Truncation, a posteriori.** For softmax row $i$, with $D_i = \sum_j w_j e^{s_{ij} - z_i}$,
$|\delta v_i| \le (\varepsilon_L(z_i) + \eta_i) (\max_j |v_j| + |v_i|) / D_i$, and for
unnormalized rows $|\delta v_i| \le e^{z_i}(\varepsilon_L(z_i) + \eta_i) \max_j |v_j|$,
where $\eta_i = e^{\beta |q_i| (b - \min_j |k_j|)} - 1$ bounds the error of putting every key
on the sphere of radius $b = \max_j |k_j|$ (zero on the sphere, a few ulps after a solve).
`Attention.error_estimate` returns this bound per token; it holds at the actual $\beta$
even when $\beta$ changed after the order was chosen.

**Why harmonics, and float32.** A Taylor expansion in $\langle q, k\rangle$ needs degree
$\approx z + \sqrt{2z\log(1/\mathrm{tol})}$ (a Poisson tail) and so $O(z^3)$ tensor moments
in three dimensions, $\approx 57\,000$ at $\beta = 36$; the harmonic series has bandwidth
$\sqrt z$ (the kernel's angular width is $z^{-1/2}$) and needs $(L + 1)^2 = O(z \log(1/
\mathrm{tol}))$ moments, 1089 at $\beta = 36$, tol $10^{-6}$. In float32 its coefficients
are the exponentially scaled $e^{-z} i_l(z) \in (0, 1]$ from positive ratio recurrences, so
nothing overflows at any $\beta$ and nothing cancels in the coefficients; the harmonics come
from the stable normalised Legendre recurrence; every summand is bounded by the kernel's
maximum, so the rounding error is a few ulps of $e^{z}\sum_j w_j |v_j|$, i.e. of order
$\epsilon_{32} L / D_i$ relative to the field (measured at $n = 65536$ on uniform clouds,
tol $10^{-6}$: $1.0 \times 10^{-5}$, $6.5 \times 10^{-6}$, $4.1 \times 10^{-6}$ at
$\beta = 4, 9, 36$). Rows that see only far keys ($D_i \ll 1$) lose accuracy in both the
direct and the expanded sum of float32; the a posteriori bound says when.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_concrete
from ._harmonics import BASES, order_for, start_degree
from ._kernels import L2, DotProduct
from ._normalizations import Softmax, Unnormalized
from ._positions import with_positions

__all__ = ["AbstractEvaluation", "Auto", "Direct", "Expansion"]

# Tokens per block of harmonics: about this many feature values at once (16 MiB of float32).
_BLOCK_VALUES = 1 << 22
# Tokens per block of causal attention: the query's own block is summed directly (B^2 kernel
# values per block, n B in all), the earlier blocks through their prefix moments.
_CAUSAL_BLOCK = 256
# Cost model of `Auto`, in units of one kernel value of the direct sum (an exp and a few
# fused multiply-adds): one harmonic of one token (its recurrence step and its products with
# the moments) cost about two, measured once with benchmarks/bench_expansion.py (S^2,
# n = 65536, beta = 4, L = 12: 3.1 ns per direct pair, 5.8 ns per harmonic unit below, on a
# loaded 2-core CPU).
_HARMONIC_COST = 2.0


class AbstractEvaluation(eqx.Module):
    """How `Attention` sums over keys. Subclasses: `Direct`, `Expansion`, `Auto`."""

    @abc.abstractmethod
    def resolved(self, kernel, normalization, Q, K, beta) -> AbstractEvaluation:
        """This evaluation with every choice that needs the operator made (called once by
        `Attention` when it is built): checks support and fixes the order."""

    @abc.abstractmethod
    def rows(
        self, kernel, normalization, beta, Q, K, queries, context, logw, values, *, causal, block
    ):
        """$\\sum_j A_{ij}$ `values[j]` for one head's $Q, K$ `(d_k, d)` at each query."""

    @abc.abstractmethod
    def estimate(
        self, kernel, normalization, beta, Q, K, queries, context, logw, values, *, causal, block
    ):
        """A bound on the error of `rows` per query, `(q,)` (zero for exact sums)."""


class Direct(AbstractEvaluation):
    """The blocked direct sum over all pairs: $O(n^2)$, exact to rounding. The default."""

    def resolved(self, kernel, normalization, Q, K, beta):
        return self

    def rows(
        self, kernel, normalization, beta, Q, K, queries, context, logw, values, *, causal, block
    ):
        # a positional kernel (rotary) reads each token's index as a last feature
        qf = with_positions(kernel, queries @ Q.T)
        kf = with_positions(kernel, context @ K.T)
        return normalization.rows(kernel, beta, qf, kf, logw, values, causal=causal, block=block)

    def estimate(
        self, kernel, normalization, beta, Q, K, queries, context, logw, values, *, causal, block
    ):
        return jnp.zeros(queries.shape[0], jnp.result_type(queries, Q, beta))


class Expansion(AbstractEvaluation):
    r"""Harmonic expansion of the kernel on $S^1$ or $S^2$ (see the module docstring):
    $O(n L^2)$, error at most `tol` times the kernel's maximum.

    Args:
        tol: bound on the truncation error of the kernel relative to its maximum
            $e^{\beta|q||k|}$, uniform over pairs; the field error of each token is bounded
            by `Attention.error_estimate`.
        order: the degree $L$; `None` chooses the least $L$ that meets `tol` at the
            operator's $\beta$ and $Q, K$ when the `Attention` is built (they must then be
            concrete, not traced).
        start: where the Bessel ratio recurrence starts (chosen with the order).

    Raises `ValueError` when the `Attention` is built with a kernel, normalization or
    dimension it does not cover.
    """

    tol: float = eqx.field(default=1e-6, static=True)
    order: int | None = eqx.field(default=None, static=True)
    start: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if not isinstance(self.tol, float | int) or not 0 < self.tol < 1:
            raise ValueError(f"Expansion tol must be a number in (0, 1); got {self.tol!r}")
        if self.order is not None and (not isinstance(self.order, int) or self.order < 0):
            raise ValueError(
                f"Expansion order must be a non-negative int or None; got {self.order!r}"
            )

    def resolved(self, kernel, normalization, Q, K, beta):
        reason = _unsupported(kernel, normalization, Q)
        if reason is not None:
            raise ValueError(f"Expansion does not apply: {reason}; use Direct()")
        return _with_order(self, Q, K, beta)

    def rows(
        self, kernel, normalization, beta, Q, K, queries, context, logw, values, *, causal, block
    ):
        return _expand(
            self, kernel, normalization, beta, Q, K, queries, context, logw, values, causal, block
        )[0]

    def estimate(
        self, kernel, normalization, beta, Q, K, queries, context, logw, values, *, causal, block
    ):
        return _expand(
            self, kernel, normalization, beta, Q, K, queries, context, logw, values, causal, block
        )[1]


class Auto(AbstractEvaluation):
    """`Expansion(tol)` where it applies and is cheaper than `Direct()` by a cost model of
    the cloud sizes (static under `jit`), `Direct()` otherwise.

    Direct costs about $n_q n_k$ kernel values (half that when causal); the expansion
    $(n_q + n_k)(L + 1)^2$ harmonics (times $(e + 1)$ for the products with the moments,
    plus a direct block when causal). Building an `Attention` with `Auto` where no
    expansion applies (Sinkhorn, $d_k, d > 3$) gives `Direct()`.
    """

    tol: float = eqx.field(default=1e-6, static=True)
    order: int | None = eqx.field(default=None, static=True)
    start: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if not isinstance(self.tol, float | int) or not 0 < self.tol < 1:
            raise ValueError(f"Auto tol must be a number in (0, 1); got {self.tol!r}")
        if self.order is not None and (not isinstance(self.order, int) or self.order < 0):
            raise ValueError(f"Auto order must be a non-negative int or None; got {self.order!r}")

    def resolved(self, kernel, normalization, Q, K, beta):
        if _unsupported(kernel, normalization, Q) is not None:
            return Direct()
        return _with_order(self, Q, K, beta)

    def _choice(self, Q, queries, context, values, causal, block) -> AbstractEvaluation:
        nq, nk = queries.shape[0], context.shape[0]
        size = BASES[_feature_dim(Q)].size(self.order)
        width = values.shape[1] + 1
        direct = nq * nk / (2 if causal else 1)
        expansion = _HARMONIC_COST * (nq + nk) * size * (1 + width / 4)
        if causal:
            expansion += nq * min(_block(block, size), _CAUSAL_BLOCK)
        if expansion < direct:
            return Expansion(self.tol, self.order, self.start)
        return Direct()

    def rows(self, kernel, normalization, beta, Q, K, queries, context, logw, values, **kw):
        choice = self._choice(Q, queries, context, values, kw["causal"], kw["block"])
        args = (kernel, normalization, beta, Q, K, queries, context, logw, values)
        return choice.rows(*args, **kw)

    def estimate(self, kernel, normalization, beta, Q, K, queries, context, logw, values, **kw):
        choice = self._choice(Q, queries, context, values, kw["causal"], kw["block"])
        args = (kernel, normalization, beta, Q, K, queries, context, logw, values)
        return choice.estimate(*args, **kw)


def _feature_dim(Q) -> int:
    """Dimension of the features the expansion works in: $d$ through the change of
    variables $q = K^\\top Q x$, or $d_k$ when that is smaller."""
    d_k, d = Q.shape[-2], Q.shape[-1]
    return min(d, d_k)


def _unsupported(kernel, normalization, Q) -> str | None:
    if type(kernel) not in (DotProduct, L2):
        return f"no harmonic expansion is known for the {type(kernel).__name__} kernel"
    if type(normalization) not in (Softmax, Unnormalized):
        return f"{type(normalization).__name__} normalization has no expanded form"
    r = _feature_dim(Q)
    if r not in BASES:
        return (
            f"the kernel's features have dimension min(d, d_k) = {r}; the expansion needs "
            "2 (circle) or 3 (sphere)"
        )
    return None


def _z_max(Q, K, beta) -> float:
    """$\\beta |q| |k|$ bound for unit tokens, over heads (concrete arrays only)."""
    Q, K = np.asarray(Q, np.float64), np.asarray(K, np.float64)
    d_k, d = Q.shape[-2], Q.shape[-1]
    if d <= d_k:
        scale = max(np.linalg.norm(K[h].T @ Q[h], 2) for h in range(Q.shape[0]))
    else:
        scale = max(np.linalg.norm(Q[h], 2) * np.linalg.norm(K[h], 2) for h in range(Q.shape[0]))
    return float(beta) * float(scale)


def _with_order(evaluation, Q, K, beta):
    concrete = is_concrete(Q) and is_concrete(K) and is_concrete(beta)
    if concrete:
        z = _z_max(Q, K, beta)
    elif evaluation.order is None:
        raise ValueError(
            f"{type(evaluation).__name__}(order=None) chooses its order from beta, Q and K "
            "when the attention is built, and they are traced here: pass order= explicitly"
        )
    dim = _feature_dim(Q)
    order = evaluation.order
    if order is None:
        order = order_for(dim, z, float(evaluation.tol))
    start = evaluation.start
    if start is None:
        start = start_degree(order, z) if concrete else 3 * order + 40
    return type(evaluation)(evaluation.tol, order, start)


def _block(block, size) -> int:
    if block is not None:
        return block
    return max(16, _BLOCK_VALUES // (4 * size))


def _safe_norm(u):
    sq = jnp.sum(u * u, axis=-1)
    positive = sq > 0
    # the inner where keeps the gradient finite at a zero feature
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)
    return norm, u / jnp.where(positive, norm, 1)[:, None]


def _blocks(a, size, fill=0):
    """`a` padded along axis 0 to a multiple of `size` and reshaped to `(-1, size, ...)`."""
    n = a.shape[0]
    pad = -n % size
    if pad:
        a = jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], fill, a.dtype)])
    return a.reshape((-1, size) + a.shape[1:])


def _expand(ev, kernel, normalization, beta, Q, K, queries, context, logw, values, causal, block):
    """Rows and their a posteriori error bound by the harmonic expansion (module docstring)."""
    basis = BASES[_feature_dim(Q)]
    order, start = ev.order, ev.start
    size = basis.size(order)
    degrees = basis.degrees(order)
    softmax = isinstance(normalization, Softmax)
    dtype = jnp.result_type(queries, Q, beta)
    nq, nk = queries.shape[0], context.shape[0]

    qx, ky = queries @ Q.T, context @ K.T  # the kernel's own features
    d_k, d = Q.shape
    if d <= d_k:
        # <Qx, Ky> = <K^T Q x, y>: the expansion works in the tokens' d dimensions
        qf, kf = queries @ (K.T @ Q).T, context
    else:
        qf, kf = qx, ky
    a, q_unit = _safe_norm(qf.astype(dtype))
    b_all, k_unit = _safe_norm(kf.astype(dtype))
    b = jnp.max(b_all)
    b_min = jnp.min(b_all)

    # per-key log factors: the weight, and for L2 the key's own -beta |Ky|^2 / 2
    logu = logw.astype(dtype)
    if isinstance(kernel, L2):
        logu = logu - 0.5 * beta * jnp.sum(ky * ky, axis=-1)
    top = jax.lax.stop_gradient(jnp.max(logu))
    top = jnp.where(jnp.isfinite(top), top, 0)
    u = jnp.exp(logu - top)  # in (0, 1]; zero for a removed token

    # log of the per-query factor that the scaled expansion leaves out
    z = beta * a * b
    lam = z + top
    if isinstance(kernel, L2):
        lam = lam - 0.5 * beta * jnp.sum(qx * qx, axis=-1)

    vals = values.astype(dtype)
    if softmax:
        vals = jnp.concatenate([vals, jnp.ones((nk, 1), dtype)], axis=1)
    # the block never exceeds the cloud; causal blocks are also summed directly (B^2 each)
    bsz = min(_block(block, size), max(nq, nk))
    if causal and block is None:
        bsz = min(bsz, _CAUSAL_BLOCK)

    def moments(blk):
        unit, weight, v = blk
        return basis.features(unit, order).T @ (weight[:, None] * v)

    key_blocks = (_blocks(k_unit, bsz), _blocks(u, bsz), _blocks(vals, bsz))
    block_moments = jax.lax.map(moments, key_blocks)  # (blocks, size, width)

    def expanded(unit, zq, m):
        coef, tail = basis.coefficients(zq, order, start)
        phi = basis.features(unit, order) * coef[:, degrees]
        return phi @ m, tail

    if causal:
        # moments of all earlier blocks (exclusive prefix sums), then the query's own block
        # directly, causally masked, on the exact kernel scaled by the same e^{-lambda_i}
        prefix = jnp.cumsum(block_moments, axis=0) - block_moments
        prior_mass = jnp.cumsum(jnp.sum(_blocks(u, bsz), axis=1)) - jnp.sum(_blocks(u, bsz), axis=1)

        def causal_block(blk):
            unit, zq, lq, qxb, kxb, lwb, vb, m, ub, mass = blk
            far, tail = expanded(unit, zq, m)
            s = kernel.logits(beta, qxb, kxb) + lwb[None, :] - lq[:, None]
            idx = jnp.arange(bsz)
            s = jnp.where(idx[None, :] <= idx[:, None], s, -jnp.inf)
            near = jnp.exp(s) @ vb
            # only the earlier blocks' mass is expanded; the block itself is exact
            return far + near, tail, jnp.broadcast_to(mass, ub.shape)

        blk = (
            _blocks(q_unit, bsz),
            _blocks(z, bsz),
            _blocks(lam, bsz),
            _blocks(qx, bsz),
            _blocks(ky, bsz),
            _blocks(logw.astype(dtype), bsz, -jnp.inf),
            _blocks(vals, bsz),
            prefix,
            _blocks(u, bsz),
            prior_mass,
        )
        out, tail, mass = jax.lax.map(causal_block, blk)
        out, tail, mass = (t.reshape((-1,) + t.shape[2:])[:nq] for t in (out, tail, mass))
    else:
        total = jnp.sum(block_moments, axis=0)
        out, tail = jax.lax.map(
            lambda blk: expanded(blk[0], blk[1], total), (_blocks(q_unit, bsz), _blocks(z, bsz))
        )
        out, tail = (t.reshape((-1,) + t.shape[2:])[:nq] for t in (out, tail))
        mass = jnp.broadcast_to(jnp.sum(u), (nq,))

    # keys put on the sphere of radius b: |e^{beta a b_j t} - e^{beta a b t}| <= e^z eta
    eta = jnp.expm1(beta * a * (b - b_min))
    vmax = jnp.max(jnp.sqrt(jnp.sum(values.astype(dtype) ** 2, axis=-1)))
    if softmax:
        total = out[:, -1]
        field = out[:, :-1] / jnp.where(total > 0, total, 1)[:, None]
        speed = jnp.sqrt(jnp.sum(field**2, axis=-1))
        bound = (tail + eta) * mass * (vmax + speed)
        estimate = jnp.where(total > 0, bound / jnp.where(total > 0, total, 1), jnp.inf)
        # a row that sees no mass moves with velocity zero, as in the direct sum
        estimate = jnp.where(mass > 0, estimate, 0)
        return field, estimate
    scale = jnp.exp(lam)
    field = out * scale[:, None]
    return field, scale * (tail + eta) * mass * vmax
