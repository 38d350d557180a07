r"""Cluster metrics of a cloud and of a trajectory.

Tokens of the attention flow on the sphere gather into clusters (Geshkovski, Letrouit,
Polyanskiy, Rigollet, *The emergence of clusters in self-attention dynamics*, 2023): these
functions say how many, which, how large and when. A cluster is a connected component of
the graph joining tokens closer than `tol` (`cluster_labels`, `cluster_count`,
`cluster_sizes`, `cluster_centres`, followed in time by `track_clusters`); "one cluster" is
$\min_{i \ne j}\langle x_i, x_j\rangle > 1 - \varepsilon$ (`is_clustered`,
`time_to_one_cluster`); tolerance-free summaries are the effective rank of the Gram matrix,
the diameter and the aligned fraction. In $\mathbb{R}^d$ the rescaled tokens
$e^{-tV} x_i(t)$ (`rescaled`) converge to the vertices of a polytope. All are pure functions
of arrays, `jit` and `vmap` compatible.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._energy import interaction_energy, mean_pairwise_cosine


def effective_rank(x: Float[Array, "n d"]) -> Float[Array, ""]:
    r"""Effective rank of the Gram matrix $G_{ij} = \langle x_i, x_j\rangle$: a cluster count
    with no tolerance.

    $$ \operatorname{erank}(G) = \exp\Big(-\sum_k p_k \log p_k\Big), \qquad
       p_k = \lambda_k / \textstyle\sum_l \lambda_l, $$

    with $\lambda_k$ the eigenvalues of $G$ (the squared singular values of the cloud)
    (Roy and Vetterli, 2007). It is exactly 1 for a single cluster (rank one), exactly $k$
    for $k$ clusters of equal size whose centres are mutually orthogonal, close to $d$ for
    tokens uniform on $S^{d-1}$, and never more than $\min(n, d)$: in low dimension it
    measures how far the cloud is from one cluster rather than counting many clusters, and
    clusters whose centres are linearly dependent count once (two antipodal clusters on
    the circle have effective rank 1).
    It is invariant under permutations of the tokens and orthogonal maps of the space.
    "Rank collapse" of deep attention (Dong, Cordonnier, Loukas 2021) is its decay to 1.
    """
    s = jnp.linalg.svd(x, compute_uv=False)
    lam = s**2
    p = lam / jnp.sum(lam)
    # 0 log 0 = 0: zero eigenvalues (fewer clusters than dimensions) contribute nothing
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0))
    return jnp.exp(entropy)


def cluster_sizes(x: Float[Array, "n d"], tol: float = 1e-2) -> Int[Array, " n"]:
    """Size of each cluster of `cluster_labels(x, tol)`, indexed by label.

    Entry `k` is the number of tokens with label `k` (a label is the smallest token index
    of its cluster), zero when `k` labels no cluster; so the shape is a fixed `(n,)` under
    `jit` and `vmap`, `sum == n`, and the number of nonzero entries is `cluster_count`.
    """
    labels = cluster_labels(x, tol)
    return jax.ops.segment_sum(jnp.ones_like(labels), labels, num_segments=x.shape[0])


def cluster_centres(x: Float[Array, "n d"], tol: float = 1e-2) -> Float[Array, "n d"]:
    r"""Mean $\frac{1}{|C|}\sum_{i \in C} x_i$ of each cluster $C$ of `cluster_labels(x, tol)`,
    indexed by label (row `k` for the cluster labelled `k`, zero rows for labels not used).

    On the sphere the mean lies inside the ball, at distance at most `tol` from the sphere
    for a cluster of diameter `tol`; project it with `Sphere().retract` to get a point of
    $S^{d-1}$.
    """
    n = x.shape[0]
    labels = cluster_labels(x, tol)
    sums = jax.ops.segment_sum(x, labels, num_segments=n)
    sizes = jax.ops.segment_sum(jnp.ones((n,), x.dtype), labels, num_segments=n)
    return sums / jnp.maximum(sizes, 1)[:, None]


def diameter(x: Float[Array, "n d"]) -> Float[Array, ""]:
    r"""$\max_{i,j} |x_i - x_j|$: zero exactly when all tokens coincide."""
    sq = jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    return jnp.sqrt(jnp.max(sq))


def _pair_mask(n):
    return ~jnp.eye(n, dtype=bool)


def min_inner_product(x: Float[Array, "n d"]) -> Float[Array, ""]:
    r"""$\min_{i \ne j} \langle x_i, x_j\rangle$; 1 on the sphere exactly when all tokens
    coincide (and $+\infty$ for a single token, which is always one cluster)."""
    gram = x @ x.T
    return jnp.min(jnp.where(_pair_mask(x.shape[0]), gram, jnp.inf))


def aligned_fraction(x: Float[Array, "n d"], eps: float = 1e-3) -> Float[Array, ""]:
    r"""Fraction of the pairs $i < j$ with $\langle x_i, x_j\rangle > 1 - \varepsilon$.

    On the sphere $\langle x_i, x_j\rangle > 1 - \varepsilon$ means
    $|x_i - x_j| < \sqrt{2\varepsilon}$. For $k$ tight clusters of sizes $n_c$ it is
    $\sum_c n_c (n_c - 1) / (n (n - 1))$, so $1/k$ for $k$ equal large clusters and 1 for
    one cluster. A single token counts as aligned (fraction 1).
    """
    n = x.shape[0]
    gram = x @ x.T
    aligned = jnp.sum((gram > 1 - eps) & _pair_mask(n))
    return jnp.where(n > 1, aligned / max(n * (n - 1), 1), 1.0).astype(x.dtype)


def is_clustered(x: Float[Array, "n d"], eps: float = 1e-3) -> Bool[Array, ""]:
    r"""One cluster: every pair has $\langle x_i, x_j\rangle > 1 - \varepsilon$ (on the sphere,
    every pairwise distance below $\sqrt{2\varepsilon}$). The event whose probability the
    phase diagram of Geshkovski et al. (2023) shows."""
    return min_inner_product(x) > 1 - eps


def time_to_one_cluster(
    ts: Float[Array, " T"], xs: Float[Array, "T n d"], eps: float = 1e-3
) -> Float[Array, ""]:
    r"""First saved time from which the cloud stays one cluster (`is_clustered(x, eps)`)
    up to the last saved time; $+\infty$ if it is not one cluster at the end.

    "Stays" makes the answer robust to a cloud that touches the threshold and leaves it
    again. The resolution is that of `ts`.
    """
    ts = jnp.asarray(ts)
    one = jax.vmap(lambda x: is_clustered(x, eps))(xs)
    # suffix-and: stays[t] is true when every frame from t on is one cluster
    stays = jnp.flip(jnp.cumprod(jnp.flip(one).astype(jnp.int32))).astype(bool)
    first = jnp.argmax(stays)
    return jnp.where(stays[-1], ts[first], jnp.inf).astype(ts.dtype)


def alignment_to(x: Float[Array, "n d"], index: int = 0) -> Float[Array, ""]:
    r"""Mean cosine $\frac{1}{n-1}\sum_{i \ne k} \cos\angle(x_i, x_k)$ of the other tokens
    with token $k$ = `index`: 1 when every token has joined token $k$.

    Under a causal mask token 0 sees only itself, so on the sphere it does not move and the
    others are drawn to it: this is how far they have gone.
    """
    n = x.shape[0]
    u = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    cos = u @ u[index]
    return jnp.where(n > 1, (jnp.sum(cos) - cos[index]) / max(n - 1, 1), 1.0).astype(x.dtype)


def rescaled(
    ts: Float[Array, " T"], xs: Float[Array, "T n d"], V: Float[Array, "d d"] | None = None
) -> Float[Array, "T n d"]:
    r"""$z_i(t) = e^{-tV} x_i(t)$: Euclidean tokens with the linear growth of the value
    matrix removed ($e^{-t} x_i(t)$ for `V = None`, i.e. $V = I$).

    With $V = I$ and $Q^\top K \succ 0$ the $z_i$ converge to the vertices of a convex
    polytope; with a $V$ whose top eigenvalue is simple and positive they gather on a few
    hyperplanes orthogonal to its eigenvector (Geshkovski, Letrouit, Polyanskiy, Rigollet
    2023, sections 4 and 5).
    """
    ts = jnp.asarray(ts)
    if V is None:
        return jnp.exp(-ts)[:, None, None] * xs
    decay = jax.vmap(lambda t: jax.scipy.linalg.expm(-t * V))(ts)
    return jnp.einsum("tij,tnj->tni", decay, xs)


def cluster_series(
    xs: Float[Array, "T n d"], beta, *, tol: float = 1e-2, eps: float = 1e-3
) -> dict[str, Float[Array, " T"]]:
    r"""The cluster metrics of every frame of a trajectory, as a dict of `(T,)` series.

    Keys: `clusters` (`cluster_count` at `tol`), `effective_rank`, `diameter`,
    `mean_cosine`, `aligned_fraction` (at `eps`), `energy` ($E_\beta$ of
    `interaction_energy`, uniform weights). Jittable and vmappable (over trajectories).
    """

    def frame(x):
        return {
            "clusters": cluster_count(x, tol),
            "effective_rank": effective_rank(x),
            "diameter": diameter(x),
            "mean_cosine": mean_pairwise_cosine(x),
            "aligned_fraction": aligned_fraction(x, eps),
            "energy": interaction_energy(x, beta),
        }

    return jax.vmap(frame)(xs)


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
