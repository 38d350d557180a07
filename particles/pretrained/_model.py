r"""The BERT encoder of all-MiniLM-L6-v2 built from the library's own operators.

A post-LN encoder layer (Devlin et al. 2019, "BERT") maps tokens $x_i \in \mathbb{R}^d$ to

$$ h_i = \mathrm{LN}_1\big(x_i + a_i\big), \qquad
   y_i = \mathrm{LN}_2\big(h_i + W_2\, \mathrm{gelu}(W_1 h_i + b_1) + b_2\big), $$

$$ a_i = \sum_{h=1}^{H} \sum_j \operatorname{softmax}_j\Big(\beta
        \langle W^Q_h x_i + b^Q_h,\ W^K_h x_j + b^K_h\rangle\Big)
        W^O_h (W^V_h x_j + b^V_h) + b^O, \qquad \beta = 1/\sqrt{d_k}. $$

**Biases, exactly.** Expanding the logit,
$\beta\langle W^Q x_i + b^Q, W^K x_j + b^K\rangle = \beta x_i^\top W^{Q\top} W^K x_j
+ \beta\, b^{Q\top} W^K x_j + \beta (W^Q x_i + b^Q)^\top b^K$: the key bias $b^K$ enters
only through a term constant along each row $i$, which the softmax cancels (the key bias has
no effect at all); the query bias $b^Q$ adds the per-key offset $\beta\, b^{Q\top} W^K x_j$,
which does not cancel. Since softmax rows sum to one, the value bias becomes the constant
$W^O_h b^V_h$ and the output bias $b^O$ is a constant too. All of it is exact in homogeneous
coordinates $\tilde x = (x, 1) \in \mathbb{R}^{d+1}$: the library's `Attention` with

$$ \tilde Q_h = [W^Q_h \mid b^Q_h], \quad \tilde K_h = [W^K_h \mid b^K_h], \quad
   \tilde V_h = \begin{pmatrix} W^O_h W^V_h & W^O_h b^V_h + b^O / H \\ 0 & 0 \end{pmatrix},
   \quad \beta = 1/\sqrt{32}, $$

($d_k = 32$, $d = 384$, $H = 12$) gives $(a_i, 0)$: the last coordinate never moves.

**LayerNorm** is the map
$\mathrm{LN}(y) = \gamma \odot \sqrt{d}\, P y / \sqrt{|P y|^2 + d\,\varepsilon} + b$,
$P = I - \mathbf{1}\mathbf{1}^\top / d$: centring (projection onto the hyperplane
$\mathbf{1}^\perp$), scaling onto the sphere of radius $\sqrt d$ in it (softened by
$\varepsilon = 10^{-12}$), then the affine gain $\gamma$ and bias $b$.

The weights are sentence-transformers/all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM";
Reimers and Gurevych 2019, "Sentence-BERT").
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..attention import Attention
from ..flows import FeedForward
from ._load import load_config, load_tokenizer, load_weights

__all__ = [
    "Encoder",
    "EncoderLayer",
    "LayerNorm",
    "Tokens",
    "lift",
    "load_encoder",
    "tokenize",
]


def lift(x: Float[Array, "n d"]) -> Float[Array, "n d+1"]:
    """Homogeneous coordinates $\\tilde x = (x, 1)$, in which every bias is linear."""
    return jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)


class LayerNorm(eqx.Module):
    r"""$\mathrm{LN}(y) = \gamma \odot \sqrt{d}\, P y / \sqrt{|P y|^2 + d\varepsilon} + b$,
    token by token: centring, scaling onto the sphere of radius $\sqrt d$ in
    $\mathbf 1^\perp$, then the affine gain and bias (Ba, Kiros, Hinton 2016)."""

    gain: Float[Array, " d"]
    bias: Float[Array, " d"]
    eps: float = eqx.field(static=True)

    def sphere(self, y: Float[Array, "n d"]) -> Float[Array, "n d"]:
        """The centring and scaling part $\\sqrt d\\, P y / \\sqrt{|Py|^2 + d\\varepsilon}$."""
        centred = y - jnp.mean(y, axis=-1, keepdims=True)
        return centred / jnp.sqrt(jnp.mean(centred**2, axis=-1, keepdims=True) + self.eps)

    def __call__(self, y: Float[Array, "n d"]) -> Float[Array, "n d"]:
        z = self.sphere(y)
        return z * jnp.broadcast_to(self.gain, z.shape) + jnp.broadcast_to(self.bias, z.shape)


def _linear(raw, name):
    return np.asarray(raw[f"{name}.weight"]), np.asarray(raw[f"{name}.bias"])


class EncoderLayer(eqx.Module):
    """One post-LN encoder layer: the library's `Attention` (homogeneous coordinates, biases
    exact), the first `LayerNorm`, the feed-forward block (`FeedForward` with exact GELU,
    plus its output bias) and the second `LayerNorm`. See the module docstring."""

    attention: Attention
    attention_norm: LayerNorm
    feedforward: FeedForward
    feedforward_bias: Float[Array, " d"]
    output_norm: LayerNorm

    @classmethod
    def from_weights(cls, raw: dict, prefix: str, heads: int, eps: float) -> EncoderLayer:
        """Build layer `prefix` (e.g. `encoder.layer.0`) from the tensors of a BERT
        checkpoint (`torch.nn.Linear` layout: weight `(out, in)`)."""
        wq, bq = _linear(raw, f"{prefix}.attention.self.query")
        wk, bk = _linear(raw, f"{prefix}.attention.self.key")
        wv, bv = _linear(raw, f"{prefix}.attention.self.value")
        wo, bo = _linear(raw, f"{prefix}.attention.output.dense")
        d = wq.shape[1]
        dk = d // heads

        def per_head(w, b):
            # rows h*dk:(h+1)*dk of the projection belong to head h; the bias becomes a column
            return np.concatenate([w, b[:, None]], axis=1).reshape(heads, dk, d + 1)

        wo_heads = wo.reshape(d, heads, dk).transpose(1, 0, 2)  # (H, d, dk): W^O_h
        wv_heads = wv.reshape(heads, dk, d)
        bv_heads = bv.reshape(heads, dk)
        V = np.zeros((heads, d + 1, d + 1), np.float32)
        V[:, :d, :d] = np.einsum("hek,hkd->hed", wo_heads, wv_heads)
        V[:, :d, d] = np.einsum("hek,hk->he", wo_heads, bv_heads) + bo[None, :] / heads
        attention = Attention(per_head(wq, bq), per_head(wk, bk), V, 1 / math.sqrt(dk))
        w1, b1 = _linear(raw, f"{prefix}.intermediate.dense")
        w2, b2 = _linear(raw, f"{prefix}.output.dense")
        feedforward = FeedForward(
            np.concatenate([w1, np.zeros((w1.shape[0], 1), w1.dtype)], axis=1),
            b1,
            np.concatenate([w2, np.zeros((1, w2.shape[1]), w2.dtype)], axis=0),
            "gelu_exact",
        )

        def norm(name):
            return LayerNorm(
                jnp.asarray(raw[f"{name}.weight"]), jnp.asarray(raw[f"{name}.bias"]), eps
            )

        return cls(
            attention,
            norm(f"{prefix}.attention.output.LayerNorm"),
            feedforward,
            jnp.asarray(b2),
            norm(f"{prefix}.output.LayerNorm"),
        )

    @property
    def dim(self) -> int:
        return self.feedforward_bias.shape[0]

    def attend(self, x: Float[Array, "n d"], weights=None) -> Float[Array, "n d"]:
        """The attention output $a_i$ (biases included), before the residual."""
        return self.attention.unchecked(lift(x), weights)[:, : self.dim]

    def feedforward_out(self, h: Float[Array, "n d"]) -> Float[Array, "n d"]:
        """$W_2\\,\\mathrm{gelu}(W_1 h + b_1) + b_2$."""
        f = self.feedforward(lift(h))[:, : self.dim]
        return f + jnp.broadcast_to(self.feedforward_bias, f.shape)

    def __call__(self, x: Float[Array, "n d"], weights=None) -> Float[Array, "n d"]:
        """The layer $x \\mapsto \\mathrm{LN}_2(h + f(h))$, $h = \\mathrm{LN}_1(x + a)$;
        `weights` zero on padding tokens (their keys drop out exactly)."""
        h = self.attention_norm(x + self.attend(x, weights))
        return self.output_norm(h + self.feedforward_out(h))

    def probabilities(self, x: Float[Array, "n d"], weights=None) -> Float[Array, "h n n"]:
        """Every head's attention probabilities (rows sum to one)."""
        return self.attention.matrix(lift(x), weights)


