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
# # How smooth is attention?
#
# Self-attention maps a cloud $X = (x_1, \dots, x_n)$ to the velocities
# $F(X) = (v[\mu_X](x_i))_i$, a map $\mathbb{R}^{nd} \to \mathbb{R}^{nd}$. This notebook
# measures its local Lipschitz constant $\|DF(X)\|_2$ matrix-free, checks it against the
# dense Jacobian, reproduces the $\sqrt{n}$ law of Castin, Ablin, Peyré (2024) on a cloud
# where one token is attended by all the others, compares with the upper bounds, and
# follows mis-specified inputs (noise, dropped and duplicated tokens) through the flow in
# Wasserstein distance (Vuckovic et al. 2020).
#
# The upper bounds are the papers' own (`castin_bound`: Castin et al., Theorem 3.3;
# `kim_bound`: Kim et al., Theorem 3.2) next to sharper ones derived here (`softmax_bound`,
# `l2_bound`; each docstring holds its proof).
#
# Set `PARTICLES_SIZE=small` for a quick pass (the test suite does).

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import particles as P
from particles import metrics as M
from particles import plot
from particles import regularity as R
from particles import wasserstein as W

SMALL = os.environ.get("PARTICLES_SIZE", "full") == "small"
ns = [2, 4, 8] if SMALL else [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
d, beta, radius = 3, 1.0, 5.0
attention = P.Attention.identity(d, beta)

# %% [markdown]
# ## Matrix-free against dense
# `lipschitz` runs LOBPCG on $DF^\top DF$ with one `jvp` and one `vjp` per iteration;
# `lipschitz_dense` takes the singular values of the full $nd \times nd$ Jacobian.

# %%
x = P.clouds.ball_uniform(jax.random.key(0), 8, d, radius)
est = R.lipschitz(attention, x, tol=1e-6)
print(
    f"matrix-free {float(est.value):.6f} in {int(est.iterations)} iterations "
    f"(converged: {bool(est.converged)}); dense {float(R.lipschitz_dense(attention, x)):.6f}"
)

# %% [markdown]
# ## One token attended by all the others
# The leader sits at $R u$, the others at $R u / 2$: their logit gap towards it is
# $\beta R^2 / 4 = 6.25$, so they follow it while $(n - 1)e^{-6.25} \ll 1$, and moving it
# moves $n - 1$ outputs: $\|DF\| \approx \sqrt{n - 1}$. Past $n \approx e^{6.25} \approx 518$
# the leader loses its followers and the growth stops. `adversarial_cloud` with no offset
# picks the gap $\Delta^*$ that maximises the estimate $p(1 + (1 - p)\Delta)$: the root of
# $(2p - 1)\Delta = 2$, so the followers attend to the leader with $p^* = 1/2 + 1/\Delta^*$
# (0.92, 0.80, 0.73, 0.68 at $n$ = 2, 8, 32, 128: far from $1/2$ at moderate $n$), which
# does better at moderate $n$. I.i.d. clouds in the same ball stay bounded (the mean-field
# regime).


# %%
@jax.jit
def constants_at(clouds):
    return jax.vmap(lambda c: R.lipschitz(attention, c).value)(clouds)


rows = []
for n in ns:
    clouds = jnp.stack(
        [
            R.adversarial_cloud(attention, n, radius, offset=0.5),
            R.adversarial_cloud(attention, n, radius),
            P.clouds.ball_uniform(jax.random.key(n), n, d, radius),
        ]
    )
    rows.append(np.asarray(constants_at(clouds)))
rows = np.array(rows)
series = {"leader, gap 6.25": rows[:, 0], "leader, gap ~log n": rows[:, 1], "iid ball": rows[:, 2]}
cut = [n for n in ns if n <= 32]
exponent, prefactor = M.fit_power_law(cut, rows[: len(cut), 0])
print(f"fit over n = {cut[0]}..{cut[-1]}: constant ~ {prefactor:.2f} n^{exponent:.3f}")
fig = plot.lipschitz_vs_n(
    ns,
    series,
    bounds={
        "Castin et al. Thm 3.3": np.asarray(R.castin_bound(attention, np.array(ns), radius)),
        "ours": np.asarray(R.softmax_bound(attention, np.array(ns), radius)),
    },
    fits={
        "leader, gap 6.25": {
            "exponent": exponent,
            "prefactor": prefactor,
            "n_range": [cut[0], cut[-1]],
        }
    },
    threshold=float(np.exp(beta * radius**2 / 4)) if ns[-1] > 518 else None,
    title="Q = K = V = I, d = 3, $\\beta$ = 1, R = 5",
)

# %% [markdown]
# ## Searching for worse clouds
# `worst_cloud` climbs the constant by projected gradient ascent (through a few warm-started
# power iterations). At small $n$ it finds far worse clouds than the leader construction:
# there the $n$-independent term $\beta\,\mathrm{Cov}$ of the bound dominates (a token
# attending evenly to two far-apart tokens).

# %%
n = 8
found = R.worst_cloud(
    attention,
    P.clouds.ball_uniform(jax.random.key(1), n, d, radius),
    radius,
    steps=20 if SMALL else 200,
)
print(
    f"n = {n}: searched {float(R.lipschitz(attention, found.cloud).value):.2f}, leader "
    f"{float(R.lipschitz(attention, R.adversarial_cloud(attention, n, radius)).value):.2f}, "
    f"bounds {float(R.softmax_bound(attention, n, radius)):.1f} (ours), "
    f"{float(R.castin_bound(attention, n, radius)):.1f} (Castin et al.)"
)
fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
ax.plot(np.asarray(found.history))
ax.set_xlabel("ascent step")
ax.set_ylabel("Lipschitz constant")

# %% [markdown]
# ## Dot-product attention is not globally Lipschitz; L2 attention is
# On $x = (R u, -R u, 0)$ the middle token attends $1/3$ to each, and moving it along $u$
# changes its velocity by $1/3 + (2/3)\beta R^2$: the constant grows like $R^2$. L2
# attention with tied keys $K = Q$ (Kim, Papamakarios, Mnih 2021) stays below an
# $R$-independent bound.

# %%
u = jnp.array([0.0, 0.0, 1.0])
radii = jnp.geomspace(0.5, 32.0, 4 if SMALL else 13)
clouds = jax.vmap(lambda r: jnp.stack([r * u, -r * u, 0 * u]))(radii)
l2 = P.Attention.identity(d, beta, kernel=P.L2())
fig = plot.lipschitz_vs_radius(
    radii,
    {
        "dot": np.asarray(jax.vmap(lambda c: R.lipschitz(attention, c).value)(clouds)),
        "L2 (tied)": np.asarray(jax.vmap(lambda c: R.lipschitz(l2, c).value)(clouds)),
    },
    bounds={
        "1/3 + 2/3 R^2 (lower, dot)": 1 / 3 + 2 / 3 * np.asarray(radii) ** 2,
        "L2: Kim et al. Thm 3.2": float(R.kim_bound(l2, 3)),
        "L2: ours": float(R.l2_bound(l2, 3)),
    },
    title="n = 3, $x = (Ru, -Ru, 0)$",
)

# %% [markdown]
# ## Mis-specified inputs through the flow
# On the sphere, a clean cloud and copies with noise, 25% of tokens dropped (weight 0)
# and 25% duplicated (weight doubled) follow the flow; their Wasserstein distance $W_1$
# stays below $e^{L t} W_1(0)$ with $L$ from `growth_rate_bound`. That bound is valid but
# far from sharp here ($L = 25.2$ against measured rates near 0.3; $e^{L t} W_1(0)$ passes
# the sphere's diameter 2 within $t \approx 0.15$), and it depends on $|V|$ only, so it
# cannot tell a flow from its time reversal. The tests check the Grönwall inequality where
# it is sharp: two symmetric pairs on the circle, with the local rate read along the
# trajectory.

# %%
m = 16 if SMALL else 128
flow = P.AttentionFlow(attention, P.Sphere())
x0 = P.clouds.sphere_uniform(jax.random.key(2), m, d)
uniform = jnp.full((m,), 1 / m)
inputs = {
    "noise": R.misspecify(jax.random.key(3), x0, "noise", 0.05, space=P.Sphere()),
    "drop": R.misspecify(jax.random.key(4), x0, "drop", 0.25),
    "duplicate": R.misspecify(jax.random.key(5), x0, "duplicate", 0.25),
}
ts = jnp.linspace(0.0, 1.0 if SMALL else 10.0, 6 if SMALL else 51)
clean = P.simulate(flow, x0, ts, weights=uniform).xs
distances = {}
for kind, (y0, w) in inputs.items():
    ys = P.simulate(flow, y0, ts, weights=w).xs
    distances[kind] = np.asarray(
        jax.vmap(lambda a, b, w=w: W.wasserstein(a, b, uniform, w, p=1))(clean, ys)
    )
rate = float(R.growth_rate_bound(flow))
for kind, dist in distances.items():
    print(
        f"{kind:9s}: W1 {dist[0]:.4f} -> {dist[-1]:.4f}, rate {R.separation_rate(ts, dist):.3f} (bound {rate:.1f})"
    )
fig = plot.wasserstein_separation(ts, distances, rate=rate, title=f"n = {m}, $\\beta$ = {beta:g}")

# %% [markdown]
# ## The field moves little when the measure moves little
# $\sup_z |v[\mu](z) - v[\nu](z)| \le L_\mu W_1(\mu, \nu)$; the measured ratio sits well
# below the derived $L_\mu$.

# %%
gaps, w1s = {}, {}
for kind, amounts in {"noise": [0.01, 0.05, 0.2], "drop": [0.1, 0.3, 0.5]}.items():
    pairs = [R.misspecify(jax.random.key(7), x0, kind, a, space=P.Sphere()) for a in amounts]
    gaps[kind] = [float(R.field_gap(flow, x0, y, None, w)) for y, w in pairs]
    w1s[kind] = [float(W.wasserstein(x0, y, None, w, p=1)) for y, w in pairs]
fig = plot.field_vs_wasserstein(w1s, gaps, slope=float(R.measure_lipschitz_bound(flow)))
