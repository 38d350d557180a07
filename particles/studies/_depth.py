r"""Depth errors: how far a residual network of depth $L$ is from the flow it discretises.

A network of depth $L$ with step $h = T / L$ (`particles.networks.ResidualNetwork`) is a
one-step scheme of its flow, so its layer $l$ approximates the flow at $t_l = l h$ with an
error $O(L^{-p})$, $p$ the order of its layer map (Vuckovic, Baratin, Tachet des Combes 2020;
Lu et al. 2019; Geshkovski, Letrouit, Polyanskiy, Rigollet 2023). Here the flow is solved by
diffrax at tight tolerances (the reference) and compared with the network:
`final_errors` gives $e(L) = \max_i |x^L_i - x_i(T)|$ for several depths (fit the slope
with `particles.metrics.fit_power_law`), `depth_error` the error at every layer, and
`variant` builds the named networks of the depth-limit study (`VARIANTS`).
"""

from __future__ import annotations

import diffrax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import check_choice
from .._simulate import simulate
from ..flows import AttentionFlow, FeedForward, Layered, PreNormFlow
from ..networks import _SPLIT, ResidualNetwork, _check_depth, _check_horizon
from ..spaces import Sphere

__all__ = ["VARIANTS", "depth_error", "final_errors", "max_distance", "variant"]


def max_distance(xs: Float[Array, "... n d"], ys: Float[Array, "... n d"]) -> Float[Array, "..."]:
    """$\\max_i |x_i - y_i|$: the largest distance between corresponding tokens, for each
    cloud of a stack (e.g. every layer against the flow at the same time).

    The ambient (chordal) distance is used on the sphere too: it agrees with the geodesic
    distance to first order, and the geodesic $\\arccos \\langle x, y \\rangle$ loses half
    the digits near 0 (it cannot resolve errors below about $10^{-8}$ in float64).
    """
    return jnp.max(jnp.linalg.norm(xs - ys, axis=-1), axis=-1)


def depth_error(
    network: ResidualNetwork,
    x0: Float[Array, "n d"],
    weights: Float[Array, " n"] | None = None,
    *,
    solver: diffrax.AbstractSolver = diffrax.Dopri8(),
    rtol: float = 1e-12,
    atol: float = 1e-12,
    max_steps: int = 100_000,
    reference: Float[Array, "L+1 n d"] | None = None,
) -> Float[Array, " L+1"]:
    r"""The error along depth: $e_l = \max_i |x^l_i - x_i(l h)|$, layer $l$ of the network
    against its flow at the same time, solved adaptively by diffrax.

    Args:
        network: the network; its `flow` is solved from `x0` and saved at `network.times()`.
        x0, weights: the initial cloud and token weights.
        solver, rtol, atol, max_steps: the reference solve (see `simulate`); use float64
            and tight tolerances for a convergence study.
        reference: the flow at `network.times()` if already solved, shape `(L + 1, n, d)`
            (e.g. every $k$-th cloud of a solve on `layer_times(k L, T)`); then no solve
            is run.

    Returns:
        Errors of shape `(L + 1,)`; `e_0 = 0`.
    """
    xs = network(x0, weights)
    if reference is None:
        reference = simulate(
            network.flow,
            x0,
            network.times(xs.dtype),
            weights=weights,
            solver=solver,
            rtol=rtol,
            atol=atol,
            max_steps=max_steps,
        ).xs
    elif jnp.shape(reference) != xs.shape:
        raise ValueError(
            f"reference must hold the flow at the {network.depth + 1} layer times, shape "
            f"{xs.shape}; got {jnp.shape(reference)}"
        )
    return max_distance(xs, reference)