def _stack(layers):
    arrays = [eqx.filter(layer, eqx.is_array) for layer in layers]
    static = eqx.filter(layers[0], eqx.is_array, inverse=True)
    return eqx.combine(jax.tree_util.tree_map(lambda *a: jnp.stack(a), *arrays), static)


class Encoder(eqx.Module):
    r"""The whole encoder: word, position and type embeddings, their `LayerNorm`, then the
    layers (stored stacked, a leading layer axis on every array, like `Layered`).

    $x^0_i = \mathrm{LN}_0(E_{\mathrm{word}}[t_i] + E_{\mathrm{pos}}[i] + E_{\mathrm{type}}[0])$,
    $x^{l+1} = \mathrm{layer}_l(x^l)$; the sentence embedding is the mean of $x^L_i$ over the
    tokens, normalised (Reimers and Gurevych 2019).
    """

    word: Float[Array, "vocab d"]
    position: Float[Array, "positions d"]
    token_type: Float[Array, "types d"]
    embedding_norm: LayerNorm
    layers: EncoderLayer

    @classmethod
    def from_weights(cls, raw: dict, config: dict) -> Encoder:
        """Build the encoder from a BERT checkpoint's tensors and its `config.json`."""
        heads, eps = config["num_attention_heads"], config["layer_norm_eps"]
        layers = [
            EncoderLayer.from_weights(raw, f"encoder.layer.{l}", heads, eps)
            for l in range(config["num_hidden_layers"])
        ]
        return cls(
            jnp.asarray(raw["embeddings.word_embeddings.weight"]),
            jnp.asarray(raw["embeddings.position_embeddings.weight"]),
            jnp.asarray(raw["embeddings.token_type_embeddings.weight"]),
            LayerNorm(
                jnp.asarray(raw["embeddings.LayerNorm.weight"]),
                jnp.asarray(raw["embeddings.LayerNorm.bias"]),
                eps,
            ),
            _stack(layers),
        )

    @classmethod
    def random(cls, key: PRNGKeyArray, config: dict, std: float = 0.02) -> Encoder:
        """The same architecture initialised as BERT is: every weight matrix and embedding
        $N(0, \\mathrm{std}^2)$ (std = `initializer_range` = 0.02), biases 0, LayerNorm gains
        1 and biases 0 (Devlin et al. 2019)."""
        shapes = _shapes(config)
        keys = jax.random.split(key, len(shapes))
        raw = {}
        for k, (name, shape) in zip(keys, sorted(shapes.items()), strict=True):
            if "LayerNorm.weight" in name:
                raw[name] = np.ones(shape, np.float32)
            elif name.endswith(".bias"):
                raw[name] = np.zeros(shape, np.float32)
            else:
                raw[name] = np.asarray(std * jax.random.normal(k, shape), np.float32)
        return cls.from_weights(raw, config)

    @property
    def num_layers(self) -> int:
        return self.layers.feedforward_bias.shape[0]

    def layer(self, index) -> EncoderLayer:
        """Layer `index` (an int or a traced integer)."""
        arrays, static = eqx.partition(self.layers, eqx.is_array)
        return eqx.combine(jax.tree_util.tree_map(lambda a: a[index], arrays), static)

    def embed(self, ids: Int[Array, " n"]) -> Float[Array, "n d"]:
        """$x^0$: the embeddings' sum through their LayerNorm (one segment, type 0)."""
        n = ids.shape[0]
        if n > self.position.shape[0]:
            raise ValueError(
                f"ids has {n} tokens but the model has {self.position.shape[0]} positions"
            )
        e = (
            self.word[ids]
            + self.position[:n]
            + jnp.broadcast_to(self.token_type[0], (n,) + self.word.shape[1:])
        )
        return self.embedding_norm(e)

    def hidden_states(self, ids: Int[Array, " n"]) -> Float[Array, "L+1 n d"]:
        """$x^0, x^1, \\dots, x^L$: the embedding and every layer's output."""
        x0 = self.embed(ids)

        def body(x, layer):
            y = layer(x)
            return y, y

        _, xs = jax.lax.scan(body, x0, self.layers)
        return jnp.concatenate([x0[None], xs])

    def attentions(self, ids: Int[Array, " n"]) -> Float[Array, "L h n n"]:
        """Every layer's and head's attention probabilities on the way through."""
        xs = self.hidden_states(ids)
        return jax.vmap(lambda layer, x: layer.probabilities(x))(self.layers, xs[:-1])

    def sentence_embedding(self, ids: Int[Array, " n"]) -> Float[Array, " d"]:
        """Mean pooling of the last hidden states over the tokens, normalised to unit norm
        (sentence-transformers' Pooling(mean) then Normalize)."""
        mean = jnp.mean(self.hidden_states(ids)[-1], axis=0)
        return mean / jnp.linalg.norm(mean)


