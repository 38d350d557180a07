"""TODO docstring."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_cloud, check_weights, is_concrete
from ..attention import AbstractAttention
from ..flows import AttentionFlow


def _import_ot():
    """Import POT without its optional deep-learning backends: we hand it numpy arrays, and
    importing torch (when installed) would cost seconds. The switches only act if `ot` was
    not imported before."""
    import os
    import sys

    if "ot" not in sys.modules:
        for name in ("PYTORCH", "TENSORFLOW", "CUPY", "JAX"):
            os.environ.setdefault(f"POT_BACKEND_DISABLE_{name}", "1")
    import ot

    return ot


def _ot_available():
    if importlib.util.find_spec("ot") is None:
        raise ImportError("wasserstein needs POT (Python Optimal Transport): pip install pot")


def wasserstein(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    wx: Float[Array, " n"] | None = None,
    wy: Float[Array, " m"] | None = None,
    *,
    p: int = 1,
) -> Float[Array, ""]:
    r"""Exact Wasserstein distance $W_p(\mu, \nu)$, $\mu = \sum_i w^x_i\delta_{x_i}$,
    $\nu = \sum_j w^y_j \delta_{y_j}$, with Euclidean ground cost (POT `ot.emd2`, network
    simplex, in float64 on the host).

    $W_p^p = \min_{\pi \in \Pi(\mu, \nu)} \sum_{ij} \pi_{ij} |x_i - y_j|^p$. Tokens of weight
    zero are ignored. Works under `jit` and `vmap` (a `jax.pure_callback`, run
    sequentially); not differentiable. Returns NaN if the solver hits its iteration limit.

    Args:
        x, y: the two clouds (same `d`, any sizes).
        wx, wy: their weights (`None`: uniform).
        p: 1 or 2.
    """
    _ot_available()
    x, y = check_cloud(x, "x"), check_cloud(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension; got {x.shape[1]} and {y.shape[1]}")
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2; got {p!r}")
    wx = check_weights(wx, x.shape[0], "wx")
    wy = check_weights(wy, y.shape[0], "wy")
    dtype = jnp.result_type(x, y)
    wx = jnp.full((x.shape[0],), 1 / x.shape[0], dtype) if wx is None else wx.astype(dtype)
    wy = jnp.full((y.shape[0],), 1 / y.shape[0], dtype) if wy is None else wy.astype(dtype)

    def host(x, y, wx, wy):
        ot = _import_ot()

        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        a, b = np.asarray(wx, np.float64), np.asarray(wy, np.float64)
        keep_a, keep_b = a > 0, b > 0
        x, a, y, b = x[keep_a], a[keep_a], y[keep_b], b[keep_b]
        a, b = a / a.sum(), b / b.sum()
        cost = ot.dist(x, y, metric="euclidean")
        if p == 2:
            cost = cost**2
        value, log = ot.emd2(a, b, cost, numItermax=10_000_000, log=True)
        if log.get("warning"):
            value = np.nan
        return np.asarray(max(float(value), 0.0) ** (1 / p), dtype)

    return jax.pure_callback(
        host, jax.ShapeDtypeStruct((), dtype), x, y, wx, wy, vmap_method="sequential"
    )


def field_gap(
    model: AbstractAttention | AttentionFlow,
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    wx: Float[Array, " n"] | None = None,
    wy: Float[Array, " m"] | None = None,
    points: Float[Array, "q d"] | None = None,
) -> Float[Array, ""]:
    r"""$\max_k |v[\mu](z_k) - v[\nu](z_k)|$: how far apart the fields of two measures are, at
    probe points $z_k$ (default: the tokens of both clouds). For an `AttentionFlow` the
    fields are projected on the tangent spaces. Compare with
    `measure_lipschitz_bound(model, R) * wasserstein(x, y, wx, wy)`.
    """
    x, y = check_cloud(x, "x"), check_cloud(y, "y")
    points = jnp.concatenate([x, y]) if points is None else check_cloud(points, "points")
    if isinstance(model, AttentionFlow):
        gap = model.field(points, x, wx) - model.field(points, y, wy)
    elif isinstance(model, AbstractAttention):
        gap = model.cross(points, x, wx) - model.cross(points, y, wy)
    else:
        raise TypeError(
            f"model must be an attention operator or an AttentionFlow; got {type(model).__name__}"
        )
    return jnp.max(jnp.linalg.norm(gap, axis=-1))


MISSPECIFICATIONS = ("noise", "drop", "duplicate")


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
    from .._checks import check_choice

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
