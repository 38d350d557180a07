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
# # Mean-field limits: from n particles to the continuity equation
#
# As the number of tokens grows, the empirical measure of the attention flow follows the
# continuity equation $\partial_t \mu + \nabla\cdot(\mu\, v[\mu]) = 0$. This notebook computes
# with the limit directly and measures how fast particles reach it:
#
# 1. the Gaussian closed form (softmax attention keeps Gaussians Gaussian) and its blow-up;
# 2. propagation of chaos: moment errors and distances decay like $n^{-1/2}$;
# 3. Wasserstein stability of two nearby clouds;
# 4. the Eulerian density on the circle against particles;
# 5. causal attention, whose tokens carry a position $s \in [0, 1]$.

# %%
import os

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import particles as P
from particles import meanfield as mf
from particles import metrics as M
from particles import plot
from particles import studies as S
from particles import wasserstein as W

SMALL = os.environ.get("PARTICLES_SIZE", "full") == "small"
key = jax.random.key(0)

# %% [markdown]
# ## 1. The Gaussian closed form
#
# For $\mu = N(m, S)$ softmax attention is an affine field $v(x) = Bx + c$; with the dot-product
# kernel $B = \beta V S K^\top Q$, $c = V m$. We check it against the field of a sample.

# %%
Q = jnp.array([[1.0, 0.3], [0.0, 0.8]])
K = jnp.array([[0.9, 0.0], [0.2, 1.0]])
V = jnp.array([[0.5, -1.0], [1.0, 0.3]])
attention = P.Attention(Q, K, V, 1.0)
m0, S0 = jnp.array([0.5, 0.0]), jnp.array([[0.3, 0.1], [0.1, 0.2]])
B, c = mf.affine_field(attention, m0, S0)
sample = P.clouds.gaussian(key, 2000 if SMALL else 50000, m0, S0)
queries = jnp.array([[0.0, 0.0], [0.8, -0.3]])
print("closed form :", np.asarray(queries @ B.T + c))
print("sample field:", np.asarray(attention.cross(queries, sample)))

# %%
ts = jnp.linspace(0.0, 1.0, 21)
solution = mf.gaussian_flow(attention, m0, S0, ts)
flow = P.AttentionFlow(attention)
x0 = P.clouds.gaussian(jax.random.fold_in(key, 1), 128 if SMALL else 2048, m0, S0)
trajectory = P.simulate(flow, x0, ts, solver=diffrax.Bosh3(), rtol=1e-5, atol=1e-5)
fig = plot.gaussian_snapshots(ts, trajectory.xs, solution.means, solution.covs, indices=[0, 10, 20])

# %% [markdown]
# ### Blow-up
#
# With $Q = K = V = I$ the covariance obeys $S' = 2\beta S^2$, which blows up at
# $t_* = 1/(2\beta\lambda_{\max}(S_0))$. The solver watches the covariance alone, against its
# own Riccati trend $t_* \approx t + |S|_F^2 / \langle S, S' \rangle$: it stops just before a
# blow-up that lies before the horizon and reports it; values after it are NaN, never inf.

# %%
blow = mf.gaussian_flow(
    P.Attention.identity(2, 1.0), jnp.zeros(2), 0.4 * jnp.eye(2), jnp.linspace(0, 3, 7)
)
print(
    "blew up:",
    bool(blow.blew_up),
    " stopped at",
    float(blow.blowup_time),
    " extrapolated t* =",
    float(blow.blowup_estimate),
    " exact 1.25",
)
l2 = mf.gaussian_flow(
    P.Attention.identity(2, 1.0, kernel=P.L2()),
    jnp.zeros(2),
    0.4 * jnp.eye(2),
    jnp.linspace(0, 3, 7),
)
print(
    "L2 attention blew up:", bool(l2.blew_up), " S(3) =", np.asarray(l2.covs[-1]).round(3).tolist()
)

# %% [markdown]
# A mean that grows like $e^t$ is not a blow-up. From $S_0 = 10^{-3} I$, $m_0 = e_1$ the
# covariance $S(t) = S_0 / (1 - 2 \cdot 10^{-3} t)$ is finite until $t_* = 500$ while
# $|m(t)|^2$ passes $10^{17}$ by $t = 20$.

# %%
e1 = jnp.array([1.0, 0.0])
slow = mf.gaussian_flow(
    P.Attention.identity(2, 1.0), e1, 1e-3 * jnp.eye(2), jnp.linspace(0.0, 20.0, 5)
)
print(
    "blew up:",
    bool(slow.blew_up),
    " S(20)[0, 0] =",
    float(slow.covs[-1, 0, 0]),
    " exact",
    1e-3 / (1 - 2e-3 * 20),
    " m(20)[0] =",
    float(slow.means[-1, 0]),
    " exact",
    float(np.exp(20.0) / np.sqrt(1 - 2e-3 * 20)),
)

