r"""Vector fields: attention (plus an optional feed-forward term) on a space.

$$ \dot x_i = P_{x_i}\big( v[\mu](x_i) + f(x_i) \big), \qquad \mu = \sum_j w_j \delta_{x_j}, $$

where $P$ is the tangent projection of the space, $v$ an attention operator and
$f(x) = W_2 \sigma(W_1 x + b)$ a per-token feed-forward block (Lie-Trotter splitting of a
transformer block). A flow is called as a diffrax vector field `flow(t, x, weights)`, with
the token weights passed as diffrax's `args` (or `None` for uniform).

`AttentionFlow` is the model of self-attention as interacting particles (Vuckovic, Baratin,
Tachet des Combes 2020; Geshkovski, Letrouit, Polyanskiy, Rigollet 2023, on the sphere);
`PreNormFlow` is the limit of a pre-normalised (Pre-LN) network; `Layered` makes the weights
piecewise constant in time, the limit of a network whose layers do not share weights.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .attention import AbstractAttention
from .spaces import AbstractSpace, Euclidean, Sphere

__all__ = ["AbstractFlow", "AttentionFlow", "FeedForward", "Layered", "PreNormFlow"]

_ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    # the erf form, as BERT's feed-forward uses it ("gelu" above is the tanh approximation)
    "gelu_exact": lambda z: jax.nn.gelu(z, approximate=False),
    "tanh": jnp.tanh,
    "identity": lambda z: z,
}


class FeedForward(eqx.Module):
    """Per-token feed-forward block $f(x) = W_2 \\sigma(W_1 x + b)$.

    Args:
        W1: shape `(m, d)`; b: shape `(m,)`; W2: shape `(d, m)`.
        activation: one of `"relu"`, `"gelu"` (tanh approximation), `"gelu_exact"` (erf),
            `"tanh"`, `"identity"`.
    """

    W1: Float[Array, "m d"]
    b: Float[Array, " m"]
    W2: Float[Array, "d m"]
    activation: str = eqx.field(static=True)

    def __init__(self, W1, b, W2, activation: str = "relu"):
        W1, b, W2 = jnp.asarray(W1), jnp.asarray(b), jnp.asarray(W2)
        if W1.ndim != 2:
            raise ValueError(f"W1 must have shape (m, d); got {W1.shape}")
        m, d = W1.shape
        if b.shape != (m,):
            raise ValueError(f"b must have shape ({m},); got {b.shape}")
        if W2.shape != (d, m):
            raise ValueError(f"W2 must have shape ({d}, {m}); got {W2.shape}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(map(repr, _ACTIVATIONS))}; got {activation!r}"
            )
        self.W1, self.b, self.W2, self.activation = W1, b, W2, activation

    @classmethod
    def random(cls, key: PRNGKeyArray, d: int, hidden: int, activation: str = "relu"):
        """Gaussian weights with variance $1/\\text{fan-in}$, zero bias."""
        k1, k2 = jax.random.split(key)
        return cls(
            jax.random.normal(k1, (hidden, d)) / math.sqrt(d),
            jnp.zeros(hidden),
            jax.random.normal(k2, (d, hidden)) / math.sqrt(hidden),
            activation,
        )

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        pre = x @ self.W1.T
        # the bias of every token: explicit, so that strict rank promotion accepts it
        pre = pre + jnp.broadcast_to(self.b, pre.shape)
        return _ACTIVATIONS[self.activation](pre) @ self.W2.T


class Layered(eqx.Module):
    r"""Per-layer weights used piecewise-constant in time: layer $l$ acts on
    $t \in [l h, (l + 1) h)$, $h = T / L$. The flow of a network whose layers do not share
    weights.

    Args:
        layers: an attention operator whose array leaves carry a leading layer axis, e.g.
            built with `eqx.filter_vmap(make_layer)(keys)`.
        horizon: the time $T$ that the `L` layers span.
    """

    layers: AbstractAttention
    horizon: float = eqx.field(static=True)
    num_layers: int = eqx.field(static=True)

    def __init__(self, layers: AbstractAttention, horizon: float):
        sizes = {a.shape[0] for a in jax.tree_util.tree_leaves(eqx.filter(layers, eqx.is_array))}
        if len(sizes) != 1:
            raise ValueError(
                f"every array of layers needs the same leading layer axis; got {sizes}"
            )
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0; got {horizon}")
        self.layers = layers
        self.horizon = float(horizon)
        self.num_layers = sizes.pop()

    @property
    def step(self) -> float:
        """The duration $T / L$ of one layer."""
        return self.horizon / self.num_layers

    def jump_times(self) -> np.ndarray:
        """Interior layer boundaries $t_l = T (l / L)$, $l = 1, \\dots, L - 1$, where the
        field jumps (float64).

        Computed as diffrax's fixed-step grid computes its times ($t_0 + (t_1 - t_0)(k / K)$),
        and $k / K$ rounds to the same float as $l / L$ when $K = m L$, $k = m l$: a fixed
        step $T / (m L)$ lands on every boundary exactly, in float64.
        """
        return self.horizon * (np.arange(1, self.num_layers) / self.num_layers)

    def at(self, t) -> AbstractAttention:
        """The attention operator acting at time `t`: layer $l$ on $[t_l, t_{l+1})$."""
        # Count the boundaries at or before t rather than floor(t / step): XLA may evaluate
        # t / step as t * (1 / step), which puts t = l * step in layer l - 1. The boundaries
        # are the very `jump_times()` that diffrax steps to, so a solve that stops just
        # before a jump and restarts just after it sees the right layer on both sides.
        t = jnp.asarray(t)
        jumps = jnp.asarray(self.jump_times(), dtype=t.dtype)
        return self.layer(jnp.searchsorted(jumps, t, side="right"))

    def layer(self, index) -> AbstractAttention:
        """The attention operator of layer `index` (an int, or a traced integer)."""
        arrays, static = eqx.partition(self.layers, eqx.is_array)
        return eqx.combine(jax.tree_util.tree_map(lambda a: a[index], arrays), static)


class AbstractFlow(eqx.Module):
    r"""A vector field $\dot x = F(t, x)$ on a space that `simulate` can integrate.

    Every flow here reads the tokens through a map $R$ (`read`), evaluates attention and the
    optional feed-forward term there, and turns the result into a velocity with `project`:

    $$ \dot x_i = \Pi_{x_i}\big( v_t[\mu_{R(x)}](R(x_i)) + f(R(x_i)) \big). $$

    Subclasses give `attention`, `feedforward`, `space`, `read` and `project`; the call as a
    diffrax vector field, `velocity`, `field` and `jump_times` are shared.
    """

    # the order fixes the positional order of the fields: (attention, space, feedforward)
    attention: eqx.AbstractVar[AbstractAttention | Layered]
    space: eqx.AbstractVar[AbstractSpace]
    feedforward: eqx.AbstractVar[FeedForward | None]

    @abc.abstractmethod
    def read(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        """The points attention reads for tokens `x`."""

    @abc.abstractmethod
    def project(self, x: Float[Array, "n d"], v: Float[Array, "n d"]) -> Float[Array, "n d"]:
        """The velocity of tokens `x` given the ambient field `v` at their read points."""

    def attention_at(self, t) -> AbstractAttention:
        """The attention operator acting at time `t` (the current layer of a `Layered`)."""
        return self.attention.at(t)

    def jump_times(self):
        """Times where the field is discontinuous (layer boundaries), or `None`."""
        return self.attention.jump_times()

    def velocity(self, t, x: Float[Array, "n d"], weights=None) -> Float[Array, "n d"]:
        r"""Ambient velocity $v[\mu_{R(x)}](R(x_i)) + f(R(x_i))$ before `project`."""
        y = self.read(x)
        v = self.attention_at(t).unchecked(y, weights)
        if self.feedforward is not None:
            v = v + self.feedforward(y)
        return v

    def __call__(
        self, t, x: Float[Array, "n d"], weights: Float[Array, " n"] | None = None
    ) -> Float[Array, "n d"]:
        """The velocity of every token at time `t`; `weights` are the token weights (diffrax
        passes its `args` here, positionally)."""
        return self.project(x, self.velocity(t, x, weights))

    def field(self, points: Float[Array, "q d"], cloud: Float[Array, "n d"], weights=None, t=0.0):
        """Velocity at arbitrary `points` in the field of `cloud` (cross-attention): for
        quiver and stream plots."""
        y = self.read(points)
        v = self.attention_at(t).cross(y, self.read(cloud), weights)
        if self.feedforward is not None:
            v = v + self.feedforward(y)
        return self.project(points, v)


class AttentionFlow(AbstractFlow):
    r"""The attention flow $\dot x_i = P_{x_i}(v[\mu](x_i) + f(x_i))$ on a space.

    Args:
        attention: an attention operator, or `Layered` for time-dependent weights.
        space: `Euclidean()` (default) or `Sphere()`.
        feedforward: optional `FeedForward` term added to the velocity.

    Call it as `flow(t, x, weights)`: it plugs straight into `diffrax.ODETerm`.
    """

    attention: AbstractAttention | Layered
    space: AbstractSpace = Euclidean()
    feedforward: FeedForward | None = None

    def read(self, x):
        return x

    def project(self, x, v):
        return self.space.tangent(x, v)


class PreNormFlow(AbstractFlow):
    r"""The continuous limit of a pre-normalised residual network: attention reads the
    normalised tokens, the residual stream keeps its norm.

    $$ \dot x_i = v[\mu_{N(x)}](N(x_i)) + f(N(x_i)), \qquad N(x) = x / |x|,
    \qquad \mu_{N(x)} = \sum_j w_j \delta_{N(x_j)}, $$

    the limit $h \to 0$ of $x^{l+1} = x^l + h\, v[\mu_{N(x^l)}](N(x^l))$: the Pre-LN
    transformer (Xiong et al. 2020, "On Layer Normalization in the Transformer
    Architecture") with layer normalisation reduced to $N$ (no centring, no gain). The tokens
    live in $\mathbb{R}^d \setminus \{0\}$ (`space` is `Euclidean()`); the field is invariant
    under $x_i \mapsto c_i x_i$, $c_i > 0$.

    Args:
        attention: an attention operator, or `Layered` for time-dependent weights.
        feedforward: optional `FeedForward` term, also evaluated at $N(x_i)$.
    """

    attention: AbstractAttention | Layered
    feedforward: FeedForward | None = None
    space: AbstractSpace = eqx.field(default=Euclidean(), init=False)

    def read(self, x):
        return Sphere().retract(x)

    def project(self, x, v):
        return v
