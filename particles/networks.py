r"""Deep residual networks of attention layers, and the flows they discretise.

A network of depth $L$ on a horizon $T$ applies $L$ layers of step $h = T / L$ to a cloud and
returns every layer's cloud. With shared weights its layer is one step of an explicit
integrator of a flow (`AttentionFlow` or `PreNormFlow`), so as $L \to \infty$ the output
converges to the flow at time $T$ (Vuckovic, Baratin, Tachet des Combes 2020, "infinitely deep
weight-sharing networks"; Geshkovski, Letrouit, Polyanskiy, Rigollet 2023):

| network                        | flow                                         | layer map (`scheme`)             |
|--------------------------------|----------------------------------------------|----------------------------------|
| residual                       | `AttentionFlow(attn)`                        | $x + h v[\mu](x)$ (`"euler"`)    |
| post-normalisation             | `AttentionFlow(attn, Sphere())`              | $N(x + h P_x v[\mu](x))$         |
| pre-normalisation              | `PreNormFlow(attn)`                          | $x + h v[\mu_{N(x)}](N(x))$      |
| attention then feed-forward    | `AttentionFlow(attn, feedforward=f)`         | `"lie-trotter"`                  |
| half FF, attention, half FF    | `AttentionFlow(attn, feedforward=f)`         | `"strang"` (Macaron)             |
| per-layer weights              | `AttentionFlow(Layered(layers, T))`          | any scheme, one piece per layer  |
| Heun / RK4 steps               | any of the above                             | `"heun"`, `"rk4"`                |

$N(x) = x / |x|$ is layer normalisation without centring and gain. Every sub-step ends with
the space's retraction (the identity in $\mathbb{R}^d$, $N$ on the sphere), so a
post-normalised network keeps its tokens on the sphere to rounding. Each splitting sub-step is
an Euler step, so Lie-Trotter and Strang are first order like the plain residual network;
Heun and RK4 are of order 2 and 4.

A network is an `equinox.Module`: its attention weights are pytree leaves and its depth is
static, so calling it runs one compiled `lax.scan` per depth.
"""

from __future__ import annotations

import math
import operator

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from . import analysis
from ._checks import check_choice, check_weights, value_check
from ._simulate import Trajectory, simulate
from .flows import AttentionFlow, FeedForward, Layered, PreNormFlow
from .spaces import Sphere

SCHEMES = ("euler", "lie-trotter", "strang", "heun", "rk4")
# Orders of accuracy of each scheme in h = T / L: the error at time T is O(h^order).
ORDERS = {"euler": 1, "lie-trotter": 1, "strang": 1, "heun": 2, "rk4": 4}
_SPLIT = ("lie-trotter", "strang")


def _check_depth(depth) -> int:
    if isinstance(depth, bool):
        raise ValueError(f"depth must be a positive integer; got {depth!r}")
    try:
        value = operator.index(depth)
    except TypeError:
        raise ValueError(f"depth must be a positive integer; got {depth!r}") from None
    if value < 1:
        raise ValueError(f"depth must be a positive integer; got {value}")
    return value


def _check_horizon(horizon) -> float:
    try:
        value = float(horizon)
    except (TypeError, ValueError):
        raise ValueError(f"horizon must be a positive number; got {horizon!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"horizon must be > 0 and finite; got {horizon!r}")
    return value


def _piece(flow, index):
    """The flow with the weights of piece `index` of its `Layered` attention, held fixed."""
    layered = flow.attention
    arrays, static = eqx.partition(layered.layers, eqx.is_array)
    attention = eqx.combine(jax.tree_util.tree_map(lambda a: a[index], arrays), static)
    return eqx.tree_at(lambda f: f.attention, flow, attention)


def _split(flow):
    """The attention part and the feed-forward part of a flow, each a tangent field."""
    if isinstance(flow, PreNormFlow):
        attention = PreNormFlow(flow.attention)

        def feedforward(x):
            return flow.feedforward(Sphere().retract(x))

    else:
        attention = AttentionFlow(flow.attention, flow.space)

        def feedforward(x):
            return flow.space.tangent(x, flow.feedforward(x))

    return attention, feedforward


def _layer(scheme, flow, t, h, x, weights):
    """One layer: a step of size `h` from time `t` of `scheme` applied to `flow`."""
    retract = flow.space.retract
    if scheme == "euler":
        return retract(x + h * flow(t, x, weights))
    if scheme == "heun":
        k1 = flow(t, x, weights)
        k2 = flow(t + h, x + h * k1, weights)
        return retract(x + (h / 2) * (k1 + k2))
    if scheme == "rk4":
        k1 = flow(t, x, weights)
        k2 = flow(t + h / 2, x + (h / 2) * k1, weights)
        k3 = flow(t + h / 2, x + (h / 2) * k2, weights)
        k4 = flow(t + h, x + h * k3, weights)
        return retract(x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4))
    attention, feedforward = _split(flow)
    if scheme == "lie-trotter":
        y = retract(x + h * attention(t, x, weights))
        return retract(y + h * feedforward(y))
    # Strang ("Macaron", Lu et al. 2019): half a feed-forward step on each side of attention.
    y = retract(x + (h / 2) * feedforward(x))
    z = retract(y + h * attention(t, y, weights))
    return retract(z + (h / 2) * feedforward(z))