def final_errors(
    flow,
    x0: Float[Array, "n d"],
    depths,
    horizon: float,
    *,
    scheme: str = "euler",
    weights: Float[Array, " n"] | None = None,
    solver: diffrax.AbstractSolver = diffrax.Dopri8(),
    rtol: float = 1e-12,
    atol: float = 1e-12,
    max_steps: int = 100_000,
    reference: Float[Array, "n d"] | None = None,
) -> Float[Array, " k"]:
    r"""The error at time $T$ of the network of each depth against its flow:
    $e(L) = \max_i |x^L_i - x_i(T)|$.

    The flow is solved once (diffrax, `solver`, tolerances `rtol`, `atol`); the networks of
    every depth share one compilation (`ResidualNetwork.final`). Use float64 for errors
    below $10^{-6}$.

    Args:
        flow: an `AttentionFlow` or `PreNormFlow`.
        x0, weights: the initial cloud and token weights.
        depths: the depths $L$ to try (positive integers).
        horizon: the time $T$.
        scheme: the layer map, see `ResidualNetwork`.
        solver, rtol, atol, max_steps: the reference solve (see `simulate`).
        reference: the flow at time $T$ if already solved (e.g. shared by several schemes);
            then no solve is run.

    Returns:
        Errors of shape `(len(depths),)`.
    """
    depths = [_check_depth(L) for L in np.atleast_1d(np.asarray(depths)).tolist()]
    horizon = _check_horizon(horizon)
    nets = [ResidualNetwork(flow, L, horizon, scheme=scheme) for L in depths]
    x0 = flow.space.check(x0, "x0")
    if reference is None:
        reference = simulate(
            flow,
            x0,
            jnp.asarray([0.0, horizon], x0.dtype),
            weights=weights,
            solver=solver,
            rtol=rtol,
            atol=atol,
            max_steps=max_steps,
        ).final
    elif jnp.shape(reference) != x0.shape:
        raise ValueError(
            f"reference must have the shape of x0 {x0.shape}; got {jnp.shape(reference)}"
        )
    return jnp.stack([max_distance(net.final(x0, weights), reference) for net in nets])


VARIANTS = (
    "residual",
    "post-norm",
    "projected-post-norm",
    "pre-norm",
    "lie-trotter",
    "strang-euler",
    "strang",
    "per-layer",
    "heun",
    "rk4",
)
"""The networks of the depth study (`variant(name, ...)`): the schemes of
`ResidualNetwork` on attention alone, with normalisation, with a feed-forward block, and with
per-layer weights."""


def variant(
    name: str,
    attention,
    *,
    feedforward: FeedForward | None = None,
    layers=None,
    horizon: float | None = None,
) -> tuple[AttentionFlow | PreNormFlow, str]:
    r"""The flow and scheme of a named network of the depth-limit study.

    Args:
        name: one of `VARIANTS` (layer maps of `particles.networks`, $N(x) = x / |x|$):

            - `"residual"`: $x + h v$, in $\mathbb{R}^d$;
            - `"post-norm"`: $N(x + h v)$ on the sphere, the Post-LN layer;
            - `"projected-post-norm"`: $N(x + h P_x v)$ on the sphere, the projected
              (Riemannian) Euler step and retraction;
            - `"pre-norm"`: $x + h v[\mu_{N(x)}](N(x))$, the Pre-LN layer;
            - `"lie-trotter"`, `"strang-euler"` (Macaron, Euler sub-steps, first order),
              `"strang"` (Heun sub-steps, second order): attention and `feedforward` split;
            - `"per-layer"`: residual layers with `layers` piecewise constant on
              `[0, horizon]`;
            - `"heun"`, `"rk4"`: higher-order layers with the shared `attention`.

        attention: the shared attention operator.
        feedforward: the feed-forward block of the splitting variants.
        layers: an attention operator with a leading layer axis (see `Layered`), for
            `"per-layer"`.
        horizon: the time $T$, for `"per-layer"`.

    Returns:
        `(flow, scheme)`: pass them to `ResidualNetwork(flow, depth, horizon, scheme=scheme)`.
    """
    check_choice(name, VARIANTS, "name")
    if name in _SPLIT and feedforward is None:
        raise ValueError(f"variant {name!r} needs a feedforward")
    if name == "per-layer" and (layers is None or horizon is None):
        raise ValueError("variant 'per-layer' needs layers and horizon")
    if name == "post-norm":
        return AttentionFlow(attention, Sphere()), "post-norm"
    if name == "projected-post-norm":
        return AttentionFlow(attention, Sphere()), "euler"
    if name == "pre-norm":
        return PreNormFlow(attention), "euler"
    if name in _SPLIT:
        return AttentionFlow(attention, feedforward=feedforward), name
    if name == "per-layer":
        return AttentionFlow(Layered(layers, horizon)), "euler"
    scheme = "euler" if name == "residual" else name
    return AttentionFlow(attention), scheme