def _shapes(config: dict) -> dict[str, tuple[int, ...]]:
    d, m = config["hidden_size"], config["intermediate_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (config["vocab_size"], d),
        "embeddings.position_embeddings.weight": (config["max_position_embeddings"], d),
        "embeddings.token_type_embeddings.weight": (config["type_vocab_size"], d),
        "embeddings.LayerNorm.weight": (d,),
        "embeddings.LayerNorm.bias": (d,),
    }
    for l in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{l}"
        for name, (out, inp) in {
            "attention.self.query": (d, d),
            "attention.self.key": (d, d),
            "attention.self.value": (d, d),
            "attention.output.dense": (d, d),
            "intermediate.dense": (m, d),
            "output.dense": (d, m),
        }.items():
            shapes[f"{p}.{name}.weight"] = (out, inp)
            shapes[f"{p}.{name}.bias"] = (out,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{p}.{name}.weight"] = (d,)
            shapes[f"{p}.{name}.bias"] = (d,)
    return shapes


class Tokens(eqx.Module):
    """A tokenised text: the ids (with `[CLS]` first and `[SEP]` last) and their strings."""

    ids: Int[Array, " n"]
    strings: tuple[str, ...] = eqx.field(static=True)


@functools.cache
def _tokenizer():
    return load_tokenizer()


def tokenize(text: str, max_tokens: int | None = None) -> Tokens:
    """Token ids of `text` with the model's WordPiece tokenizer; `max_tokens` keeps the
    first ones (then `[SEP]`), as the model's 512 positions require."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string; got {text!r}")
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2 ([CLS] and [SEP]); got {max_tokens}")
    encoding = _tokenizer().encode(text)
    ids, strings = list(encoding.ids), list(encoding.tokens)
    if max_tokens is not None and len(ids) > max_tokens:
        ids, strings = ids[: max_tokens - 1] + ids[-1:], strings[: max_tokens - 1] + strings[-1:]
    return Tokens(jnp.asarray(ids, jnp.int32), tuple(strings))


@functools.cache
def load_encoder() -> Encoder:
    """all-MiniLM-L6-v2 as an `Encoder` (float32), read once from the installed extra."""
    return Encoder.from_weights(load_weights(), load_config())
