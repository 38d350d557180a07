r"""Clustering of tokens: cluster metrics, the equiangular closed form, phase diagrams.

On the sphere $S^{d-1}$ with $Q = K = V = I$, almost every cloud collapses to one cluster,
and for large $\beta$ it first lingers near configurations of several clusters
(metastability) (Geshkovski, Letrouit, Polyanskiy, Rigollet, *The emergence of clusters in
self-attention dynamics*, 2023, and *A mathematical perspective on Transformers*, 2023).
This module measures that:

- metrics of one cloud, pure and `jit`/`vmap`-compatible: `effective_rank` (a
  tolerance-free cluster count), `cluster_sizes`, `cluster_centres`, `diameter`,
  `aligned_fraction`, `min_inner_product`, `is_clustered`, `alignment_to`; of a trajectory:
  `time_to_one_cluster`, `cluster_series` (all of them per frame), `rescaled`. The
  tolerance-based `cluster_count` / `cluster_labels`, `track_clusters` (labels that follow
  clusters from frame to frame), `mean_pairwise_cosine` and `interaction_energy` live in
  `particles.analysis` and are re-exported here, so that one import gives the toolkit;
- `equiangular_rate`: the exact ODE of the common inner product of an equiangular cloud;
- `phase_diagram`: the probability of being one cluster over $(t, \beta)$, from one
  vmapped ensemble of random starts over the whole $\beta$ grid.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._checks import check_choice, is_concrete
from ._simulate import SOLVERS, simulate
from .analysis import cluster_count as cluster_count
from .analysis import cluster_labels as cluster_labels
from .analysis import interaction_energy as interaction_energy
from .analysis import mean_pairwise_cosine as mean_pairwise_cosine
from .analysis import over_time as over_time
from .analysis import track_clusters as track_clusters
from .attention import SelfAttention
from .clouds import sphere_uniform
from .flows import AttentionFlow
from .spaces import Sphere

# ---------------------------------------------------------------------------------------
# metrics of one cloud


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


# ---------------------------------------------------------------------------------------
# the equiangular closed form


def equiangular_rate(
    rho: Float[Array, "..."], beta, n: int, normalization: str = "softmax"
) -> Float[Array, "..."]:
    r"""$\dot\rho$ for an equiangular cloud on the sphere, $Q = K = V = I$, uniform weights.

    If $n$ unit vectors have all pairwise inner products $\langle x_i, x_j\rangle = \rho$,
    they keep that property along the flow, and

    $$ \text{USA: } \dot\rho = \frac{2}{n} e^{\beta\rho} (1 - \rho)(1 + (n - 1)\rho), \qquad
       \text{SA: } \dot\rho = \frac{2 (1 - \rho)(1 + (n - 1)\rho)}{e^{\beta(1 - \rho)} + n - 1}. $$

    Derivation. Let $S = \sum_j x_j$, so $\langle x_i, S\rangle = 1 + (n - 1)\rho$ for every
    $i$. With $w_j = 1/n$ the unnormalized field is
    $v_i = \frac1n \sum_j e^{\beta\langle x_i, x_j\rangle} x_j
         = \frac1n\big[(e^\beta - e^{\beta\rho}) x_i + e^{\beta\rho} S\big]$, and the tangent
    projection $P_{x_i} = I - x_i x_i^\top$ removes the $x_i$ term:
    $\dot x_i = \frac{e^{\beta\rho}}{n} (S - \langle x_i, S\rangle x_i)$. Softmax divides
    $v_i$ by $Z = \frac1n\big[e^\beta + (n - 1) e^{\beta\rho}\big]$, the same for every $i$,
    so $\dot x_i = c\,(S - \langle x_i, S\rangle x_i)$ with
    $c_{USA} = e^{\beta\rho}/n$ and $c_{SA} = e^{\beta\rho}/(e^\beta + (n - 1)e^{\beta\rho})$.
    For $i \ne k$, $\langle \dot x_i, x_k\rangle = c\,(\langle S, x_k\rangle -
    \langle x_i, S\rangle \rho) = c\,(1 + (n - 1)\rho)(1 - \rho)$, the same for every pair;
    hence every $\frac{d}{dt}\langle x_i, x_k\rangle = \langle \dot x_i, x_k\rangle +
    \langle x_i, \dot x_k\rangle$ equals $2c(1 - \rho)(1 + (n - 1)\rho)$: the Gram matrix
    stays of the form $(1 - \rho) I + \rho \mathbf 1 \mathbf 1^\top$ and $\rho$ obeys the
    equations above. For $n = 2$ they are the two-particle laws
    $\dot\rho = e^{\beta\rho}(1 - \rho^2)$ and $\dot\rho = 2(1 - \rho^2)/(1 + e^{\beta(1-\rho)})$.
    The fixed points are $\rho = 1$ (one cluster, attracting) and $\rho = -1/(n - 1)$ (the
    regular simplex, repelling): from any $\rho_0 > -1/(n-1)$, $\rho \to 1$.

    Args:
        rho: the common inner product, any shape.
        beta: inverse temperature.
        n: number of tokens (an int >= 2).
        normalization: `"softmax"` (SA) or `"unnormalized"` (USA).

    Returns:
        $\dot\rho$, the shape of `rho`.
    """
    check_choice(normalization, ("softmax", "unnormalized"), "normalization")
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an int >= 2; got {n!r}")
    rho = jnp.asarray(rho)
    growth = (1 - rho) * (1 + (n - 1) * rho)
    if normalization == "unnormalized":
        return 2 / n * jnp.exp(beta * rho) * growth
    return 2 * growth / (jnp.exp(beta * (1 - rho)) + n - 1)


# ---------------------------------------------------------------------------------------
# phase diagrams


class PhaseDiagram(eqx.Module):
    r"""An ensemble of clouds on the sphere, one batch of random starts per $\beta$.

    Attributes:
        betas: inverse temperatures, shape `(B,)`.
        ts: saved times, shape `(T,)`.
        x0: the starting clouds, shape `(R, n, d)`, shared by every beta.
        final: each member's cloud at `ts[-1]`, shape `(B, R, n, d)`.
        min_inner: $\min_{i \ne j}\langle x_i(t), x_j(t)\rangle$ of each member at each saved
            time, shape `(B, R, T)`: the whole ensemble, compressed to the number that
            decides "one cluster" for every threshold.
        num_steps: solver steps of each member, shape `(B, R)`. A vmapped solve runs as
            many steps as its slowest member; the others stop changing once done.
        result: diffrax result code of each member, shape `(B, R)`.
    """

    betas: Float[Array, " B"]
    ts: Float[Array, " T"]
    x0: Float[Array, "R n d"]
    final: Float[Array, "B R n d"]
    min_inner: Float[Array, "B R T"]
    num_steps: Int[Array, "B R"]
    result: Int[Array, "B R"]

    def probability(self, eps: float = 1e-3) -> Float[Array, "B T"]:
        r"""$P(\text{one cluster at } t)$ for each $\beta$: the fraction of members with
        every $\langle x_i, x_j\rangle > 1 - \varepsilon$."""
        return jnp.mean(self.min_inner > 1 - eps, axis=1)

    def standard_error(self, eps: float = 1e-3) -> Float[Array, "B T"]:
        r"""Binomial standard error $\sqrt{p(1-p)/R}$ of `probability`."""
        p = self.probability(eps)
        return jnp.sqrt(p * (1 - p) / self.min_inner.shape[1])


def phase_diagram(
    key: PRNGKeyArray | None,
    betas: Float[Array, " B"],
    ts: Float[Array, " T"],
    *,
    n: int = 32,
    d: int = 3,
    runs: int = 1024,
    normalization: str = "softmax",
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-6,
    max_steps: int = 100_000,
    starts: Float[Array, "R n d"] | None = None,
) -> PhaseDiagram:
    r"""Simulate `runs` clouds uniform on $S^{d-1}$ for every $\beta$, in one vmapped solve.

    Every member follows $\dot x_i = P_{x_i} v[\mu](x_i)$ with $Q = K = V = I$; the same
    `runs` starting clouds are used for every $\beta$ (common random numbers: differences
    between betas are not sampling noise). The solve is a single `vmap` over betas and
    starts of `simulate`, so the ensemble compiles once and runs as one batched adaptive
    loop (Geshkovski, Letrouit, Polyanskiy, Rigollet, *A mathematical perspective on
    Transformers*, 2023, phase diagram of section 5).

    Args:
        key: PRNG key of the starting clouds (ignored, and may be None, with `starts`).
        betas: inverse temperatures, shape `(B,)`, all > 0.
        ts: increasing save times, shape `(T,)`.
        n, d: tokens per cloud and ambient dimension ($S^{d-1}$).
        runs: random starts per beta.
        normalization: `"softmax"` (SA) or `"unnormalized"` (USA).
        solver, rtol, atol, max_steps: as in `simulate` (adaptive steps).
        starts: given starting clouds `(R, n, d)` on the sphere, used instead of drawing
            them from `key` (then `n`, `d` and `runs` are read from its shape); e.g. the same
            starts in float32 and float64 for a precision study.

    Cost: members keep their own adaptive step sizes (a member equals the same run done
    alone, step count included), but the batched loop runs until its slowest member is
    done, so the work is `B * R * max(num_steps)` field evaluations' worth; the useful
    fraction is `mean(num_steps) / max(num_steps)` (measured: about 0.65 for SA with
    $\beta \le 9$, about 0.36 for USA with $\beta \le 3$, whose steps grow like
    $e^\beta$; there, one solve per beta would do 40% of the work).

    Returns:
        A `PhaseDiagram`; `.probability(eps)` is the `(B, T)` heat map.

    Raises:
        ValueError: bad sizes, betas or options, before any work.
        RuntimeError: if a member fails (e.g. reaches `max_steps`).
    """
    check_choice(normalization, ("softmax", "unnormalized"), "normalization")
    check_choice(solver, [s for s in SOLVERS if s != "euler"], "solver")
    for name, value, low in (("n", n, 2), ("d", d, 2), ("runs", runs, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    betas = jnp.asarray(betas)
    if betas.ndim != 1 or betas.shape[0] < 1:
        raise ValueError(f"betas must be a 1-d array of at least one value; got {betas.shape}")
    if is_concrete(betas) and not bool(jnp.all(betas > 0)):
        raise ValueError(f"betas must all be > 0; got {np.asarray(betas)}")
    ts = jnp.asarray(ts, dtype=jnp.result_type(float))
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-d array of at least two times; got shape {ts.shape}")
    if is_concrete(ts) and not np.all(np.diff(np.asarray(ts)) > 0):
        raise ValueError("ts must be strictly increasing")
    if starts is None:
        if key is None:
            raise ValueError("phase_diagram needs a PRNG key, or the starting clouds as starts=")
        x0 = jax.vmap(lambda k: sphere_uniform(k, n, d))(jax.random.split(key, runs))
    else:
        x0 = jnp.asarray(starts)
        if x0.ndim != 3:
            raise ValueError(f"starts must have shape (runs, n, d); got {x0.shape}")
    x0 = x0.astype(ts.dtype)
    final, min_inner, steps, result = _phase_diagram(
        betas.astype(ts.dtype),
        ts,
        x0,
        normalization=normalization,
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
    )
    if is_concrete(result) and bool(jnp.any(result != 0)):
        failed = int(jnp.sum(result != 0))
        raise RuntimeError(
            f"phase_diagram: {failed} of {result.size} members failed (max_steps={max_steps} "
            "reached or the solve diverged); raise max_steps or loosen rtol/atol"
        )
    return PhaseDiagram(
        betas=betas,
        ts=ts,
        x0=x0,
        final=final,
        min_inner=min_inner,
        num_steps=steps,
        result=result,
    )


@eqx.filter_jit
def _phase_diagram(betas, ts, x0, *, normalization, solver, rtol, atol, max_steps):
    d = x0.shape[-1]

    def member(beta, x):
        attention = SelfAttention.identity(d, beta, normalization=normalization)
        flow = AttentionFlow(attention, Sphere())
        traj = simulate(
            flow, x, ts, solver=solver, rtol=rtol, atol=atol, max_steps=max_steps, throw=False
        )
        code = jnp.where(traj.result == diffrax.RESULTS.successful, 0, 1)
        return traj.final, over_time(min_inner_product, traj.xs), traj.num_steps, code

    over_starts = jax.vmap(member, in_axes=(None, 0))
    return jax.vmap(over_starts, in_axes=(0, None))(betas, x0)
