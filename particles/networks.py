r"""Residual attention networks: the discrete layers whose continuous limit is a flow.

A transformer whose $L$ layers share their weights is a residual network with step
$h = T / L$. Each layer maps the cloud $x^l$ at time $t_l = l h$ to $x^{l+1}$ by one step
of a one-step scheme applied to a flow $\dot x = F(t, x)$ (`particles.flows`), so as
$L \to \infty$ the last layer converges to the solution $x(T)$ of the flow with an error
$O(L^{-p})$, $p$ the order of the scheme (Vuckovic, Baratin, Tachet des Combes 2020,
infinitely deep weight-sharing networks; Lu et al. 2019, *Understanding and Improving
Transformer from a Multi-Particle Dynamic System Point of View*; Geshkovski, Letrouit,
Polyanskiy, Rigollet 2023, *A mathematical perspective on Transformers*).

The layer maps (`scheme`), with $v$ the ambient field of the flow (attention plus the
feed-forward term $f$, if any), $F$ the flow's velocity ($P_x v$ on the sphere,
$P_x = I - x x^\top$), $N(x) = x / |x|$ and $R$ the retraction of the flow's space ($N$ on the
sphere, the identity in $\mathbb{R}^d$); order $p$ in brackets:

- `"euler"` [1]: $R(x + h F(t, x))$. In $\mathbb{R}^d$ the residual layer $x + h v$; on the
  sphere the *projected* post-norm layer $N(x + h P_x v)$ (Riemannian Euler step and
  retraction).
- `"post-norm"` [1]: $N(x + h v)$, the Post-LN layer (Vaswani et al. 2017, layer
  normalisation reduced to $N$) of a flow on the `Sphere`. With $|x| = 1$,
  $N(x + h v) = N\big(x + \tfrac{h}{1 + h \langle x, v\rangle} P_x v\big)$: the projected
  layer with step $h + O(h^2)$, so it converges to the same flow $\dot x = P_x v$, with
  order 1 and another error constant.
- `"lie-trotter"` [1]: an Euler step of attention, then an Euler step of $f$.
- `"strang-euler"` [1]: an Euler half step of $f$, an Euler step of attention, an Euler half
  step of $f$: the Macaron layer of Lu et al. (2019). Strang's symmetric splitting has local
  error $O(h^3)$ with exact sub-flows, but each Euler sub-step adds an $O(h^2)$ that does
  not cancel, so the layer is first order.
- `"strang"` [2]: the same splitting with Heun sub-steps (second order each): a genuine
  Strang splitting.
- `"heun"` [2], `"rk4"` [4]: Heun and classical Runge-Kutta steps of $F$, retracted:
  higher-order layers with the same weights, a contrast.

A retraction after a step moves the point by the step's local error only (the exact flow
stays on the sphere), so it keeps the order. The flow is an `AttentionFlow` (Euclidean or on
the `Sphere`) or a `PreNormFlow` (attention reads $N(x)$: the Pre-LN layer
$x + h v[\mu_{N(x)}](N(x))$), with `Layered` attention for per-layer weights.
`particles.studies.variant` names the networks of the depth-limit study and
`particles.studies.final_errors` / `depth_error` measure their errors.
"""

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

__all__ = ["ORDERS", "SCHEMES", "ResidualNetwork", "layer_times"]

SCHEMES = ("euler", "post-norm", "lie-trotter", "strang-euler", "strang", "heun", "rk4")
"""The layer schemes of `ResidualNetwork` (its `scheme` argument)."""

ORDERS = {
    "euler": 1,
    "post-norm": 1,
    "lie-trotter": 1,
    "strang-euler": 1,
    "strang": 2,
    "heun": 2,
    "rk4": 4,
}
"""Order of accuracy of each scheme in $h = T / L$: the error at time $T$ is
$O(h^{\text{order}})$ (measured by the convergence tests against a solve of the flow)."""

# the schemes that split attention from the feed-forward block
_SPLIT = ("lie-trotter", "strang-euler", "strang")


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


def _split(flow):
    """The attention part and the feed-forward part of a flow, each a tangent field
    `(t, x, weights) -> velocity`."""
    if isinstance(flow, PreNormFlow):
        attention = PreNormFlow(flow.attention)

        def feedforward(t, x, weights):
            return flow.feedforward(Sphere().retract(x))

    else:
        attention = AttentionFlow(flow.attention, flow.space)

        def feedforward(t, x, weights):
            return flow.space.tangent(x, flow.feedforward(x))

    return attention, feedforward


def _euler(field, t, h, x, weights):
    return x + h * field(t, x, weights)


def _heun(field, t, h, x, weights):
    k1 = field(t, x, weights)
    k2 = field(t + h, x + h * k1, weights)
    return x + (h / 2) * (k1 + k2)


def _rk4(field, t, h, x, weights):
    k1 = field(t, x, weights)
    k2 = field(t + h / 2, x + (h / 2) * k1, weights)
    k3 = field(t + h / 2, x + (h / 2) * k2, weights)
    k4 = field(t + h, x + h * k3, weights)
    return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


_STEPS = {"euler": _euler, "heun": _heun, "rk4": _rk4}


