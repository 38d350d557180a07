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
# # From a 6-layer network to the flow
#
# A transformer whose layers share their weights is a residual network
# $x^{l+1}_i = x^l_i + h\, v[\mu^l](x^l_i)$: one explicit Euler step of the attention flow
# $\dot x_i = v[\mu](x_i)$ with step $h = T / L$. As the depth $L$ grows the network becomes
# the flow, with an error $O(1/L)$ (Vuckovic, Baratin, Tachet des Combes 2020: infinitely
# deep weight-sharing networks; Geshkovski, Letrouit, Polyanskiy, Rigollet 2023).
#
# This notebook starts from a 6-layer post-normalised network on the sphere $S^2$, puts it
# beside its flow, and measures the error as $L \to \infty$ for several architectures.
# Everything runs in float64: the RK4 "network" reaches errors of $10^{-12}$.
#
# Set `PARTICLES_SIZE=small` for a quick pass (the test suite does).

# %%
import math
import os

import diffrax
import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import particles as P  # noqa: E402
from particles import metrics, networks, plot, studies  # noqa: E402

SMALL = os.environ.get("PARTICLES_SIZE", "full") == "small"
n, d, T, beta = (16, 3, 3.0, 4.0) if SMALL else (64, 3, 3.0, 4.0)
depths = [6, 12, 24] if SMALL else [6, 12, 24, 48, 96, 192, 384, 768]

# %% [markdown]
# ## A 6-layer network and its flow
# Post-normalisation (Post-LN): each layer is a residual update followed by a normalisation
# back onto the sphere, $x^{l+1} = N(x^l + h\, v[\mu^l](x^l))$, $N(x) = x / |x|$. On the
# sphere $N(x + h v) = N(x + h' P_x v)$ with $h' = h / (1 + h \langle x, v\rangle)$,
# $P_x = I - x x^\top$: a projected Euler step with a slightly different step, so its limit
# is the attention flow on the sphere, $\dot x_i = P_{x_i} v[\mu](x_i)$, with
# $Q = K = V = I$ here: the model in which tokens cluster. (The projected layer
# $N(x + h P_x v)$, `scheme="euler"` on the sphere, has the same limit.)

# %%
x0 = P.clouds.sphere_uniform(jax.random.key(0), n, d)
attention = P.Attention.identity(d, beta)
flow = P.AttentionFlow(attention, P.Sphere())
shallow = P.ResidualNetwork(flow, 6, T, scheme="post-norm")
layers = shallow.trajectory(x0)
limit = P.simulate(
    flow, x0, shallow.times(x0.dtype), solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-12
)
gap = np.asarray(studies.max_distance(layers.xs, limit.xs))
print("layer:               ", "  ".join(f"{l:7d}" for l in range(7)))
print("max |x^l - x(l h)|:  ", "  ".join(f"{e:7.1e}" for e in gap))
print(f"off the sphere: {float(P.sphere_drift(layers.xs).max()):.1e}")

# %% [markdown]
# The layers of the network (top) and the flow at the same times (bottom).

# %%
fig = plot.snapshots(layers.ts, layers.xs, [0, 2, 4, 6], time_label="t")
fig.suptitle("6-layer post-normalised network")
fig = plot.snapshots(limit.ts, limit.xs, [0, 2, 4, 6], time_label="t")
fig.suptitle("the flow it discretises")

# %% [markdown]
# Side by side, one frame per layer.

# %%
plot.animate(
    layers.ts,
    [np.asarray(layers.xs), np.asarray(limit.xs)],
    labels=["6-layer network", "flow"],
    metrics={"max distance": gap},
    fps=2,
    dpi=70,
    progress=False,
)

