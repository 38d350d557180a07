"""Mean-field limits: particles sampled from a law approach the continuity equation.

`mean-field`: Gaussian initial law in R^d under softmax attention, against the closed form
(propagation of chaos, Wasserstein stability, causal limit). `mean-field-circle`: particles on
the circle against the Eulerian density solved on a grid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import particles as P
from particles import meanfield as mf
from particles import metrics as M
from particles import studies as S
from particles import wasserstein as W

from .. import _options as options
from .. import _replay
from .._config import require_at_least, require_positive
from .._registry import animations, experiment, figures


@dataclasses.dataclass(frozen=True)
class GaussianConfig:
    """Particles from N(m0, S0) under softmax attention in R^d converge to the Gaussian mean-field
    solution at rate n^(-1/2) (propagation of chaos), stay Wasserstein-stable, and causal
    sequences converge to their limit profile."""

    d: int = 2
    """dimension of the tokens (the animation shows the first two coordinates)"""
    heads: int = 1
    """attention heads (their affine fields add up)"""
    beta: float = 1.0
    """inverse temperature"""
    kernel: options.Kernel = "dot"
    """dot-product or L2 attention kernel"""
    mean: float = 0.5
    """initial mean m0 = mean * e_1"""
    cov: float = 0.3
    """initial covariance S0 = cov * diag(1, 1/2, ..., 1/d)"""
    t1: float = 1.0
    """final time"""
    frames: int = 41
    """saved times (animation frames), evenly spaced in [0, t1]"""
    min_log2_n: int = 6
    """smallest particle number of the convergence study, as log2 n"""
    max_log2_n: int = 14
    """largest particle number of the convergence study, as log2 n"""
    seeds: int = 8
    """independent clouds per n (simulated together with vmap)"""
    reference: int = 16384
    """size of the reference sample of the mean-field law for the sliced W2"""
    exact_reference: int = 4096
    """size of the reference sample for the exact W2 (POT): the first points of the sliced one"""
    exact_max_n: int = 1024
    """largest n of the exact W2 (keep it a few times below exact_reference; 0: none)"""
    animation_n: int = 1024
    """particles in the animated cloud"""
    stability_n: int = 256
    """particles in each cloud of the stability study"""
    delta: float = 1e-3
    """size of the perturbation between the two clouds of the stability study"""
    causal_max_log2_n: int = 7
    """largest causal sequence length of the causal study, as log2 n (from 16; reference: 8 times more)"""
    solver: str = "bosh3"
    """diffrax solver for the particles"""
    rtol: float = 1e-5
    """relative tolerance for the particles (far below the n^(-1/2) sampling error)"""
    atol: float = 1e-5
    """absolute tolerance for the particles"""
    fps: int = 15
    """frames per second of the animation"""
    seed: int = 0
    """random seed (attention weights, clouds)"""

    def __post_init__(self):
        require_positive(self, "beta", "cov", "t1", "reference", "delta", "rtol", "atol", "fps")
        require_at_least(self, "d", 2)
        require_at_least(self, "heads", 1)
        require_at_least(self, "frames", 2)
        require_at_least(self, "min_log2_n", 2)
        require_at_least(self, "max_log2_n", self.min_log2_n + 1)
        require_at_least(self, "seeds", 2)
        require_at_least(self, "exact_max_n", 0)
        if not 1 <= self.exact_reference <= self.reference:
            raise ValueError(
                f"exact_reference must be in [1, reference = {self.reference}]; got {self.exact_reference}"
            )
        require_at_least(self, "animation_n", 2)
        require_at_least(self, "stability_n", 2)
        require_at_least(self, "causal_max_log2_n", 5)
        adaptive = [
            name
            for name, make in options.SOLVERS.items()
            if isinstance(make(), diffrax.AbstractAdaptiveSolver)
        ]
        if self.solver not in adaptive:
            raise ValueError(
                f"solver must be an adaptive solver of {', '.join(adaptive)}; got {self.solver!r}"
            )


def _attention(config, key):
    return P.Attention.random(
        key, config.d, heads=config.heads, beta=config.beta, kernel=options.kernel(config.kernel)
    )


@experiment("mean-field", GaussianConfig)
def run_gaussian(
    config: GaussianConfig, directory: Path, *, gif: bool = False, animation: bool = True
) -> None:
    k_attn, k_study, k_anim, k_stab, k_causal = jax.random.split(jax.random.key(config.seed), 5)
    attention = _attention(config, k_attn)
    d = config.d
    m0 = jnp.zeros(d).at[0].set(config.mean)
    S0 = config.cov * jnp.diag(1 / jnp.arange(1, d + 1))
    ts = jnp.linspace(0.0, config.t1, config.frames)
    solution = mf.gaussian_flow(attention, m0, S0, ts)
    if bool(solution.blew_up):
        raise ValueError(
            f"the Gaussian mean field blows up at t = {float(solution.blowup_estimate):.4g} "
            f"(seed {config.seed}): choose t1 below it, a smaller cov or beta, or another seed"
        )

    # propagation of chaos
    ns = [2**k for k in range(config.min_log2_n, config.max_log2_n + 1)]
    study = S.propagation_of_chaos(
        k_study,
        attention,
        m0,
        S0,
        ns,
        ts[:: max(1, (len(ts) - 1) // 4)],
        seeds=config.seeds,
        reference=config.reference,
        exact_reference=config.exact_reference,
        exact_max_n=config.exact_max_n,
        solver=options.solver(config.solver),
        rtol=config.rtol,
        atol=config.atol,
    )
    convergence = {
        "mean error": np.asarray(study.rms("mean_error")[:, -1]),
        "covariance error": np.asarray(study.rms("cov_error")[:, -1]),
        "coupling to characteristics": np.asarray(study.rms("coupling")[:, -1]),
        "sliced W2 to reference": np.asarray(jnp.sqrt(jnp.mean(study.sliced**2, axis=1))),
        "exact W2 to reference": np.asarray(jnp.sqrt(jnp.mean(study.exact**2, axis=1))),
    }
    exact_ns = [n for n in ns if n <= config.exact_max_n]
    if len(exact_ns) < 2:  # nothing to fit: leave the exact distance out
        del convergence["exact W2 to reference"]
    slopes = {
        k: M.fit_power_law(ns[: np.isfinite(v).sum()], v[np.isfinite(v)])
        for k, v in convergence.items()
    }

    # the animated cloud
    flow = P.AttentionFlow(attention)
    x0 = P.clouds.gaussian(k_anim, config.animation_n, m0, S0)
    trajectory = P.simulate(
        flow, x0, ts, solver=options.solver(config.solver), rtol=config.rtol, atol=config.atol
    )
    mean_err, cov_err = S.moment_errors(trajectory.xs, solution)

    # stability
    xs0 = P.clouds.gaussian(k_stab, config.stability_n, m0, S0)
    direction = jax.random.normal(jax.random.fold_in(k_stab, 1), xs0.shape)
    direction = direction / jnp.sqrt(jnp.mean(jnp.sum(direction**2, axis=1)))
    stab_ts = ts[:: max(1, (len(ts) - 1) // 10)]
    stab = S.stability(flow, xs0, xs0 + config.delta * direction, stab_ts)

    # causal limit
    causal = P.Attention.random(
        k_causal, d, beta=config.beta, kernel=options.kernel(config.kernel), causal=True
    )
    freq = 1 + jnp.arange(d)

    def profile(s):
        return m0 + jnp.sqrt(jnp.diag(S0)) * jnp.cos(2 * freq * s + freq)

    causal_ns = [2**k for k in range(4, config.causal_max_log2_n + 1)]
    causal_errors = np.asarray(
        S.causal_convergence(
            causal, profile, causal_ns, 8 * causal_ns[-1], jnp.array([0.0, config.t1])
        )[:, -1]
    )
    causal_slope = M.fit_power_law(causal_ns, causal_errors)

    P.io.save_trajectory(directory / P.io.TRAJECTORY_FILE, trajectory)
    P.io.write_json(
        directory / "metrics.json",
        {
            "ts": np.asarray(ts),
            "series": {
                "closed_form_mean": np.asarray(solution.means),
                "closed_form_cov": np.asarray(solution.covs),
                "particle_mean_error": np.asarray(mean_err),
                "particle_cov_error": np.asarray(cov_err),
            },
            "convergence": {
                "ns": ns,
                "times": np.asarray(study.ts),
                "seeds": config.seeds,
                "rms_at_t1": convergence,
                "slopes": {k: v[0] for k, v in slopes.items()},
                "prefactors": {k: v[1] for k, v in slopes.items()},
                "mean_error": np.asarray(study.mean_error),
                "cov_error": np.asarray(study.cov_error),
                "coupling": np.asarray(study.coupling),
                "sliced": np.asarray(study.sliced),
                "exact": np.asarray(study.exact),
                "exact_reference": config.exact_reference,
                "reference": config.reference,
            },
            "stability": {
                "ts": np.asarray(stab.ts),
                "w2": np.asarray(stab.w2),
                "ratio": np.asarray(stab.ratio),
                "rate": float(stab.rate),
                "coupling": np.asarray(stab.coupling),
                "gronwall_bound": np.asarray(stab.bound),
                "log_norm": np.asarray(stab.log_norm),
            },
            "causal": {
                "ns": causal_ns,
                "errors": causal_errors,
                "slope": causal_slope[0],
                "prefactor": causal_slope[1],
            },
            "blowup_time": float(solution.blowup_time),
        },
    )
    _replay.draw_run(directory, draw_gaussian, render_gaussian, animation=animation, gif=gif)


def _floats(values) -> np.ndarray:
    return np.asarray(values, dtype=float)  # "nan" / "inf" strings of metrics.json included


@figures("mean-field")
def draw_gaussian(directory: Path, *, dpi: int | None = None) -> list[Path]:
    """`convergence.png`, `stability.png` and `causal.png`, from the run directory."""
    import matplotlib.pyplot as plt

    from particles import plot

    config = P.io.read_json(directory / "config.json")["config"]
    m = P.io.read_json(directory / "metrics.json")
    c, stab, causal = m["convergence"], m["stability"], m["causal"]
    kernel = "L2" if config["kernel"] == "l2" else "dot-product"
    out = [directory / n for n in ("convergence.png", "stability.png", "causal.png")]
    try:
        fig = plot.sample_convergence_figure(
            c["ns"],
            {k: _floats(v) for k, v in c["rms_at_t1"].items()},
            {k: (c["slopes"][k], c["prefactors"][k]) for k in c["slopes"]},
            ylabel=f"RMS error at t = {config['t1']:g}",
            title=f"propagation of chaos ({kernel}, d = {config['d']}, {config['seeds']} seeds)",
        )
        _replay.save_figure(fig, out[0], dpi or 120)
        fig = plot.stability_figure(
            _floats(stab["ts"]),
            _floats(stab["ratio"]),
            _floats(stab["gronwall_bound"]) / _floats(stab["coupling"])[0],
            rate=float(stab["rate"]),
        )
        fig.axes[0].set_title(
            f"two clouds at distance {config['delta']:g}, n = {config['stability_n']}"
        )
        _replay.save_figure(fig, out[1], dpi or 120)
        fig = plot.sample_convergence_figure(
            causal["ns"],
            {"causal error": _floats(causal["errors"])},
            {"causal error": (causal["slope"], causal["prefactor"])},
            reference_slope=-1.0,
            xlabel="sequence length n",
            ylabel=f"RMS error at t = {config['t1']:g}",
            title="causal attention: n tokens vs the limit profile",
        )
        _replay.save_figure(fig, out[2], dpi or 120)
    finally:
        plt.close("all")
    return out


@animations("mean-field")
def render_gaussian(
    directory: Path, *, gif: bool = False, progress: bool = True, **options
) -> list[Path]:
    """`animation.mp4` (or `.gif`): the particles over the mean-field Gaussian."""
    from particles import plot

    config = P.io.read_json(directory / "config.json")["config"]
    series = P.io.read_json(directory / "metrics.json")["series"]
    trajectory = P.io.load_trajectory(directory / P.io.TRAJECTORY_FILE)
    means, covs = _floats(series["closed_form_mean"]), _floats(series["closed_form_cov"])
    return _replay.write_animation(
        directory,
        plot.gaussian_animation,
        np.asarray(trajectory.ts),
        np.asarray(trajectory.xs)[..., :2],
        means[:, :2],
        covs[:, :2, :2],
        gif=gif,
        fps=config["fps"],
        options=options,
        title=f"n = {config['animation_n']} particles over the mean-field Gaussian",
        progress=progress,
    )


@dataclasses.dataclass(frozen=True)
class CircleConfig:
    """Particles on the circle S^1 against the Eulerian density of the mean-field equation
    (Q = K = V = I): W1 distance over time and its n^(-1/2) decay."""

    cells: int = 256
    """grid cells of the Eulerian solver"""
    beta: float = 1.0
    """inverse temperature"""
    normalization: options.Normalization = "softmax"
    """softmax (SA) or unnormalized (USA) attention"""
    evaluation: options.Evaluation = "direct"
    """particle sums: direct O(n^2), or the Fourier-Bessel expansion O(n K) (expansion, auto)"""
    modes: float = 0.6
    """amplitude of the initial density 1 + modes cos(theta) + modes / 2 sin(2 theta)"""
    t1: float = 3.0
    """final time"""
    frames: int = 61
    """saved times (animation frames)"""
    n: int = 2048
    """particles in the animated cloud"""
    min_log2_n: int = 6
    """smallest particle number of the W1 convergence study, as log2 n"""
    max_log2_n: int = 11
    """largest particle number of the W1 convergence study, as log2 n"""
    seeds: int = 4
    """independent clouds per n"""
    limiter: Literal["vanleer", "minmod", "upwind"] = "vanleer"
    """slope limiter of the finite-volume scheme"""
    rtol: float = 1e-6
    """relative tolerance (both solvers)"""
    atol: float = 1e-6
    """absolute tolerance (both solvers)"""
    fps: int = 15
    """frames per second of the animation"""
    seed: int = 0
    """random seed of the particles"""

    def __post_init__(self):
        require_positive(self, "beta", "t1", "rtol", "atol", "fps")
        require_at_least(self, "cells", 8)
        require_at_least(self, "frames", 2)
        require_at_least(self, "n", 2)
        require_at_least(self, "min_log2_n", 2)
        require_at_least(self, "max_log2_n", self.min_log2_n + 1)
        require_at_least(self, "seeds", 1)
        if not 0 <= self.modes < 2 / 3:
            raise ValueError(
                f"modes must lie in [0, 2/3) so that the density is positive; got {self.modes}"
            )


@experiment("mean-field-circle", CircleConfig)
def run_circle(
    config: CircleConfig, directory: Path, *, gif: bool = False, animation: bool = True
) -> None:
    theta = mf.circle_grid(config.cells)
    rho0 = mf.circle_density(
        1 + config.modes * jnp.cos(theta) + config.modes / 2 * jnp.sin(2 * theta)
    )
    ts = jnp.linspace(0.0, config.t1, config.frames)
    eulerian = mf.circle_flow(
        rho0,
        ts,
        beta=config.beta,
        normalization=options.normalization(config.normalization),
        limiter=config.limiter,
        rtol=config.rtol,
        atol=config.atol,
    )
    flow = P.AttentionFlow(
        P.Attention.identity(
            2,
            config.beta,
            normalization=options.normalization(config.normalization),
            evaluation=options.evaluation(config.evaluation),
        ),
        P.Sphere(),
    )
    key = jax.random.key(config.seed)

    def particles(k, n, ts):
        x0 = mf.circle_points(mf.circle_sample(k, n, rho0))
        return mf.circle_angles(P.simulate(flow, x0, ts, rtol=config.rtol, atol=config.atol).xs)

    angles = particles(key, config.n, ts)
    w1 = jnp.stack(
        [W.circle_w1_density(a, r) for a, r in zip(angles, eulerian.densities, strict=True)]
    )

    ns = [2**k for k in range(config.min_log2_n, config.max_log2_n + 1)]
    ends = jnp.array([0.0, config.t1])
    w1_n = []
    for i, n in enumerate(ns):
        keys = jax.random.split(jax.random.fold_in(key, i + 1), config.seeds)
        batch = jax.jit(jax.vmap(lambda k, ts, n=n: particles(k, n, ts), in_axes=(0, None)))
        final = batch(keys, ends)[:, -1]
        w1_n.append([float(W.circle_w1_density(a, eulerian.densities[-1])) for a in final])
    w1_n = np.asarray(w1_n)
    rms = np.sqrt(np.mean(w1_n**2, axis=1))
    slope = M.fit_power_law(ns, rms)

    P.io.write_json(
        directory / "metrics.json",
        {
            "ts": np.asarray(ts),
            "series": {
                "w1_particles_vs_density": np.asarray(w1),
                "mass_error": np.asarray(eulerian.mass - 1),
                "max_density": np.asarray(eulerian.densities.max(axis=1)),
            },
            "max_mass_error": float(jnp.max(jnp.abs(eulerian.mass - 1))),
            "eulerian_steps": int(eulerian.num_steps),
            "convergence": {
                "ns": ns,
                "w1_at_t1": w1_n,
                "rms": rms,
                "slope": slope[0],
                "prefactor": slope[1],
            },
        },
    )
    P.io.save_run(
        directory,
        arrays={"ts": ts, "theta": theta, "densities": eulerian.densities, "angles": angles},
    )
    _replay.draw_run(directory, draw_circle, render_circle, animation=animation, gif=gif)


@figures("mean-field-circle")
def draw_circle(directory: Path, *, dpi: int | None = None) -> list[Path]:
    """`convergence.png` (W1 against n) and `snapshots.png` (particles over the density)."""
    import matplotlib.pyplot as plt

    from particles import plot

    config = P.io.read_json(directory / "config.json")["config"]
    c = P.io.read_json(directory / "metrics.json")["convergence"]
    arrays = P.io.load_arrays(directory / "arrays.npz")
    out = [directory / "convergence.png", directory / "snapshots.png"]
    try:
        fig = plot.sample_convergence_figure(
            c["ns"],
            {"W1(particles, density)": np.asarray(c["rms"])},
            {"W1(particles, density)": (c["slope"], c["prefactor"])},
            ylabel=f"RMS W1 at t = {config['t1']:g}",
            title=f"circle, {config['normalization']}, beta = {config['beta']:g}: "
            "particles vs Eulerian",
        )
        _replay.save_figure(fig, out[0], dpi or 120)
        fig = plot.density_snapshots(
            arrays["ts"], arrays["theta"], arrays["densities"], arrays["angles"]
        )
        _replay.save_figure(fig, out[1], dpi or 120)
    finally:
        plt.close("all")
    return out


@animations("mean-field-circle")
def render_circle(
    directory: Path, *, gif: bool = False, progress: bool = True, **options
) -> list[Path]:
    """`animation.mp4` (or `.gif`): the particles over the Eulerian density."""
    from particles import plot

    config = P.io.read_json(directory / "config.json")["config"]
    arrays = P.io.load_arrays(directory / "arrays.npz")
    return _replay.write_animation(
        directory,
        plot.circle_animation,
        arrays["ts"],
        arrays["angles"],
        arrays["theta"],
        arrays["densities"],
        gif=gif,
        fps=config["fps"],
        options=options,
        title=f"n = {config['n']} particles over the Eulerian density ({config['cells']} cells)",
        progress=progress,
    )
