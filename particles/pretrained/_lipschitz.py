r"""How smooth is a real attention layer? Castin, Ablin, Peyré (2024) on all-MiniLM-L6-v2.

The local Lipschitz constant $\|DF(X)\|_2$ (`particles.regularity.lipschitz`, matrix-free)
of two maps of a real layer, on clouds $X \in \mathbb{R}^{n \times d}$:

- `norm=False`: the attention output $F(X)_i = a_i(X)$, all 12 heads, biases included;
- `norm=True`: the post-LN attention sub-block $F(X)_i = \mathrm{LN}_1(x_i + a_i(X))$.

Clouds: the real hidden states $x^l$ entering layer $l$ for the first $n$ tokens of a text;
i.i.d. Gaussian tokens $N(0, I_d)$ (norm about $\sqrt d$, the LayerNorm radius); and the
adversarial one-leader cloud of `particles.regularity.adversarial_cloud`, built in
$\mathbb{R}^d$ from the head whose symmetrised $W^{Q\top}_h W^K_h$ has the eigenvalue of
largest modulus (biases dropped for the construction only; the whole layer is measured), in
the ball of radius $R$. Castin et al. prove $\mathrm{Lip} = O(\sqrt n)$ on a ball, reached
when one token is attended by all, and bounded Lipschitz constants in the mean-field regime
(i.i.d. tokens).

**Bounds.** In homogeneous coordinates the attention map is a plain multi-head softmax
`Attention` on $\tilde x = (x, 1)$, and $DF$ with respect to $x$ is a restriction of $DF$
with respect to $\tilde x$, so `castin_bound` and `softmax_bound` of that operator on the
ball of radius $\sqrt{R^2 + 1}$ ($R$ the largest token norm of the cloud) bound the
`norm=False` constant.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ..attention import Attention
from ..regularity import adversarial_cloud, castin_bound, lipschitz, softmax_bound
from ._model import EncoderLayer

__all__ = [
    "adversarial_tokens",
    "attention_map",
    "gaussian_tokens",
    "layer_bounds",
    "layer_lipschitz",
    "lipschitz_sweep",
]


def attention_map(layer: EncoderLayer, norm: bool) -> Callable:
    """$X \\mapsto a(X)$ (`norm=False`) or $X \\mapsto \\mathrm{LN}_1(X + a(X))$ (`norm=True`)."""
    if norm:
        return lambda x: layer.attention_norm(x + layer.attend(x))
    return layer.attend


@eqx.filter_jit
def layer_lipschitz(
    layer: EncoderLayer,
    x: Float[Array, "n d"],
    norm: bool,
    key: PRNGKeyArray,
    tol: float = 1e-3,
    max_iters: int = 300,
):
    """The local Lipschitz constant $\\|DF(X)\\|_2$ of `attention_map(layer, norm)` at `x`
    (a `LipschitzEstimate`: value, iterations, converged)."""
    return lipschitz(attention_map(layer, norm), x, key=key, tol=tol, max_iters=max_iters)


def _plain_head(layer: EncoderLayer) -> Attention:
    # the head whose sym(Q^T K) has the eigenvalue of largest modulus, biases dropped
    d = layer.dim
    Q, K = layer.attention.Q[:, :, :d], layer.attention.K[:, :, :d]
    M = jnp.einsum("hkd,hke->hde", Q, K)
    top = jnp.max(jnp.abs(jnp.linalg.eigvalsh((M + jnp.swapaxes(M, 1, 2)) / 2)), axis=1)
    h = int(jnp.argmax(top))
    return Attention(Q[h], K[h], layer.attention.V[h, :d, :d], layer.attention.beta)


def adversarial_tokens(layer: EncoderLayer, n: int, radius: float) -> Float[Array, "n d"]:
    """The one-leader cloud of Castin et al. (`particles.regularity.adversarial_cloud`) for
    the layer's most selective head, in the ball of radius `radius`."""
    return adversarial_cloud(_plain_head(layer), n, radius)


def layer_bounds(layer: EncoderLayer, n, radius) -> dict[str, Float[Array, "..."]]:
    """`castin_bound` and `softmax_bound` of the layer's attention (homogeneous
    coordinates, all heads) for clouds in the ball of radius `radius`: upper bounds on the
    `norm=False` constant."""
    r = jnp.sqrt(jnp.asarray(radius) ** 2 + 1)
    return {
        "castin": castin_bound(layer.attention, n, r),
        "ours": softmax_bound(layer.attention, n, r),
    }


