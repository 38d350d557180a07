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
# # Explore with sliders: temperature, number of tokens, normalization
#
# Tokens uniform on the sphere $S^2$ under self-attention with $Q = K = V = I$ gather into
# clusters (Geshkovski, Letrouit, Polyanskiy, Rigollet 2023). Move the sliders to see how
# the inverse temperature $\beta$, the number of tokens $n$ and the normalization change
# the final clusters and the climb of the interaction energy
# $E_\beta = \frac{1}{2\beta n^2}\sum_{i,j} e^{\beta\langle x_i, x_j\rangle}$.
#
# Softmax attention (SA) moves each token by a weighted mean; unnormalized attention (USA)
# by a weighted sum, whose speed grows like $e^\beta$ once a cluster forms. So that both
# show the same stage of the dynamics, USA runs for $T e^{-\beta}$ instead of $T$.
#
# The sliders need `ipywidgets` (`pip install -e ".[notebooks]"`); each change re-solves the
# flow (a second or two; a new $n$ or normalization compiles once more).
# Set `PARTICLES_SIZE=small` for a quick pass (the test suite does).

# %%
import os

import ipywidgets as widgets
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import particles as P
from particles import metrics, plot

SMALL = os.environ.get("PARTICLES_SIZE", "full") == "small"
T, FRAMES, TOL = (8.0, 9, 1e-2) if SMALL else (20.0, 41, 1e-2)
NORMALIZATIONS = {"softmax (SA)": P.Softmax(), "unnormalized (USA)": P.Unnormalized()}


def solve(beta: float, n: int, normalization: str, seed: int = 0):
    """The flow on S^2 from n uniform tokens: times, clouds, energy and cluster count."""
    x0 = P.clouds.sphere_uniform(jax.random.key(seed), n, 3)
    attention = P.Attention.identity(3, beta, normalization=NORMALIZATIONS[normalization])
    flow = P.AttentionFlow(attention, P.Sphere())
    horizon = T * np.exp(-beta) if normalization.startswith("unnormalized") else T
    ts = jnp.linspace(0.0, horizon, FRAMES)
    trajectory = P.simulate(flow, x0, ts, rtol=1e-5, atol=1e-6)
    energy = metrics.over_time(metrics.interaction_energy, trajectory.xs, beta)
    clusters = metrics.over_time(metrics.cluster_count, trajectory.xs, TOL)
    return trajectory.ts, trajectory.xs, np.asarray(energy), np.asarray(clusters)


def show(beta: float = 9.0, n: int = 128, normalization: str = "softmax (SA)") -> dict:
    ts, xs, energy, clusters = solve(beta, n, normalization)
    labels = np.asarray(metrics.track_clusters(xs, TOL))
    fig = plot.final_state(
        ts,
        np.asarray(xs),
        clusters=labels,
        singletons="0.65",
        title=f"{normalization}, $\\beta$ = {beta:.3g}, n = {n}",
    )
    plt.show()
    plot.metric_curves(ts, {"energy": energy, "clusters": clusters})
    plt.show()
    plt.close(fig)
    return {"clusters": int(clusters[-1]), "energy": (float(energy[0]), float(energy[-1]))}


# %% [markdown]
# One solve with the default values, to see what the sliders redraw: the final cloud coloured
# by cluster, then the energy (which never decreases, up to the solver's tolerance) and the
# number of clusters over time.

# %%
first = show(9.0, 32 if SMALL else 128, "softmax (SA)")
assert first["energy"][1] >= first["energy"][0]
print(first)

# %% [markdown]
# ## The sliders
# $\beta$ on a log scale from 0.5 to 32, $n$ from 8 to 512, and the normalization. The
# figures update when a slider is released.

# %%
sliders = widgets.interactive(
    show,
    beta=widgets.FloatLogSlider(value=9.0, base=2, min=-1, max=5, step=0.25, description="β"),
    n=widgets.IntSlider(value=32 if SMALL else 128, min=8, max=512, step=8, description="n tokens"),
    normalization=widgets.Dropdown(options=list(NORMALIZATIONS), description="normalization"),
)
for control in sliders.children[:-1]:
    control.continuous_update = False
display(sliders)  # noqa: F821 (IPython's display, in every notebook)
