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
# # Clustering: when and how tokens collapse
#
# On the sphere with $Q = K = V = I$, almost every cloud of tokens collapses to a single
# point under self-attention; at large $\beta$ it first lingers in configurations of
# several clusters (Geshkovski, Letrouit, Polyanskiy, Rigollet 2023). This notebook
#
# 1. measures clusters over time in two ways (a tolerance, and the tolerance-free
#    effective rank of the Gram matrix), with labels that follow each cluster;
# 2. checks the one configuration we can solve by hand: the equiangular cloud;
# 3. estimates the phase diagram $P(\text{one cluster at } t)$ over $(t, \beta)$ with one
#    vmapped ensemble, and looks at what that ensemble costs.
#
# Set `PARTICLES_SIZE=small` for a quick pass (the test suite does).

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from scipy.integrate import solve_ivp

import particles as P
from particles import closedforms, metrics, plot, studies

SMALL = os.environ.get("PARTICLES_SIZE", "full") == "small"
n, d, frames = (24, 3, 41) if SMALL else (64, 3, 161)
runs, num_betas = (16, 4) if SMALL else (512, 16)

# %% [markdown]
# ## One cluster on $S^2$, SA and USA
# The same random start under softmax (SA) and unnormalized (USA) attention, $\beta = 2$.
# `cluster_series` gives every metric per frame; `track_clusters` labels clusters
# consistently over time, so a cluster keeps its colour through merges.

# %%
beta = 2.0
x0 = P.clouds.sphere_uniform(jax.random.key(0), n, d)
ts = jnp.linspace(0.0, 30.0, frames)
runs_by_name = {}
for name, norm in (("SA", P.Softmax()), ("USA", P.Unnormalized())):
    flow = P.AttentionFlow(P.Attention.identity(d, beta, normalization=norm), P.Sphere())
    runs_by_name[name] = P.simulate(flow, x0, ts, rtol=1e-6, atol=1e-7)
series = {
    name: metrics.cluster_series(traj.xs, beta, tol=1e-2) for name, traj in runs_by_name.items()
}
for name, traj in runs_by_name.items():
    t_one = float(metrics.time_to_one_cluster(ts, traj.xs, 1e-3))
    print(f"{name}: {int(traj.num_steps)} steps, one cluster from t = {t_one:.3g}")
plot.run_curves(
    ts,
    {k: np.stack([series[m][k] for m in series]) for k in ("clusters", "effective_rank", "energy")},
    labels=list(series),
)
plt.show()

# %%
labels = metrics.track_clusters(runs_by_name["SA"].xs, 1e-2)
plot.snapshots(ts, runs_by_name["SA"].xs, clusters=labels, singletons="0.65")
plt.show()

# %% [markdown]
# ## The equiangular cloud: a closed form
# If all $\langle x_i, x_j\rangle = \rho$, the cloud stays equiangular and
# $\dot\rho = \frac{2}{n} e^{\beta\rho}(1-\rho)(1+(n-1)\rho)$ (USA) or
# $\dot\rho = \frac{2(1-\rho)(1+(n-1)\rho)}{e^{\beta(1-\rho)} + n - 1}$ (SA); see the
# derivation in `closedforms.equiangular_rate`. We compare the simulated inner products
# with an independent scipy solution of that scalar ODE, in float64.

# %%
jax.config.update("jax_enable_x64", True)
m, rho0, t_eq = 6, -0.15, 6.0
x_eq = P.clouds.equiangular(m, m, rho0, key=jax.random.key(1))
ts_eq = jnp.linspace(0.0, t_eq, 25)
fig, ax = plt.subplots(figsize=(5, 3.4), layout="constrained")
# at small size one normalization (each costs a compilation); the tests check both
for k, norm in enumerate([P.Softmax()] if SMALL else [P.Softmax(), P.Unnormalized()]):
    flow = P.AttentionFlow(P.Attention.identity(m, 1.0, normalization=norm), P.Sphere())
    traj = P.simulate(flow, x_eq, ts_eq, rtol=1e-11, atol=1e-12)
    gram = np.einsum("tid,tjd->tij", traj.xs, traj.xs)[:, ~np.eye(m, dtype=bool)]
    ref = solve_ivp(
        lambda t, r, norm=norm: np.asarray(
            closedforms.equiangular_rate(r, 1.0, m, normalization=norm)
        ),
        (0.0, t_eq),
        [rho0],
        t_eval=np.asarray(ts_eq),
        method="DOP853",
        rtol=1e-13,
        atol=1e-14,
    ).y[0]
    name = type(norm).__name__
    print(f"{name}: max |<x_i, x_j> - rho(t)| = {np.max(np.abs(gram - ref[:, None])):.1e}")
    ax.plot(ts_eq, ref, c=f"C{k}", label=f"{name}: closed form")
    ax.plot(ts_eq, gram.mean(axis=1), "o", c=f"C{k}", ms=3, label=f"{name}: simulated")
ax.set_xlabel("time t")
ax.set_ylabel(r"$\rho$")
ax.legend(fontsize=8)
plt.show()
jax.config.update("jax_enable_x64", False)

# %% [markdown]
# ## The phase diagram
# `phase_diagram` draws `runs` random clouds of 32 tokens and solves all of them for every
# $\beta$ in a single vmapped adaptive solve. It keeps, per member and saved time, the
# smallest pairwise inner product, so the threshold of "one cluster" can be chosen after.

# %%
betas = jnp.linspace(0.25, 6.0, num_betas)
ts_pd = jnp.linspace(0.0, 30.0, 31)
pd = studies.phase_diagram(jax.random.key(2), betas, ts_pd, n=32, d=3, runs=runs)
prob = pd.probability(1e-3)
fig = plot.phase_figure(ts_pd, {"SA": betas}, {"SA": prob}, {"SA": pd.num_steps})
plt.show()

# %% [markdown]
# ## What the vmapped ensemble costs
# Each member has its own adaptive step size, but a vmapped solve loops until its slowest
# member is done: members that finish early idle. The ratio of the mean to the largest step
# count is the fraction of the batched work that was useful.

# %%
s = np.asarray(pd.num_steps)
print(f"steps per member: min {s.min()}, median {np.median(s):.0f}, max {s.max()}")
print(f"batch efficiency (mean / max): {s.mean() / s.max():.2f}")
print(f"one batch per beta would do {s.max(axis=1).sum() / (s.shape[0] * s.max()):.2f} of the work")