def gaussian_tokens(key: PRNGKeyArray, n: int, d: int, dtype=jnp.float32) -> Float[Array, "n d"]:
    """i.i.d. tokens $N(0, I_d)$ (norm about $\\sqrt d$: the LayerNorm radius)."""
    return jax.random.normal(key, (n, d), dtype)


def max_norm(x) -> float:
    """The radius of the smallest centred ball holding the cloud."""
    return float(np.max(np.linalg.norm(np.asarray(x), axis=-1)))


INPUTS = ("text", "gaussian", "adversarial")
MAPS = {"attention": False, "with LayerNorm": True}


def lipschitz_sweep(
    encoders: dict,
    ids,
    ns,
    layers,
    *,
    key: PRNGKeyArray,
    radius: float,
    tol: float = 1e-3,
    max_iters: int = 300,
    fit_n_max: int = 32,
    plateau_n_min: int = 64,
) -> dict:
    r"""Local Lipschitz constants of real (and randomly initialised) attention layers against
    the number of tokens $n$.

    Args:
        encoders: `{name: Encoder}`, e.g. the pretrained model and `Encoder.random`.
        ids: token ids of a text of at least `max(ns)` tokens; the real cloud for $n$ is the
            hidden state entering the layer for the first $n$ tokens (`[CLS]` first, the
            last token cut, no `[SEP]`).
        ns: token counts; layers: layer indices.
        key: PRNG key of the Gaussian clouds and of the iterations' start vectors.
        radius: radius of the adversarial cloud's ball.
        fit_n_max: the $\sqrt n$ regime: exponents fitted over $n \le$ `fit_n_max`.
        plateau_n_min: the mean-field regime: exponents fitted over $n \ge$ `plateau_n_min`.

    Returns:
        `{"values": {model: {layer: {input: {map: (len(ns),)}}}}, "converged": ...same...,
        "bounds": {model: {layer: {"castin", "ours", "radius"}}}, "fits": {model: {layer:
        {input: {map: {"small_n", "large_n"}}}}}}` with each fit `{"exponent",
        "prefactor"}` of a power law $c\, n^{p}$ (or `None` with fewer than 2 points).
    """
    from ..metrics import fit_power_law

    ns = [int(n) for n in ns]
    values, converged, bounds, fits = {}, {}, {}, {}
    for name, encoder in encoders.items():
        values[name], converged[name], bounds[name], fits[name] = {}, {}, {}, {}
        hidden = {n: encoder.hidden_states(ids[:n]) for n in ns}
        for l in layers:
            layer = encoder.layer(l)
            d = layer.dim
            clouds = {
                "text": {n: hidden[n][l] for n in ns},
                "gaussian": {
                    n: gaussian_tokens(jax.random.fold_in(key, n), n, d, hidden[n].dtype)
                    for n in ns
                },
                "adversarial": {n: adversarial_tokens(layer, n, radius) for n in ns},
            }
            row_v, row_c, row_f = {}, {}, {}
            largest = 0.0
            for kind, by_n in clouds.items():
                row_v[kind], row_c[kind], row_f[kind] = {}, {}, {}
                largest = max(largest, *(max_norm(x) for x in by_n.values()))
                for label, norm in MAPS.items():
                    estimates = [
                        layer_lipschitz(
                            layer, by_n[n], norm, jax.random.fold_in(key, l), tol, max_iters
                        )
                        for n in ns
                    ]
                    v = np.array([float(e.value) for e in estimates])
                    row_v[kind][label] = v
                    row_c[kind][label] = all(bool(e.converged) for e in estimates)
                    row_f[kind][label] = {
                        "small_n": _fit(ns, v, lambda n: n <= fit_n_max, fit_power_law),
                        "large_n": _fit(ns, v, lambda n: n >= plateau_n_min, fit_power_law),
                    }
            b = layer_bounds(layer, np.asarray(ns, float), largest)
            bounds[name][f"layer {l}"] = {
                "castin": np.asarray(b["castin"]),
                "ours": np.asarray(b["ours"]),
                "radius": largest,
            }
            values[name][f"layer {l}"] = row_v
            converged[name][f"layer {l}"] = row_c
            fits[name][f"layer {l}"] = row_f
    return {
        "ns": np.asarray(ns),
        "values": values,
        "converged": converged,
        "bounds": bounds,
        "fits": fits,
    }


def _fit(ns, values, keep, fit_power_law):
    mask = np.array([keep(n) for n in ns])
    if mask.sum() < 2:
        return None
    exponent, prefactor = fit_power_law(np.asarray(ns, float)[mask], values[mask])
    return {"exponent": float(exponent), "prefactor": float(prefactor)}
