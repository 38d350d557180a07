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
# # Quickstart: tokens as particles
#
# Self-attention moves a cloud of tokens like a system of interacting particles
# (Geshkovski, Letrouit, Polyanskiy, Rigollet 2023). This notebook builds the flow of
# softmax attention with $Q = K = V = I$ on the sphere $S^2$, integrates it with diffrax,
# plots the clustering, animates it inline and saves the run so that
# `python -m sims plot RUN_DIR` and `python -m sims animate RUN_DIR` can redraw it.
#
# Set `PARTICLES_SIZE=small` for a quick pass (the test suite does).

# %%
import os

import jax
import jax.numpy as jnp
import numpy as np

import particles as P
import sims
from particles import metrics, plot

SMALL = os.environ.get("PARTICLES_SIZE", "full") == "small"
n, frames, t1 = (48, 16, 15.0) if SMALL else (512, 151, 30.0)
beta, d, tol = 9.0, 3, 1e-2

# %% [markdown]
# ## A flow and an initial cloud
# Tokens uniform on the sphere; attention with inverse temperature $\beta$; the flow keeps
# them on the sphere by projecting the velocity on the tangent space,
# $\dot x_i = P_{x_i} \sum_j \mathrm{softmax}_j(\beta \langle x_i, x_j\rangle)\, x_j$.

# %%
x0 = P.clouds.sphere_uniform(jax.random.key(0), n, d)
flow = P.AttentionFlow(P.Attention.identity(d, beta), P.Sphere())
ts = jnp.linspace(0.0, t1, frames)
trajectory = P.simulate(flow, x0, ts, rtol=1e-5, atol=1e-6)
xs = np.asarray(trajectory.xs)
print(
    f"{int(trajectory.num_steps)} steps; drift off the sphere {float(P.sphere_drift(xs).max()):.1e}"
)

# %% [markdown]
# ## The velocity field the tokens feel at the start
# `flow.field` evaluates the attention field of the cloud at any points; plotting only
# draws the arrays it returns.

# %%
grid = np.asarray(P.clouds.sphere_uniform(jax.random.key(1), 300, d))
arrows = np.asarray(flow.field(grid, x0))
ax = plot.velocity_field(grid, arrows, cloud=xs[0], title="attention field of the initial cloud")

# %% [markdown]
# ## Clusters form and merge
# `track_clusters` follows each cluster from frame to frame, so a cluster keeps its colour;
# tokens still alone are grey. The energy $E_\beta$ never decreases.

# %%
clusters = np.asarray(metrics.track_clusters(xs, tol))
series = {
    "energy": np.asarray(metrics.over_time(metrics.interaction_energy, xs, beta)),
    "clusters": np.asarray(metrics.over_time(metrics.cluster_count, xs, tol)),
    "mean_cosine": np.asarray(metrics.over_time(metrics.mean_pairwise_cosine, xs)),
}
assert np.all(np.diff(series["energy"]) >= -1e-4 * series["energy"][-1])
fig = plot.summary_figure(
    ts, xs, series, clusters=clusters, singletons="0.65", title="softmax attention on $S^2$"
)

# %% [markdown]
# ## Animate, inline
# With no path, `animate` returns an HTML5 video for the notebook (a JavaScript player if
# ffmpeg is missing). Pass a path ending in `.mp4` or `.gif` to write a file instead.

# %%
plot.animate(
    ts,
    xs,
    metrics={"energy": series["energy"]},
    clusters=clusters,
    singletons="0.65",
    trail=4,
    dpi=80,
    progress=False,
)

# %% [markdown]
# ## Save the run
# `config.json`, `metrics.json` (time series on `ts`) and `trajectory.npz` are enough to
# redraw everything later without recomputing. The run goes to `runs/quickstart` in the
# checkout (ignored by git; set `PARTICLES_RUNS` to put runs elsewhere), never beside the
# notebooks; from the checkout, `python -m sims plot runs/quickstart` and
# `python -m sims animate runs/quickstart --gif` redraw it.

# %%
run_dir = sims.runs_root() / "quickstart"
P.io.save_run(
    run_dir,
    trajectory=trajectory,
    config={
        "experiment": "quickstart",
        "config": {"n": n, "d": d, "beta": beta, "cluster_tol": tol},
    },
    metrics={"ts": ts, "series": series},
)
saved = P.io.load_run(run_dir)
assert np.array_equal(np.asarray(saved["trajectory"].xs), xs)
sorted(p.name for p in run_dir.iterdir())
