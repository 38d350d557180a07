# %% [markdown]
# # Quickstart: tokens as particles
#
# Self-attention moves a cloud of tokens like a system of interacting particles
# (Geshkovski, Letrouit, Polyanskiy, Rigollet 2023). This notebook builds the flow of
# softmax attention with $Q = K = V = I$ on the sphere $S^2$, integrates it with diffrax,
# plots the clustering, animates it inline and saves the run.
#
# Set `PARTICLES_SIZE=small` for a quick pass (the test suite does).

# %%
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import particles as P
from particles import analysis, plot

SMALL = os.environ.get("PARTICLES_SIZE", "full") == "small"
n, frames, t1 = (64, 21, 15.0) if SMALL else (512, 151, 30.0)
beta, d = 9.0, 3

# %% [markdown]
# ## A flow and an initial cloud
# Tokens uniform on the sphere; attention with inverse temperature $\beta$; the flow keeps
# them on the sphere by projecting the velocity on the tangent space.

# %%
x0 = P.clouds.sphere_uniform(jax.random.key(0), n, d)
flow = P.AttentionFlow(P.SelfAttention.identity(d, beta), P.Sphere())
ts = jnp.linspace(0.0, t1, frames)
trajectory = P.simulate(flow, x0, ts, rtol=1e-5, atol=1e-6)
xs = trajectory.xs
print(f"{trajectory.num_steps} steps; drift off the sphere {float(P.sphere_drift(xs).max()):.1e}")

# %% [markdown]
# ## What happens: clusters form and merge
# The energy $E_\beta$ never decreases; the number of clusters drops.

# %%
series = {
    "energy $E_\\beta$": np.asarray(analysis.over_time(analysis.interaction_energy, xs, beta)),
    "clusters": np.asarray(analysis.over_time(analysis.cluster_count, xs, 1e-2)),
}
colors = plot.cluster_colors(np.asarray(analysis.cluster_labels(xs[-1], 1e-2)))
fig = plot.summary_figure(ts, xs, series, colors=colors, title="softmax attention on $S^2$")

# %% [markdown]
# ## Animate

# %%
work = Path("quickstart-run")
work.mkdir(exist_ok=True)
movie = plot.animate(ts, xs, work / "animation.mp4", metrics=series, colors=colors, progress=False)
from IPython.display import Video

Video(str(movie), embed=True, width=640)

# %% [markdown]
# ## Save the run
# `config.json`, `metrics.json` and `trajectory.npz` are enough to redraw everything later
# (`python -m sims plot RUN_DIR`, `python -m sims animate RUN_DIR`).

# %%
P.io.save_run(
    work,
    trajectory=trajectory,
    config={"n": n, "d": d, "beta": beta, "t1": t1, "frames": frames},
    metrics={"ts": ts, "series": series},
)
run = P.io.load_run(work)
assert np.array_equal(np.asarray(run["trajectory"].xs), np.asarray(xs))
sorted(p.name for p in work.iterdir())