# %% [markdown]
# ## 2. Propagation of chaos
#
# For each $n$, several clouds sampled from $N(m_0, S_0)$ are simulated at once (`vmap`); the
# errors against the closed form and the distance to the exact mean-field characteristics from
# the same initial points decay like $n^{-1/2}$.

# %%
ns = [16, 64] if SMALL else [64, 128, 256, 512, 1024, 2048]
study = S.propagation_of_chaos(
    key,
    attention,
    m0,
    S0,
    ns,
    jnp.array([0.0, 1.0]),
    seeds=4 if SMALL else 16,
    reference=256 if SMALL else 16384,
    solver=diffrax.Bosh3(),
    rtol=1e-5,
    atol=1e-5,
)
errors = {
    "mean": np.asarray(study.rms("mean_error")[:, -1]),
    "covariance": np.asarray(study.rms("cov_error")[:, -1]),
    "coupling": np.asarray(study.rms("coupling")[:, -1]),
}
slopes = {k: M.fit_power_law(ns, v) for k, v in errors.items()}
print({k: round(v[0], 3) for k, v in slopes.items()})
fig = plot.sample_convergence_figure(ns, errors, slopes, ylabel="RMS error at t = 1")

# %% [markdown]
# ## 3. Stability in Wasserstein distance
#
# Two clouds at distance $\delta$: the exact $W_2$ (POT) grows at most like $e^{Lt}\delta$.

# %%
xa = P.clouds.gaussian(jax.random.fold_in(key, 2), 32 if SMALL else 256, m0, S0)
xb = xa + 1e-3 * jax.random.normal(jax.random.fold_in(key, 3), xa.shape)
stab = S.stability(flow, xa, xb, jnp.linspace(0.0, 1.0, 4 if SMALL else 11))
print("W2(t) / W2(0):", np.asarray(stab.ratio).round(4), " fitted L =", round(float(stab.rate), 4))
fig = plot.stability_figure(
    stab.ts, stab.ratio, stab.bound / stab.coupling[0], rate=float(stab.rate)
)

# %% [markdown]
# ## 4. The circle: Eulerian density against particles
#
# On $S^1$ with $Q = K = V = I$ the velocity is a convolution; `circle_flow` evolves the density
# with a conservative finite-volume scheme (mass conserved to rounding).

# %%
cells = 64 if SMALL else 256
theta = mf.circle_grid(cells)
rho0 = mf.circle_density(1 + 0.6 * jnp.cos(theta) + 0.3 * jnp.sin(2 * theta))
cts = jnp.linspace(0.0, 1.5 if SMALL else 4.0, 5)
eulerian = mf.circle_flow(rho0, cts, beta=1.0)
print("max |mass - 1| =", float(jnp.max(jnp.abs(eulerian.mass - 1))))
n_circle = 128 if SMALL else 4096
a0 = mf.circle_sample(jax.random.fold_in(key, 4), n_circle, rho0)
circle_flow = P.AttentionFlow(P.Attention.identity(2, 1.0), P.Sphere())
angles = mf.circle_angles(P.simulate(circle_flow, mf.circle_points(a0), cts).xs)
print(
    "W1(particles, density):",
    [
        round(float(W.circle_w1_density(a, r)), 4)
        for a, r in zip(angles, eulerian.densities, strict=True)
    ],
)
fig = plot.density_snapshots(cts, theta, eulerian.densities, angles, indices=[0, 2, 4])

# %% [markdown]
# ## 5. Causal attention
#
# Token $i$ sits at $s_i = i/n$ and attends to $s \le s_i$. The $n$-token flow is a Riemann sum
# of the limit equation, so it converges like $1/n$.

# %%
causal = P.Attention.random(jax.random.fold_in(key, 5), 2, beta=2.0, causal=True)


def profile(s):
    return jnp.array([jnp.cos(3 * s), jnp.sin(2 * s) + s])


cns = [8, 16] if SMALL else [16, 32, 64, 128, 256]
cerr = S.causal_convergence(causal, profile, cns, 8 * cns[-1], jnp.array([0.0, 1.0]))[:, -1]
cslope = M.fit_power_law(cns, cerr)
print("causal errors:", np.asarray(cerr).round(5), " slope", round(cslope[0], 3))
fig = plot.sample_convergence_figure(
    cns, {"causal": cerr}, {"causal": cslope}, reference_slope=-1.0, xlabel="sequence length n"
)