# %% [markdown]
# ## Deeper and deeper
# The same weights, more and thinner layers. The error at time $T$ against a tight dopri8
# solve of the flow falls like $L^{-p}$, $p$ the order of the layer map: 1 for residual
# layers with or without normalisation and for the Macaron layer (`"strang-euler"`: half a
# feed-forward step, attention, half a feed-forward step, each an Euler step), 2 for Heun
# layers and for a genuine Strang splitting (`"strang"`, Heun sub-steps), 4 for RK4 layers
# (the same weights, four attention evaluations per layer).
#
# From here on the weights are random ($Q, K, V$ with entries $N(0, 1/d)$, $\beta = 1$):
# with $V = I$ the tokens of the Euclidean networks grow like $e^t$, the attention logits
# like $e^{2t}$, and the error constants explode.

# %%
key_attention, key_ff, key_layers = jax.random.split(jax.random.key(1), 3)
attention = P.Attention.random(key_attention, d, beta=1.0)
feedforward = P.FeedForward.random(key_ff, d, 16, "tanh")
shown = (
    ["residual", "post-norm", "strang", "rk4"]
    if SMALL
    else [
        "residual",
        "post-norm",
        "projected-post-norm",
        "pre-norm",
        "strang-euler",
        "strang",
        "heun",
        "rk4",
    ]
)
# One tight solve of each flow serves every depth: it is saved on the layer grid of depth
# M, and the grid of any depth L dividing M is every (M / L)-th of its times, bit for bit.
profile_depth, collapse_depths = 24, depths[:4]
M = math.lcm(profile_depth, *collapse_depths)
errors, slopes, profile, collapse = {}, {}, {}, {}
for name in shown:
    flow_v, scheme = studies.variant(name, attention, feedforward=feedforward)
    fine = P.simulate(
        flow_v, x0, networks.layer_times(M, T), solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-12
    )
    errors[name] = np.asarray(
        studies.final_errors(flow_v, x0, depths, T, scheme=scheme, reference=fine.final)
    )
    slopes[name], _ = metrics.fit_power_law(depths, errors[name], floor=1e-11)
    print(f"{name:10s} slope {slopes[name]:6.2f}   errors", *(f"{e:.1e}" for e in errors[name]))

    def along_depth(L, flow_v=flow_v, scheme=scheme, fine=fine):
        net = P.ResidualNetwork(flow_v, L, T, scheme=scheme)
        return np.asarray(studies.depth_error(net, x0, reference=fine.xs[:: M // L]))

    profile[name] = along_depth(profile_depth)
    if name == "residual":
        collapse = {L: (networks.layer_times(L, T), along_depth(L)) for L in collapse_depths}
fig = plot.depth_convergence_figure(depths, errors, slopes, floor=1e-11)

# %% [markdown]
# ## Error along depth
# Layer $l$ against the flow at $t_l = l h$, for a depth of 24. Multiplied by $L$, the
# residual network's error along depth is one curve: the error is $O(1/L)$ uniformly in
# time, not only at $T$.

# %%
fig = plot.depth_error_figure(
    networks.layer_times(profile_depth, T), profile, collapse=collapse, order=1
)

# %% [markdown]
# ## Layers with their own weights
# Six weight sets $(Q_l, K_l, V_l)$, one per layer of the 6-layer network, are a flow whose
# weights are piecewise constant in time (`Layered`). The 6-layer network is the Euler scheme
# of that flow on the layer grid; repeating each layer $k$ times with step $h / k$ converges
# to it as $k \to \infty$.

# %%
layer_keys = jax.random.split(key_layers, 6)
weights_per_layer = jax.vmap(lambda k: P.Attention.random(k, d, beta=1.0))(layer_keys)
layered = P.AttentionFlow(P.Layered(weights_per_layer, T), P.Sphere())
repeats = [1, 2, 4] if SMALL else [1, 2, 4, 8, 16, 32, 64]
layered_depths = [6 * k for k in repeats]
layered_errors = np.asarray(studies.final_errors(layered, x0, layered_depths, T))
print("layers per weight set:", repeats)
print("error at T:           ", " ".join(f"{e:.1e}" for e in layered_errors))
print(f"slope {metrics.fit_power_law(layered_depths, layered_errors)[0]:.2f}")
