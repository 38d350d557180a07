r"""The maximum-entropy view of softmax attention, and the entropy of attention rows.

Vuckovic, Baratin, Tachet des Combes (*A Mathematical Theory of Attention*, 2020) derive
softmax attention from a maximum-entropy principle: among the distributions $p$ on the
keys with a prescribed expected score $\sum_j p_j s_{ij} = E$, the one closest to the
prior $w$ (maximal relative entropy $-\mathrm{KL}(p\,\|\,w)$) is the Gibbs distribution

$$ p_j = \frac{w_j e^{\beta s_{ij}}}{Z_i(\beta)}, \qquad Z_i(\beta) = \sum_j w_j e^{\beta s_{ij}}, $$

with the inverse temperature $\beta$ the Lagrange multiplier of the constraint. The dual is
convex in $\beta$, $D_i(\beta) = \log Z_i(\beta) - \beta E$, with $D_i' = E_\beta - E$ and
$D_i'' = \mathrm{Var}_\beta(s) \ge 0$, so temperature and expected score determine each other
(`expected_score`, `maxent_beta`), and the optimal value is $\max(-\mathrm{KL}) = \log Z_i -
\beta E_\beta$ (`maxent_value`).

The entropy $H_i = -\sum_j A_{ij}\log A_{ij}$ of each attention row (`row_entropy`,
`attention_entropy`) measures how many tokens a token listens to, $e^{H_i}$: $\log n$ for a
uniform row, $\log m$ for a token inside a tight, well-separated cluster of $m$ at large
$\beta$, and $\log n$ again once everything has merged into one cluster (all scores equal).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..attention import L2, Additive, DotProduct, Rotary, log_weights
from ..attention._positions import with_positions

__all__ = [
    "attention_entropy",
    "attention_scores",
    "expected_score",
    "maxent_beta",
    "maxent_value",
    "row_entropy",
]

# kernels whose logits are beta times a score: s_beta(q, k) = beta s(q, k)
_TEMPERED = (DotProduct, L2, Additive)


def row_entropy(A: Float[Array, "... n"]) -> Float[Array, "..."]:
    r"""Shannon entropy $H = -\sum_j A_j \log A_j$ of each row ($0 \log 0 = 0$)."""
    positive = A > 0
    return -jnp.sum(jnp.where(positive, A * jnp.log(jnp.where(positive, A, 1)), 0), axis=-1)


def attention_entropy(attention, x: Float[Array, "n d"], weights=None) -> Float[Array, "h n"]:
    """Entropy of every row of every head's attention matrix (`attention.matrix`, dense:
    small clouds). The normalization must give rows that sum to one."""
    if not attention.normalization.sums_to_one:
        raise ValueError(
            f"{type(attention.normalization).__name__} rows do not sum to one: their entropy "
            "is not defined"
        )
    return row_entropy(attention.matrix(x, weights))


def attention_scores(attention, x: Float[Array, "n d"]) -> Float[Array, "h n n"]:
    r"""The scores $s_{ij}$ with logits $\beta s_{ij}$, per head: the constraint of the
    maximum-entropy problem. Exists for kernels whose logits are linear in $\beta$
    (`DotProduct`, `L2`, `Additive`, and `Rotary` around them); raises
    `NotImplementedError` naming any other (`Linear` and `Performer` put $\sqrt\beta$ inside
    their features)."""
    kernel = attention.kernel
    inner = kernel.kernel if isinstance(kernel, Rotary) else kernel
    if not isinstance(inner, _TEMPERED):
        raise NotImplementedError(
            "the maximum-entropy scores need logits linear in beta (DotProduct, L2, Additive, "
            f"Rotary of those); the {type(inner).__name__} kernel's are not"
        )
    one = jnp.ones((), jnp.result_type(x, attention.beta))

    def head(Q, K):
        qf = with_positions(kernel, x @ Q.T)
        kf = with_positions(kernel, x @ K.T)
        return kernel.logits(one, qf, kf)

    return jax.vmap(head)(attention.Q, attention.K)


def _log_prior(scores, weights):
    r"""$\log w_j$ with explicit leading axes, to add to a stack of score rows."""
    logw = log_weights(weights, scores.shape[-1], scores.dtype)
    return logw.reshape((1,) * (scores.ndim - 1) + logw.shape)


def _gibbs(scores, beta, weights):
    return jax.nn.softmax(beta * scores + _log_prior(scores, weights), axis=-1)


def expected_score(
    scores: Float[Array, "... n"], beta, weights: Float[Array, " n"] | None = None
) -> Float[Array, "..."]:
    r"""$E_\beta = \sum_j p_j s_j$ under the Gibbs row $p_j \propto w_j e^{\beta s_j}$, per row;
    increasing in $\beta$ (its derivative is the variance of $s$ under $p$)."""
    p = _gibbs(scores, beta, weights)
    return jnp.sum(jnp.where(p > 0, p * scores, 0), axis=-1)


def maxent_value(
    scores: Float[Array, "... n"], beta, weights: Float[Array, " n"] | None = None
) -> Float[Array, "..."]:
    r"""The optimal value of the maximum-entropy problem at the constraint $E_\beta$:
    $\max\{-\mathrm{KL}(p\,\|\,w) : \sum_j p_j s_j = E_\beta\} = \log Z(\beta) - \beta E_\beta$,
    per row (the dual at its minimum)."""
    log_z = jax.nn.logsumexp(beta * scores + _log_prior(scores, weights), axis=-1)
    return log_z - beta * expected_score(scores, beta, weights)


def maxent_beta(
    scores: Float[Array, " n"],
    target,
    weights: Float[Array, " n"] | None = None,
    *,
    iters: int = 200,
) -> Float[Array, ""]:
    r"""The inverse temperature $\beta$ whose Gibbs row has expected score `target`: the
    minimiser of the convex dual $\log Z(\beta) - \beta E$ (one row; `vmap` for several).

    Solved by bisection on the increasing $E_\beta$ (after doubling a bracket), so it is
    robust and jittable; a target at or beyond the largest (smallest) score with positive
    weight has no finite solution and gives $+\infty$ ($-\infty$).
    """
    logw = log_weights(weights, scores.shape[-1], scores.dtype)
    seen = jnp.isfinite(logw)
    top = jnp.max(jnp.where(seen, scores, -jnp.inf))
    bottom = jnp.min(jnp.where(seen, scores, jnp.inf))
    target = jnp.asarray(target, scores.dtype)
    f = lambda b: expected_score(scores, b, weights) - target  # noqa: E731

    def widen(state):
        hi, k = state
        return 2 * hi, k + 1

    one = jnp.ones((), scores.dtype)
    hi, _ = jax.lax.while_loop(
        lambda s: (jnp.minimum(f(s[0]), -f(-s[0])) < 0) & (s[1] < 60), widen, (one, 0)
    )

    def bisect(_, bracket):
        lo, hi = bracket
        mid = (lo + hi) / 2
        up = f(mid) < 0
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, bisect, (-hi, hi))
    beta = (lo + hi) / 2
    beta = jnp.where(target >= top, jnp.inf, beta)
    return jnp.where(target <= bottom, -jnp.inf, beta)
