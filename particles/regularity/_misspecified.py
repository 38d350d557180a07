r"""Mis-specified inputs: how far the attention field and the flow move when the input
measure moves.

Vuckovic, Baratin, Tachet des Combes (*A Mathematical Theory of Attention*, 2020, and *On the
Regularity of Attention*, 2021) read attention as a map $\mu \mapsto v[\mu]$ on measures,
Lipschitz from $W_1$ to the sup norm on compact sets:
$\sup_z |v[\mu](z) - v[\nu](z)| \le L_\mu W_1(\mu, \nu)$. A mis-specified input (noisy
tokens, dropped tokens, duplicated tokens) is a nearby measure, so its field is nearby
(`field_gap`, against `measure_lipschitz_bound`), and the two solutions of the flow separate
at most like $W_1(\mu_t, \nu_t) \le e^{L t} W_1(\mu_0, \nu_0)$ (`separation_rate`, against
`growth_rate_bound`). The distances themselves come from `particles.wasserstein`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_choice, check_cloud, check_weights, is_concrete
from ..attention import AbstractAttention
from ..flows import AttentionFlow

__all__ = ["MISSPECIFICATIONS", "field_gap", "misspecify", "separation_rate"]


def field_gap(
    model: AbstractAttention | AttentionFlow,
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    x_weights: Float[Array, " n"] | None = None,
    y_weights: Float[Array, " m"] | None = None,
    points: Float[Array, "q d"] | None = None,
) -> Float[Array, ""]:
    r"""$\max_k |v[\mu](z_k) - v[\nu](z_k)|$: how far apart the fields of two measures are, at
    probe points $z_k$ (default: the tokens of both clouds). For an `AttentionFlow` the
    fields are projected on the tangent spaces. Compare with
    `measure_lipschitz_bound(model, R) * wasserstein(x, y, x_weights, y_weights, p=1)`.
    """
    x, y = check_cloud(x, "x"), check_cloud(y, "y")
    points = jnp.concatenate([x, y]) if points is None else check_cloud(points, "points")
    if isinstance(model, AttentionFlow):
        gap = model.field(points, x, x_weights) - model.field(points, y, y_weights)
    elif isinstance(model, AbstractAttention):
        gap = model.cross(points, x, x_weights) - model.cross(points, y, y_weights)
    else:
        raise TypeError(
            f"model must be an attention operator or an AttentionFlow; got {type(model).__name__}"
        )
    return jnp.max(jnp.linalg.norm(gap, axis=-1))


MISSPECIFICATIONS = ("noise", "drop", "duplicate")
"""The kinds of mis-specified input `misspecify` makes: Gaussian noise, dropped tokens
(weight zero), duplicated tokens (weight doubled)."""


def misspecify(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    kind: str,
    amount,
    weights: Float[Array, " n"] | None = None,
    *,
    space=None,
) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
    r"""A mis-specified copy $(y, w')$ of the input measure $\mu = \sum_i w_i\delta_{x_i}$
    (Vuckovic et al. 2021, *On the Regularity of Attention*: attention as a map on measures
    is stable under such changes).

    Kinds (the cloud keeps its shape, so it runs under `jit`/`vmap`):

    - `"noise"`: $y_i = x_i + \sigma \xi_i$, $\xi_i \sim N(0, I)$, $\sigma$ = `amount`; with
      `space` (e.g. `Sphere()`) the result is retracted onto it.
    - `"drop"`: a random fraction `amount` $\in [0, 1)$ of the tokens gets weight zero (they
      leave the measure; in the flow they still move but no longer act).
    - `"duplicate"`: a random fraction `amount` $\in [0, 1]$ of the tokens is duplicated:
      their weight doubles (two coincident tokens are one token of twice the weight).

    Weights are renormalised to sum to one. Returns `(y, weights)`.
    """
    check_choice(kind, MISSPECIFICATIONS, "kind")
    x = check_cloud(x, "x")
    n = x.shape[0]
    weights = check_weights(weights, n)
    w = jnp.full((n,), 1 / n, x.dtype) if weights is None else weights.astype(x.dtype)
    if is_concrete(amount):
        a = float(amount)
        if not a >= 0:
            raise ValueError(f"amount must be >= 0; got {amount}")
        if kind == "drop" and not a < 1:
            raise ValueError(
                f"amount must be < 1 for kind='drop' (a token must stay); got {amount}"
            )
        if kind == "duplicate" and a > 1:
            raise ValueError(f"amount must be <= 1 for kind='duplicate'; got {amount}")
    if kind == "noise":
        y = x + amount * jax.random.normal(key, x.shape, x.dtype)
        return (space.retract(y) if space is not None else y), w
    chosen = jnp.argsort(jax.random.uniform(key, (n,))) < jnp.round(amount * n)
    w = jnp.where(chosen, 0.0 if kind == "drop" else 2 * w, w)
    return x, w / jnp.sum(w)


def separation_rate(ts, distances) -> float:
    r"""The measured exponential rate $\max_{t > t_0} \log(D(t)/D(t_0)) / (t - t_0)$ of a
    distance $D$ between two solutions: the smallest $L$ with $D(t) \le e^{L(t - t_0)} D(t_0)$
    on the saved times. Compare with `growth_rate_bound`."""
    ts, distances = np.asarray(ts, float), np.asarray(distances, float)
    if ts.shape != distances.shape or ts.ndim != 1 or ts.size < 2:
        raise ValueError(
            f"ts and distances must be 1-d of the same length >= 2; got {ts.shape}, {distances.shape}"
        )
    if not distances[0] > 0:
        raise ValueError(f"the initial distance must be > 0; got {distances[0]}")
    with np.errstate(divide="ignore"):
        rates = np.log(distances[1:] / distances[0]) / (ts[1:] - ts[0])
    return float(np.max(rates))
