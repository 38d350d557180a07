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
# # Attention variants as particle systems
#
# Practitioners replace the softmax kernel $e^{\beta\langle Qx, Ky\rangle}$ by cheaper or
# position-aware ones. Each is one kernel class here, so each is a particle system:
#
# - `Linear`: $\varphi(\sqrt\beta q)\cdot\varphi(\sqrt\beta k)$, $\varphi = \mathrm{elu} + 1$
#   (Katharopoulos et al. 2020), with an $O(n)$ evaluation;
# - `Performer`: positive orthogonal random features, an unbiased estimate of the softmax
#   kernel (Choromanski et al. 2021);
# - `Additive`: $\beta\, a^\top\tanh(W_1 q + W_2 k)$ (Bahdanau et al. 2015);
# - `Rotary`: rotary position embeddings (Su et al. 2021): the interaction depends on the
#   tokens' index difference.
#
# Then two views from Vuckovic, Baratin, Tachet des Combes: softmax rows are
# maximum-entropy distributions (the temperature is the multiplier of an expected-score
# constraint), and a residual attention layer is invertible when $h\,\mathrm{Lip} < 1$.
#
# Set `PARTICLES_SIZE=small` for a quick pass (the test suite does).

# %%
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import particles as P
from particles import metrics as M
from particles import plot
from particles import regularity as R
from particles.invertible import InvertibleNetwork, InvertibleResidual

SMALL = os.environ.get("PARTICLES_SIZE", "full") == "small"
n, d, beta = (12, 3, 4.0) if SMALL else (64, 3, 4.0)
t1 = 6.0 if SMALL else 30.0
key = jax.random.key(0)
kernels = {
    "dot": P.DotProduct(),
    "linear": P.Linear(),
    "performer": P.Performer.random(jax.random.key(1), d, 64),
    "additive": P.Additive.random(jax.random.key(2), d),
    "rotary": P.Rotary(),
}

# %% [markdown]
# ## Linear attention in $O(n)$
# With features, $\sum_j w_j k(x_i, x_j) V x_j = \varphi(q_i)^\top \sum_j w_j \varphi(k_j)
# (V x_j)^\top$: the sum over keys is done once. `linear_attention` agrees with the blocked
# evaluation to rounding and its cost grows linearly.

# %%
attention = P.Attention.identity(d, beta, kernel=P.Linear())
sizes = [256, 1024] if SMALL else [1024, 4096, 16384]
fast = jax.jit(lambda x: P.attention.linear_attention(attention, x))
slow = jax.jit(lambda x: attention(x))
for size in sizes:
    x = P.clouds.sphere_uniform(key, size, d)
    gap = float(jnp.max(jnp.abs(fast(x) - slow(x))))
    timings = []
    for f in (fast, slow):
        f(x).block_until_ready()
        start = time.perf_counter()
        f(x).block_until_ready()
        timings.append(time.perf_counter() - start)
    print(
        f"n = {size:6d}: O(n) {timings[0] * 1e3:7.2f} ms, blocked {timings[1] * 1e3:8.2f} ms, gap {gap:.1e}"
    )

# %% [markdown]
# ## Random features converge like $m^{-1/2}$
# The Performer estimate is unbiased; its error falls like one over the square root of the
# number of features $m$. Its variance grows like $e^{|u + v|^2}$ (Choromanski et al.,
# Lemma 2), so at large $\beta$ the tail is heavy and a few dozen draws see the slope only
# for large $m$; at $\beta = 1/2$ it shows from $m = 8$.

# %%
x = P.clouds.sphere_uniform(key, 16, d)
target = P.Attention.identity(d, 0.5).matrix(x)
ms = np.array([8, 32, 128, 512] if SMALL else [8, 32, 128, 512, 2048])


def rms(m, draws=64):
    def err(k):
        a = P.Attention.identity(d, 0.5, kernel=P.Performer.random(k, d, int(m)))
        return jnp.sum((a.matrix(x) - target) ** 2)

    return float(jnp.sqrt(jnp.mean(jax.vmap(err)(jax.random.split(key, draws)))))