def _layer(scheme, flow, t, h, x, weights):
    """One layer: a step of size `h` from time `t` of `scheme` applied to `flow`."""
    retract = flow.space.retract
    if scheme in _STEPS:
        return retract(_STEPS[scheme](flow, t, h, x, weights))
    if scheme == "post-norm":
        # the ambient field, not its tangent projection: N(x + h v)
        return retract(x + h * flow.velocity(t, x, weights))
    attention, feedforward = _split(flow)
    if scheme == "lie-trotter":
        y = retract(_euler(attention, t, h, x, weights))
        return retract(_euler(feedforward, t, h, y, weights))
    # Strang: half a feed-forward step on each side of attention ("strang-euler": Macaron)
    step = _euler if scheme == "strang-euler" else _heun
    y = retract(step(feedforward, t, h / 2, x, weights))
    z = retract(step(attention, t, h, y, weights))
    return retract(step(feedforward, t + h / 2, h / 2, z, weights))


def _layer_flow(flow, l, depth):
    """The flow that layer `l` of a network of `depth` layers steps: with a `Layered`
    attention, the weights of the piece that layer belongs to, held fixed for the whole step
    (a multi-stage step must not see the next piece at t + h)."""
    if not isinstance(flow.attention, Layered):
        return flow
    per_piece = depth // flow.attention.num_layers
    return eqx.tree_at(lambda f: f.attention, flow, flow.attention.layer(l // per_piece))


@eqx.filter_jit
def _forward(network: ResidualNetwork, x0, weights):
    flow, depth, scheme = network.flow, network.depth, network.scheme
    h = jnp.asarray(network.step, x0.dtype)

    def body(x, l):
        x = _layer(scheme, _layer_flow(flow, l, depth), l * h, h, x, weights)
        return x, x

    _, xs = jax.lax.scan(body, x0, jnp.arange(depth))
    return jnp.concatenate([x0[None], xs])


@eqx.filter_jit
def _last_layer(flow, scheme: str, depth, h, x0, weights):
    # depth and h are traced: one compilation serves networks of every depth
    def body(l, x):
        return _layer(scheme, _layer_flow(flow, l, depth), l * h, h, x, weights)

    return jax.lax.fori_loop(0, depth, body, x0)


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
    $\mu^l = \sum_j w_j \delta_{x^l_j}$. See the module docstring for every layer map and
    its order.

    With a `Layered` attention of $P$ layers ($P$ distinct weight sets) the depth must be a
    multiple $L = k P$: each weight set is used for $k$ consecutive layers, i.e. on its
    piece $[p T / P, (p + 1) T / P)$ of the time-dependent flow. `k = 1` is a network
    without weight sharing; $k \to \infty$ converges to the piecewise-constant flow.

    Args:
        flow: the continuous limit, an `AttentionFlow` (Euclidean or on the `Sphere`) or a
            `PreNormFlow`.
        depth: the number of layers $L$, a positive integer.
        horizon: the time $T > 0$ the network spans; for a `Layered` flow, its horizon.
        scheme: one of `SCHEMES`: `"euler"` (residual layer; projected post-norm on the
            sphere), `"post-norm"` (Post-LN $N(x + h v)$, a `Sphere` flow), `"lie-trotter"`,
            `"strang-euler"` (Macaron) and `"strang"` (attention and feed-forward split; the
            flow needs a `feedforward`), `"heun"` or `"rk4"` (higher-order layers with the
            same weights).

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
        if scheme == "post-norm" and not isinstance(flow.space, Sphere):
            raise ValueError(
                "scheme 'post-norm' normalises every layer onto the sphere: the flow needs "
                f"space=Sphere(); got {type(flow).__name__} on {type(flow.space).__name__}"
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
        x0 = self._check(x0)
        weights = check_weights(weights, x0.shape[0])
        return _forward(self, x0, weights)

    def _check(self, x0):
        x0 = self.flow.space.check(x0, "x0")
        if isinstance(self.flow, PreNormFlow):
            x0 = value_check(
                x0,
                jnp.any(jnp.linalg.norm(x0, axis=-1) == 0),
                "x0 has a zero token: pre-normalisation divides by |x_i|",
            )
        return x0

    def final(
        self, x0: Float[Array, "n d"], weights: Float[Array, " n"] | None = None
    ) -> Float[Array, "n d"]:
        """The last layer's cloud $x^L$, `network(x0, weights)[-1]` without the other
        layers. Compiled once for networks of every depth with the same flow and scheme (the
        depth is a loop bound, not a shape), which makes convergence studies cheap."""
        x0 = self._check(x0)
        weights = check_weights(weights, x0.shape[0])
        depth = jnp.asarray(self.depth)
        return _last_layer(
            self.flow, self.scheme, depth, jnp.asarray(self.step, x0.dtype), x0, weights
        )

    def trajectory(
        self, x0: Float[Array, "n d"], weights: Float[Array, " n"] | None = None
    ) -> Trajectory:
        """The layers as a `Trajectory` at the times `times()` (for saving and plotting).

        No solver produced it, so `stats` and `result` are `None` (`num_steps` is `None`,
        `succeeded` is `True`); `weights` are the token weights (uniform for `None`).
        """
        xs = self(x0, weights)
        n = x0.shape[0]
        w = jnp.full((n,), 1 / n, xs.dtype) if weights is None else jnp.asarray(weights)
        return Trajectory(ts=self.times(xs.dtype), xs=xs, weights=w, stats=None, result=None)
