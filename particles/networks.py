"""TODO docstring."""

from __future__ import annotations

import math
import operator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import check_choice, check_weights, value_check
from ._simulate import Trajectory
from .flows import AttentionFlow, Layered, PreNormFlow
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
    return eqx.tree_at(lambda f: f.attention, flow, flow.attention.layer(index))


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
        return Trajectory(
            ts=self.times(xs.dtype),
            xs=xs,
            weights=w,
            stats=None,
            result=None,
        )