errors = np.array([rms(m) for m in ms])
slope, _ = M.fit_power_law(ms, errors)
print(f"RMS error of the attention matrix against m: slope {slope:.2f} (theory -1/2)")

# %% [markdown]
# ## Rotary: only index differences matter
# Shifting every position by the same amount leaves the field unchanged.

# %%
x = jax.random.normal(key, (8, d))
field = lambda start: P.Attention.identity(d, beta, kernel=P.Rotary(start=start))(x)  # noqa: E731
print("shift by 100:", float(jnp.max(jnp.abs(field(100.0) - field(0.0)))))

# %% [markdown]
# ## Clustering under each kernel, from one start
# Same cloud on $S^2$, $Q = K = V = I$, softmax. The entropy of each token's attention row
# says how many tokens it listens to ($e^{H_i}$): it drops towards $\log m$ inside a
# cluster of $m$ and returns to $\log n$ once everything has merged.

# %%
x0 = P.clouds.sphere_uniform(key, n, d)
ts = jnp.linspace(0.0, t1, 31)
runs, entropy, clusters = {}, {}, {}
for name, kernel in kernels.items():
    a = P.Attention.identity(d, beta, kernel=kernel)
    traj = P.simulate(P.AttentionFlow(a, P.Sphere()), x0, ts)
    runs[name] = traj
    entropy[name] = M.over_time(lambda y, a=a: M.attention_entropy(a, y)[0], traj.xs)
    clusters[name] = M.over_time(M.cluster_count, traj.xs, 1e-2)
    print(f"{name:10s} clusters at t = {t1:g}: {int(clusters[name][-1])}")
names = list(kernels)
series = {
    "clusters": np.stack([clusters[k] for k in names]),
    "entropy": np.stack([jnp.mean(entropy[k], axis=1) for k in names]),
    "entropy_low": np.stack([jnp.quantile(entropy[k], 0.1, axis=1) for k in names]),
    "entropy_high": np.stack([jnp.quantile(entropy[k], 0.9, axis=1) for k in names]),
}
energy = {"dot": M.over_time(M.interaction_energy, runs["dot"].xs, beta)}
fig = plot.variants_figure(ts, series, labels=names, n=n, energy=energy)
plt.show()

# %%
plot.animate(ts, [runs[k].xs for k in names], labels=names, fps=10)

# %% [markdown]
# ## The maximum-entropy dual
# Each softmax row $A_i$ is the distribution closest to the prior $w$ with expected score
# $E_i = \sum_j A_{ij} s_{ij}$; given $E_i$ alone, the dual gives back the temperature.

# %%
attention = P.Attention.random(key, d, beta=2.5)
x = jax.random.normal(key, (10, d))
s = M.attention_scores(attention, x)[0]
E = jnp.sum(attention.matrix(x)[0] * s, axis=1)
recovered = jax.vmap(M.maxent_beta)(s, E)
print("beta recovered from each row's expected score:", np.round(np.asarray(recovered), 8))

# %% [markdown]
# ## Invertible residual attention
# $X \mapsto X + h\,v[\mu_X](X)$ is invertible when $h\,\mathrm{Lip} < 1$; for L2 attention
# with tied keys the library's bound holds on all of $\mathbb{R}^{nd}$, so the inverse is a
# certified fixed-point iteration. A deep network of such layers round-trips in float32.

# %%
with jax.enable_x64(False):
    layers = []
    for k in jax.random.split(key, 8 if SMALL else 32):
        kq, ku = jax.random.split(k)
        Q = jax.random.normal(kq, (d, d)) / np.sqrt(d)
        a = P.Attention(Q, Q, jax.random.normal(ku, (d, d)) @ Q / np.sqrt(d), 1.0, kernel=P.L2())
        layers.append(InvertibleResidual(a, 0.9 / R.lipschitz_bound(a, 16)))
    network = InvertibleNetwork(layers)
    x = jax.random.normal(key, (16, d))
    y = network(x)
    back = network.inverse(y)
    print(
        f"moved by {float(jnp.max(jnp.abs(y - x))):.2f}; round trip error "
        f"{float(jnp.max(jnp.abs(back.x - x))):.1e} (float32), iterations per layer "
        f"{np.asarray(back.iterations).tolist()}"
    )
