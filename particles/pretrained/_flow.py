r"""The real network as a flow: each layer as two flows and two LayerNorm maps.

A post-LN layer of `EncoderLayer` is, in homogeneous coordinates $\tilde x = (x, 1)$,

$$ \mathrm{layer} = \mathrm{LN}_2 \circ \Phi^{F}_1 \circ \mathrm{LN}_1 \circ \Phi^{A}_1
   \quad\text{with one explicit Euler step of size 1 for each flow } \Phi, $$

where $\Phi^A_\tau$ is the flow of the attention field
$\dot{\tilde x}_i = v[\mu_{\tilde x}](\tilde x_i)$ (the library's `AttentionFlow` of the
layer's `Attention`, biases exact, zero velocity in the last coordinate), $\Phi^F_\tau$ the
flow of the feed-forward field $\dot x_i = W_2\,\mathrm{gelu}(W_1 x_i + b_1) + b_2$ (an
`AttentionFlow` whose `FeedForward` is the block and whose attention is the constant field
$b_2$), and $\mathrm{LN}$ the map of `LayerNorm`: centring onto $\mathbf 1^\perp$, scaling
onto the sphere of radius $\sqrt d$ there, then the affine gain and bias. One Euler step of
size 1 is $\tilde x + v$, so the layer is exactly this Lie-Trotter splitting with Euler
steps (Lu et al. 2019, "Understanding and improving transformer from a multi-particle
dynamic system point of view"); solving the same flows exactly (or with `steps` Euler
sub-steps) for unit time gives the continuous network that the real one discretises.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._simulate import simulate
from ..attention import Attention
from ..flows import AttentionFlow
from ._model import Encoder, EncoderLayer, lift

__all__ = [
    "attention_flow",
    "feedforward_flow",
    "flow_layer",
    "flow_network",
    "iterate_layer",
]


def attention_flow(layer: EncoderLayer) -> AttentionFlow:
    """The attention field of `layer` as a flow on lifted tokens $(x, 1)$ (Euclidean)."""
    return AttentionFlow(layer.attention)


def _constant_field(c: Float[Array, " d"]) -> Attention:
    # Q = K = 0 gives uniform softmax weights, and V maps (x, 1) to (c, 0): every token
    # receives exactly c (up to the rounding of an average of equal numbers)
    d = c.shape[0]
    zeros = jnp.zeros((1, 1, d + 1), c.dtype)
    V = jnp.zeros((1, d + 1, d + 1), c.dtype).at[0, :d, d].set(c)
    return Attention(zeros, zeros, V, 1.0)


def feedforward_flow(layer: EncoderLayer) -> AttentionFlow:
    """The feed-forward field $W_2\\,\\mathrm{gelu}(W_1 x + b_1) + b_2$ of `layer` as a flow
    on lifted tokens: the output bias is a constant attention field."""
    return AttentionFlow(_constant_field(layer.feedforward_bias), feedforward=layer.feedforward)


def _solve(flow, x, steps, rtol, atol):
    ts = jnp.array([0.0, 1.0], x.dtype)
    if steps is None:
        return simulate(flow, x, ts, rtol=rtol, atol=atol).final
    return simulate(flow, x, ts, solver=diffrax.Euler(), dt=1.0 / steps).final


def flow_layer(
    layer: EncoderLayer,
    x: Float[Array, "n d"],
    *,
    steps: int | None = 1,
    rtol: float = 1e-6,
    atol: float = 1e-6,
) -> Float[Array, "n d"]:
    r"""$\mathrm{LN}_2 \circ \Phi^F_1 \circ \mathrm{LN}_1 \circ \Phi^A_1 (x)$, the flows
    solved by `simulate`.

    Args:
        layer: an `EncoderLayer`.
        x: tokens `(n, d)`.
        steps: explicit Euler steps of size `1 / steps` per flow; `steps=1` is the network
            layer itself (to rounding); `None` solves the flows exactly (Tsit5, adaptive,
            `rtol`, `atol`).
    """
    d = x.shape[1]
    y = _solve(attention_flow(layer), lift(x), steps, rtol, atol)[:, :d]
    h = layer.attention_norm(y)
    z = _solve(feedforward_flow(layer), lift(h), steps, rtol, atol)[:, :d]
    return layer.output_norm(z)


def flow_network(
    encoder: Encoder, x0: Float[Array, "n d"], *, steps: int | None = 1, **options
) -> Float[Array, "L+1 n d"]:
    """`flow_layer` through every layer of `encoder` in turn (per-layer weights): the
    hidden states $x^0, \\dots, x^L$ of the network (`steps=1`) or of its continuous flow."""

    def body(x, index):
        y = flow_layer(encoder.layer(index), x, steps=steps, **options)
        return y, y

    _, xs = jax.lax.scan(body, x0, jnp.arange(encoder.num_layers))
    return jnp.concatenate([x0[None], xs])


def iterate_layer(
    layer: EncoderLayer, x0: Float[Array, "n d"], depth: int, *, every: int = 1
) -> Float[Array, "T n d"]:
    r"""One real layer with its weights shared to `depth` layers, $x^{k+1} = \mathrm{layer}(x^k)$
    ("if this layer were infinitely deep", Vuckovic et al. 2020): the states $x^0$ and
    every `every`-th one after it, shape `(depth // every + 1, n, d)`."""
    if depth % every:
        raise ValueError(f"depth ({depth}) must be a multiple of every ({every})")

    def block(x, _):
        x = jax.lax.fori_loop(0, every, lambda _, y: layer(y), x)
        return x, x

    _, xs = jax.lax.scan(block, x0, None, length=depth // every)
    return jnp.concatenate([x0[None], xs])