@eqx.filter_jit
def _forward(network: ResidualNetwork, x0, weights):
    flow, depth, scheme = network.flow, network.depth, network.scheme
    h = jnp.asarray(network.step, x0.dtype)
    layered = isinstance(flow.attention, Layered)
    per_piece = depth // flow.attention.num_layers if layered else depth

    def body(x, l):
        t = l * h
        layer_flow = _piece(flow, l // per_piece) if layered else flow
        x = _layer(scheme, layer_flow, t, h, x, weights)
        return x, x

    _, xs = jax.lax.scan(body, x0, jnp.arange(depth))
    return jnp.concatenate([x0[None], xs])


def layer_times(depth: int, horizon: float, dtype=None) -> Float[Array, " L+1"]:
    """The layer grid $t_l = T (l / L)$, $l = 0, \\dots, L$, of a network of depth $L$.

    Computed in float64 then rounded to `dtype`, as `Layered.jump_times` is: the grid of
    depth $L$ is every $(M / L)$-th point of the grid of depth $M$, bit for bit, when $L$
    divides $M$ (one reference solve serves every depth), and a `Layered` flow's jump times
    are points of the grid.
    """
    depth, horizon = _check_depth(depth), _check_horizon(horizon)
    return jnp.asarray(horizon * (np.arange(depth + 1) / depth), dtype=dtype)


class ResidualNetwork(eqx.Module):
    r"""A residual attention network of depth $L$ whose continuous limit is `flow`.

    Layer $l = 0, \dots, L - 1$ maps the cloud at time $t_l = l h$, $h = T / L$, to the next
    by one step of `scheme` applied to `flow`; e.g. with `scheme="euler"` and
    `flow = AttentionFlow(attn)`, $x^{l+1}_i = x^l_i + h\, v[\mu^l](x^l_i)$,
    $\mu^l = \sum_j w_j \delta_{x^l_j}$. See the module docstring for the table of networks.

    With a `Layered` attention of $P$ layers ($P$ distinct weight sets) the depth must be a
    multiple $L = k P$: each weight set is used for $k$ consecutive layers, i.e. on its
    piece $[p T / P, (p + 1) T / P)$ of the time-dependent flow. `k = 1` is a network
    without weight sharing; $k \to \infty$ converges to the piecewise-constant flow.

    Args:
        flow: the continuous limit, an `AttentionFlow` (Euclidean or on the `Sphere`) or a
            `PreNormFlow`.
        depth: the number of layers $L$, a positive integer.
        horizon: the time $T > 0$ the network spans; for a `Layered` flow, its horizon.
        scheme: `"euler"` (residual layer), `"lie-trotter"` (attention then feed-forward),
            `"strang"` (half feed-forward, attention, half feed-forward; Macaron), `"heun"` or
            `"rk4"` (higher-order layers with the same weights).

    Call it as `network(x0, weights=None)`: returns every layer's cloud, shape
    `(depth + 1, n, d)`, `[0]` being `x0`. Works under `jit` and `vmap`.
    """

    flow: AttentionFlow | PreNormFlow
    depth: int = eqx.field(static=True)
    horizon: float = eqx.field(static=True)
    scheme: str = eqx.field(static=True)

    def __init__(self, flow, depth: int, horizon: float, *, scheme: str = "euler"):
        if not isinstance(flow, (AttentionFlow, PreNormFlow)):
            raise TypeError(
                f"flow must be an AttentionFlow or a PreNormFlow; got {type(flow).__name__}"
            )
        depth = _check_depth(depth)
        horizon = _check_horizon(horizon)
        check_choice(scheme, SCHEMES, "scheme")
        if scheme in _SPLIT and flow.feedforward is None:
            raise ValueError(
                f"scheme {scheme!r} splits attention from the feed-forward block: "
                "the flow needs a feedforward"
            )
        if isinstance(flow.attention, Layered):
            pieces = flow.attention.num_layers
            if depth % pieces:
                raise ValueError(
                    f"depth must be a multiple of the {pieces} layers of the Layered flow; "
                    f"got {depth}"
                )
            if not math.isclose(horizon, flow.attention.horizon, rel_tol=1e-12):
                raise ValueError(
                    f"horizon must equal the horizon of the Layered flow "
                    f"({flow.attention.horizon}); got {horizon}"
                )
        self.flow = flow
        self.depth = depth
        self.horizon = horizon
        self.scheme = scheme

    @property
    def step(self) -> float:
        """The step $h = T / L$."""
        return self.horizon / self.depth

    @property
    def order(self) -> int:
        """The order $p$ of the scheme: the error at time $T$ is $O(L^{-p})$."""
        return ORDERS[self.scheme]

    def times(self, dtype=None) -> Float[Array, " L+1"]:
        """The time $t_l = T (l / L)$ of each layer's cloud, $l = 0, \\dots, L$.

        Rounded from float64 as `Layered.jump_times` is, so with a `Layered` flow the layer
        times at piece boundaries are those jump times bit for bit.
        """
        return layer_times(self.depth, self.horizon, dtype)

    def __call__(
        self, x0: Float[Array, "n d"], weights: Float[Array, " n"] | None = None
    ) -> Float[Array, "L+1 n d"]:
        x0 = self.flow.space.check(x0, "x0")
        if isinstance(self.flow, PreNormFlow):
            x0 = value_check(
                x0,
                jnp.any(jnp.linalg.norm(x0, axis=-1) == 0),
                "x0 has a zero token: pre-normalisation divides by |x_i|",
            )
        weights = check_weights(weights, x0.shape[0])
        return _forward(self, x0, weights)

    def trajectory(
        self, x0: Float[Array, "n d"], weights: Float[Array, " n"] | None = None
    ) -> Trajectory:
        """The layers as a `Trajectory` at the times `times()` (for saving and plotting)."""
        xs = self(x0, weights)
        n = x0.shape[0]
        w = jnp.full((n,), 1 / n, xs.dtype) if weights is None else jnp.asarray(weights)
        steps = jnp.asarray(self.depth)
        return Trajectory(
            ts=self.times(xs.dtype),
            xs=xs,
            weights=w,
            num_steps=steps,
            num_accepted=steps,
            num_rejected=jnp.asarray(0),
            result=diffrax.RESULTS.successful,
        )


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
    solver: str = "dopri8",
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
    solver: str = "dopri8",
    rtol: float = 1e-12,
    atol: float = 1e-12,
    max_steps: int = 100_000,
    reference: Float[Array, "n d"] | None = None,
) -> Float[Array, " k"]:
    r"""The error at time $T$ of the network of each depth against its flow:
    $e(L) = \max_i |x^L_i - x_i(T)|$.

    The flow is solved once (diffrax, `solver`, tolerances `rtol`, `atol`); each depth is one
    compiled network. Use float64 for errors below $10^{-6}$.

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
    return jnp.stack([max_distance(net(x0, weights)[-1], reference) for net in nets])


def loglog_slope(depths: ArrayLike, errors: ArrayLike, *, floor: float = 0.0) -> float:
    r"""Least-squares slope $p$ of $\log e = p \log L + c$: the observed order is $-p$.

    Points with `errors <= floor` are left out (`particles.analysis.fit_power_law`).

    Raises:
        ValueError: fewer than two errors above `floor`.
    """
    return analysis.fit_power_law(depths, errors, floor=floor)[0]


VARIANTS = (
    "residual",
    "post-norm",
    "pre-norm",
    "lie-trotter",
    "strang",
    "per-layer",
    "heun",
    "rk4",
)


def variant(
    name: str,
    attention,
    *,
    feedforward: FeedForward | None = None,
    layers=None,
    horizon: float | None = None,
) -> tuple[AttentionFlow | PreNormFlow, str]:
    """The flow and scheme of a named network of the depth-limit study.

    Args:
        name: one of `VARIANTS`: `"residual"` ($x + h v$), `"post-norm"` (on the sphere),
            `"pre-norm"`, `"lie-trotter"` and `"strang"` (attention and `feedforward`),
            `"per-layer"` (`layers` piecewise constant on `[0, horizon]`), `"heun"`, `"rk4"`
            (shared `attention`, higher-order layers).
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
        return AttentionFlow(attention, Sphere()), "euler"
    if name == "pre-norm":
        return PreNormFlow(attention), "euler"
    if name in _SPLIT:
        return AttentionFlow(attention, feedforward=feedforward), name
    if name == "per-layer":
        return AttentionFlow(Layered(layers, horizon)), "euler"
    scheme = "euler" if name == "residual" else name
    return AttentionFlow(attention), scheme
