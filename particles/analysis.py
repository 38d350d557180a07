r"""Metrics of clouds and trajectories: pure functions, jit- and vmap-compatible.

Each function takes a cloud `(n, d)`; apply it to a trajectory with `jax.vmap` (or the
`over_time` helper).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .attention import _log_weights, _reduce_rows


def interaction_energy(
    x: Float[Array, "n d"], beta, weights: Float[Array, " n"] | None = None
) -> Float[Array, ""]:
    r"""Interaction energy $E_\beta = \frac{1}{2\beta} \sum_{i,j} w_i w_j e^{\beta\langle x_i, x_j\rangle}$.

    With $Q = K = V = I$ on the sphere, the unnormalized flow (USA) is the gradient ascent
    $\dot x_i = P_{x_i} \nabla_{x_i} E_\beta / w_i$, and softmax attention (SA) ascends it in
    a modified metric, so $E_\beta$ never decreases for either (Geshkovski, Letrouit,
    Polyanskiy, Rigollet 2023, sections 3.1 and 3.3). With uniform weights this is
    $\frac{1}{2\beta n^2}\sum_{i,j} e^{\beta\langle x_i, x_j\rangle}$, the normalisation of
    that paper. Evaluated as a log-sum-exp in blocks, so it is finite whenever the result
    is.
    """
    n = x.shape[0]
    logw = _log_weights(weights, n, x.dtype)
    rows = _reduce_rows("lse", "dot", beta, x, x, logw, None, causal=False, block=None)
    return jnp.exp(jax.nn.logsumexp(rows + logw)) / (2 * beta)


def mean_pairwise_cosine(x: Float[Array, "n d"]) -> Float[Array, ""]:
    r"""Mean of $\cos\angle(x_i, x_j)$ over pairs $i \ne j$; 1 when all tokens align.

    Uses $\sum_{i \ne j} \langle u_i, u_j\rangle = |\sum_i u_i|^2 - n$ for unit $u_i$: $O(nd)$.
    """
    n = x.shape[0]
    u = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    total = jnp.sum(jnp.sum(u, axis=0) ** 2)
    return jnp.where(n > 1, (total - n) / jnp.maximum(n * (n - 1), 1), 1.0)


def cluster_labels(x: Float[Array, "n d"], tol: float = 1e-2) -> Int[Array, " n"]:
    """Connected components of the graph joining tokens closer than `tol` (Euclidean).

    Each token gets the smallest index in its component, so labels are canonical: two
    clouds that are permutations of one another give permuted labels.
    """
    n = x.shape[0]
    sq = jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    adjacent = sq < tol**2

    def spread(state):
        labels, _ = state
        # each token takes the smallest label among its neighbours; a fixed point is reached
        # after at most (graph diameter) rounds
        new = jnp.min(jnp.where(adjacent, labels[None, :], n), axis=1)
        return new, jnp.any(new != labels)

    labels, _ = jax.lax.while_loop(lambda s: s[1], spread, (jnp.arange(n), jnp.array(True)))
    return labels


def cluster_count(x: Float[Array, "n d"], tol: float = 1e-2) -> Int[Array, ""]:
    """Number of clusters: connected components of the graph of tokens closer than `tol`."""
    labels = cluster_labels(x, tol)
    return jnp.sum(labels == jnp.arange(x.shape[0]))


def over_time(metric, xs: Float[Array, "T n d"], *args, **kwargs) -> Array:
    """Apply a per-cloud metric to every frame of a trajectory: `metric(xs[t], *args)`."""
    return jax.vmap(lambda x: metric(x, *args, **kwargs))(xs)


def _lexicographic_keys(x, comp):
    """Per component: the lexicographic rank of its smallest token. Depends on positions
    only, never on token order (equal points are one cluster whenever tol > 0)."""
    n = x.shape[0]
    order = jnp.lexsort(tuple(x.T[::-1]))
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return jax.ops.segment_min(rank, comp, num_segments=n)


def _number_in_key_order(flags, keys, start):
    """`start, start + 1, ...` for the flagged components, in increasing key order."""
    n = flags.shape[0]
    marks = jnp.zeros(n, jnp.int32).at[jnp.where(flags, keys, n)].set(1, mode="drop")
    return start + jnp.cumsum(marks)[keys] - 1


def _match_clusters(prev_comp, prev_labels, comp, keys, fresh):
    """Labels for the components `comp` of a frame, given the previous frame's components
    `prev_comp` and their labels: each component claims the label of the previous component
    it shares most tokens with (ties: the smaller label, i.e. the older cluster); when several
    claim the same one it goes to the largest overlap (ties: the smaller key) and the others
    take fresh labels from `fresh` on, in key order."""
    n = comp.shape[0]
    idx = jnp.arange(n)
    # count the tokens of every (component, previous component) pair by sorting the pairs
    order = jnp.lexsort((prev_comp, comp))
    c_sorted, q_sorted = comp[order], prev_comp[order]
    starts = jnp.concatenate(
        [jnp.array([True]), (c_sorted[1:] != c_sorted[:-1]) | (q_sorted[1:] != q_sorted[:-1])]
    )
    segment = jnp.cumsum(starts) - 1
    counts = jax.ops.segment_sum(jnp.ones(n, jnp.int32), segment, num_segments=n)
    shared = jnp.zeros(n, jnp.int32).at[order].set(counts[segment])
    parent_label = prev_labels[prev_comp]
    big = jnp.iinfo(jnp.int32).max
    # the parent each component claims: most shared tokens, then the smaller label
    best = jax.ops.segment_max(shared, comp, num_segments=n)
    candidate = shared == best[comp]
    claim_label = jax.ops.segment_min(jnp.where(candidate, parent_label, big), comp, num_segments=n)
    claim_q = jax.ops.segment_min(
        jnp.where(candidate & (parent_label == claim_label[comp]), prev_comp, big),
        comp,
        num_segments=n,
    )
    # arrays indexed by component are read at representatives (comp[i] == i)
    is_rep = comp == idx
    claim_q = jnp.where(is_rep, claim_q, 0)
    # a parent claimed by several components (a split) keeps its label for the largest overlap
    overlap = jnp.where(is_rep, best, -1)
    top = jax.ops.segment_max(overlap, claim_q, num_segments=n)
    winner = jax.ops.segment_min(
        jnp.where(is_rep & (overlap == top[claim_q]), keys, big), claim_q, num_segments=n
    )
    keeps = is_rep & (winner[claim_q] == keys)
    new = is_rep & ~keeps
    rep_label = jnp.where(keeps, claim_label, _number_in_key_order(new, keys, fresh))
    return rep_label[comp], fresh + jnp.sum(new, dtype=jnp.int32)


def track_clusters(xs: Float[Array, "T n d"], tol: float = 1e-2) -> Int[Array, "T n"]:
    """Cluster labels that follow each cluster from frame to frame of a trajectory.

    Clusters are the connected components of `cluster_labels(xs[t], tol)`. The first frame
    numbers its clusters 0, 1, ... in lexicographic order of their smallest point. At each
    next frame a cluster takes the label of the previous cluster it shares most tokens with,
    so a merged cluster keeps the label of its larger parent (equal parents: the smaller,
    older label); when a cluster splits, the part sharing most tokens keeps the label and the
    others get fresh labels, numbered on from the largest label used so far. Labels are never
    reused, so a label names one cluster for the whole trajectory (colour by it).

    Every choice depends on positions, never on token order, so permuting the tokens permutes
    the labels: `track_clusters(xs[:, p]) == track_clusters(xs)[:, p]`.

    Jittable and vmappable: a `lax.scan` over frames, memory $O(n^2)$ per frame (the distance
    graph of `cluster_labels`), not per trajectory.

    Args:
        xs: trajectory `(T, n, d)`.
        tol: tokens closer than `tol` (Euclidean) are in the same cluster.

    Returns:
        int32 labels `(T, n)`.
    """
    xs = jnp.asarray(xs)
    if xs.ndim != 3:
        raise ValueError(f"xs must be a trajectory (T, n, d); got shape {xs.shape}")
    return _track_clusters(xs, tol)


@jax.jit
def _track_clusters(xs, tol):
    # jitted once per shape: the eager scan would recompile its body at every call
    n = xs.shape[1]
    comp0 = cluster_labels(xs[0], tol)
    is_rep = comp0 == jnp.arange(n)
    labels0 = _number_in_key_order(is_rep, _lexicographic_keys(xs[0], comp0), 0)[comp0]

    def step(carry, x):
        prev_comp, prev_labels, fresh = carry
        comp = cluster_labels(x, tol)
        keys = _lexicographic_keys(x, comp)
        labels, fresh = _match_clusters(prev_comp, prev_labels, comp, keys, fresh)
        return (comp, labels, fresh), labels

    carry = (comp0, labels0.astype(jnp.int32), jnp.sum(is_rep, dtype=jnp.int32))
    _, rest = jax.lax.scan(step, carry, xs[1:])
    return jnp.concatenate([labels0[None], rest], axis=0).astype(jnp.int32)


def fit_power_law(x, y, *, floor: float = 0.0) -> tuple[float, float]:
    r"""Least-squares fit of $y = C x^p$ in log-log coordinates; returns `(p, C)`.

    Points with `y <= floor` are left out: below a rounding or reference-error floor they
    would flatten the fit. Host-side (NumPy): call it on measured results, not under `jit`.

    Raises:
        ValueError: shapes differ, `x` is not positive, `y` is not finite, or fewer than two
            points lie above `floor`.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d arrays of the same length; got {x.shape}, {y.shape}")
    if np.any(x <= 0) or not np.all(np.isfinite(y)) or (floor <= 0 and np.any(y <= 0)):
        raise ValueError("x and y must be positive and finite for a log-log fit")
    keep = y > floor
    if keep.sum() < 2:
        raise ValueError(f"need at least two points above floor={floor}; got {keep.sum()}")
    slope, intercept = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return float(slope), float(np.exp(intercept))
