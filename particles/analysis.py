r"""Metrics of clouds and trajectories: pure functions, jit- and vmap-compatible.

Each function takes a cloud `(n, d)`; apply it to a trajectory with `jax.vmap` (or the
`over_time` helper).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
