# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A real transformer as a particle system
#
# sentence-transformers/all-MiniLM-L6-v2 (a 6-layer BERT encoder, 12 heads, $d = 384$) loaded
# into the library's own operators: each layer's attention is a `P.Attention` in homogeneous
# coordinates $(x, 1)$, where the query, key, value and output biases are exact (the key
# bias cancels under softmax; the query bias adds a per-key offset). Its feed-forward block
# is a `P.FeedForward`, its LayerNorm the map "centre, scale onto the sphere of radius
# $\sqrt d$, then gain and bias". Needs the extra: `pip install -e ".[pretrained]"` (no
# torch).
#
# Set `PARTICLES_SIZE=small` for a quick pass (the test suite does).

# %%
import os

import jax
import matplotlib.pyplot as plt
import numpy as np

import particles.pretrained as PP
from particles import metrics as M

SMALL = os.environ.get("PARTICLES_SIZE", "full") == "small"
encoder = PP.load_encoder()
tokens = PP.tokenize("The quick brown fox jumps over the lazy dog.")
print(tokens.strings)
hidden = encoder.hidden_states(tokens.ids)  # (7, n, 384): embeddings, then every layer
print(hidden.shape, encoder.sentence_embedding(tokens.ids)[:4])

# %% [markdown]
# ## Attention probabilities of real heads
# `Attention.matrix` on the lifted tokens gives each head's softmax matrix, as the reference
# implementation returns it (the tests pin them to 1e-4; measured below 1e-6).

# %%
probabilities = encoder.attentions(tokens.ids)  # (6, 12, n, n)
fig, axes = plt.subplots(1, 4, figsize=(13, 3.4), layout="constrained")
for ax, (layer, head) in zip(axes, [(0, 0), (2, 5), (4, 3), (5, 11)], strict=True):
    ax.imshow(probabilities[layer, head], vmin=0, vmax=1, cmap="magma")
    ax.set_title(f"layer {layer}, head {head}", fontsize=9)
    ax.set_xticks(range(len(tokens.strings)), tokens.strings, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tokens.strings)), tokens.strings, fontsize=7)

# %% [markdown]
# ## The network against its continuous flow
# One layer is $\mathrm{LN}_2 \circ \Phi^F_1 \circ \mathrm{LN}_1 \circ \Phi^A_1$ with one
# Euler step of size 1 per flow: exactly the network. Finer steps solve the same flows.

# %%
steps = [1, 2, 8] if SMALL else [1, 2, 4, 8, 32, 128]
gaps = []
for s in steps:
    flow = PP.flow_network(encoder, hidden[0], steps=s)
    gaps.append(float(np.linalg.norm(flow[-1] - hidden[-1]) / np.linalg.norm(hidden[-1])))
print(dict(zip(steps, np.round(gaps, 4), strict=True)))

# %% [markdown]
# ## One real layer, infinitely deep
# Each layer iterated with its own weights: token directions on the LayerNorm sphere merge
# into clusters.

# %%
depth, every = (20, 2) if SMALL else (400, 4)
fig, ax = plt.subplots(figsize=(6, 3.6))
for l in range(encoder.num_layers):
    xs = PP.iterate_layer(encoder.layer(l), hidden[l], depth, every=every)
    counts = jax.vmap(lambda u: M.cluster_count(u, 0.05))(PP.directions(xs))
    ax.plot(np.arange(0, depth + 1, every) + 1, counts, label=f"layer {l}")
ax.set_xscale("log")
ax.set_xlabel("iterations + 1")
ax.set_ylabel("clusters (tol 0.05)")
ax.legend(fontsize=8)

# %% [markdown]
# ## What V and Q^T K say
# Leading eigenvalues of the summed value map and of the symmetrised $\beta Q^\top K$, on
# the hyperplane where LayerNorm lives.

# %%
for l in range(encoder.num_layers):
    s = PP.layer_spectrum(encoder.layer(l))
    print(
        f"layer {l}: V {np.round(s.value_eigenvalues, 3)}, "
        f"sym(beta Q^T K) {np.round(s.qk_eigenvalues, 3)}, positive {float(s.qk_positive):.2f}"
    )

# %% [markdown]
# ## How smooth is a real attention layer?
# The local Lipschitz constant of layer 0's attention on real text against $n$, and a
# random initialisation with BERT's std 0.02 beside it.

# %%
ns = [2, 4] if SMALL else [2, 4, 8, 16, 32, 64]
ids = PP.tokenize(PP.TEXT).ids
random = PP.Encoder.random(jax.random.key(0), PP.load_config())
for name, model in {"pretrained": encoder, "random": random}.items():
    values = [
        float(
            PP.layer_lipschitz(
                model.layer(0), model.hidden_states(ids[:n])[0], False, jax.random.key(1)
            ).value
        )
        for n in ns
    ]
    print(name, dict(zip(ns, np.round(values, 3), strict=True)))
