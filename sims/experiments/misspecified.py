"""Mis-specified inputs through the flow: how far apart the solutions from a cloud and from a
perturbed copy of it drift, in Wasserstein distance, next to the Grönwall bound
(Vuckovic, Baratin, Tachet des Combes 2020 and 2021)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import particles as P
from particles import regularity as R
from particles import wasserstein as W

from .. import _options as options
from .. import _replay
from .._config import require_at_least, require_one_of, require_positive
from .._registry import animations, experiment, figures

KINDS = ("noise", "drop", "duplicate", "resampled")


@dataclasses.dataclass(frozen=True)
class Config:
    """Mis-specified inputs through the flow on the sphere: W1(mu_t, nu_t) against exp(L t) W1(mu_0, nu_0).

    Noise, dropped and duplicated tokens, and a resampled cloud, each against the clean
    cloud; the field gap against W1 at t = 0; Q = K = V = I (Vuckovic et al. 2020, 2021)."""

    n: int = 128
    """number of tokens"""
    d: int = 3
    """ambient dimension: tokens live on the sphere S^{d-1}"""
    beta: float = 1.0
    """inverse temperature of the kernel exp(beta <x, y>)"""
    normalization: options.Normalization = "softmax"
    """softmax (SA) or unnormalized (USA) attention"""
    t1: float = 10.0
    """final time of the flow"""
    frames: int = 81
    """saved times, evenly spaced in [0, t1]"""
    noise: float = 0.05
    """standard deviation of the Gaussian noise added to every token (then retracted)"""
    drop: float = 0.25
    """fraction of tokens dropped (weight zero)"""
    duplicate: float = 0.25
    """fraction of tokens duplicated (weight doubled)"""
    sweep_points: int = 8
    """perturbation sizes per kind in the field-gap study at t = 0"""
    solver: str = "tsit5"
    """diffrax solver"""
    rtol: float = 1e-6
    """relative tolerance of the adaptive step-size controller"""
    atol: float = 1e-8
    """absolute tolerance of the adaptive step-size controller"""
    fps: int = 20
    """frames per second of the animation"""
    seed: int = 0
    """random seed of the cloud and of the perturbations"""

    def __post_init__(self):
        require_positive(self, "n", "beta", "t1", "noise", "rtol", "atol", "fps")
        require_positive(self, "drop", "duplicate", "sweep_points")
        require_at_least(self, "d", 2)
        require_at_least(self, "frames", 2)
        if not self.drop < 1:
            raise ValueError(f"drop must be < 1 (a token must stay); got {self.drop}")
        if not self.duplicate <= 1:
            raise ValueError(f"duplicate must be <= 1; got {self.duplicate}")
        require_one_of(self, "solver", options.SOLVERS)


def _inputs(config: Config, key, amounts: dict):
    """The base cloud and one mis-specified copy per kind: clouds (k, n, d), weights (k, n)."""
    sphere = P.Sphere()
    k0, kn, kd, kp, kr = jax.random.split(key, 5)
    x0 = P.clouds.sphere_uniform(k0, config.n, config.d)
    uniform = jnp.full((config.n,), 1 / config.n, x0.dtype)
    pairs = [
        (x0, uniform),
        R.misspecify(kn, x0, "noise", amounts["noise"], space=sphere),
        R.misspecify(kd, x0, "drop", amounts["drop"]),
        R.misspecify(kp, x0, "duplicate", amounts["duplicate"]),
        (P.clouds.sphere_uniform(kr, config.n, config.d), uniform),
    ]
    return jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])


@experiment("misspecified", Config)
def run(config: Config, directory: Path, *, gif: bool = False, animation: bool = True) -> None:
    key = jax.random.key(config.seed)
    attention = P.Attention.identity(
        config.d, config.beta, normalization=options.normalization(config.normalization)
    )
    flow = P.AttentionFlow(attention, P.Sphere())
    ts = jnp.linspace(0.0, config.t1, config.frames)
    amounts = {"noise": config.noise, "drop": config.drop, "duplicate": config.duplicate}
    clouds, weights = _inputs(config, key, amounts)

    @eqx.filter_jit
    def solve(clouds, weights, ts):
        # ts is an argument, not a closure: simulate formats its error messages from ts only
        # when ts is concrete, and indexing a closed-over array under jit gives a tracer.
        return jax.vmap(
            lambda x, w: P.simulate(
                flow,
                x,
                ts,
                weights=w,
                solver=options.solver(config.solver),
                rtol=config.rtol,
                atol=config.atol,
            )
        )(clouds, weights)

    trajectories = solve(clouds, weights, ts)
    xs = trajectories.xs
    series = {}
    for k, kind in enumerate(KINDS, start=1):
        series[f"W1 {kind}"] = np.asarray(
            jax.vmap(lambda a, b, k=k: W.wasserstein(a, b, weights[0], weights[k], p=1))(
                xs[0], xs[k]
            )
        )
    rate = float(R.growth_rate_bound(flow))
    measured = {kind: R.separation_rate(ts, series[f"W1 {kind}"]) for kind in KINDS}

    # The field gap against W1 at t = 0, over a range of perturbation sizes.
    lip_mu = float(R.measure_lipschitz_bound(flow))
    p = config.sweep_points
    sweeps = {
        "noise": np.geomspace(1e-3, 0.3, p),
        "drop": np.linspace(0.05, 0.6, p),
        "duplicate": np.linspace(0.1, 0.9, p),
    }
    x0 = clouds[0]
    field = {}
    for kind, values in sweeps.items():
        keys = jax.random.split(jax.random.fold_in(key, len(field) + 1), p)
        ys, ws = jax.vmap(lambda k, a, kind=kind: R.misspecify(k, x0, kind, a, space=P.Sphere()))(
            keys, jnp.asarray(values, x0.dtype)
        )
        field[kind] = _gaps(flow, x0, ys, ws)
    resampled = jax.vmap(lambda k: P.clouds.sphere_uniform(k, config.n, config.d))(
        jax.random.split(jax.random.fold_in(key, 99), p)
    )
    field["resampled"] = _gaps(flow, x0, resampled, jnp.broadcast_to(weights[0], (p, config.n)))
    ratio = max(float(np.max(f["gap"] / f["w1"])) for f in field.values())

    P.io.save_trajectory(
        directory / P.io.TRAJECTORY_FILE, jax.tree_util.tree_map(lambda a: a[0], trajectories)
    )
    for k, kind in enumerate(KINDS, start=1):
        P.io.save_trajectory(
            directory / f"trajectory_{kind}.npz",
            jax.tree_util.tree_map(lambda a, k=k: a[k], trajectories),
        )
    P.io.write_json(
        directory / "metrics.json",
        {
            "ts": np.asarray(ts),
            "series": series,
            "initial_w1": {kind: series[f"W1 {kind}"][0] for kind in KINDS},
            "final_w1": {kind: series[f"W1 {kind}"][-1] for kind in KINDS},
            "growth_rate_bound": rate,
            "measured_rate": measured,
            "measure_lipschitz_bound": lip_mu,
            "max_field_ratio": ratio,
            "field": {
                kind: {"amount": sweeps.get(kind, np.arange(p)), **f} for kind, f in field.items()
            },
            "solver": {
                "name": config.solver,
                "num_steps": np.asarray(trajectories.num_steps),
            },
        },
    )
    _replay.draw_run(directory, draw, render, animation=animation, gif=gif)


def _title(config: dict) -> str:
    return (
        f"{config['normalization']} attention on $S^{{{config['d'] - 1}}}$, n = {config['n']}, "
        f"$\\beta$ = {config['beta']:g}"
    )


@figures("misspecified")
def draw(directory: Path, *, dpi: int | None = None) -> list[Path]:
    """`wasserstein_vs_time.png` and `field_vs_wasserstein.png`, from the run directory."""
    import matplotlib.pyplot as plt

    from particles import plot

    config = P.io.read_json(directory / "config.json")["config"]
    m = P.io.read_json(directory / "metrics.json")
    series = {k: np.asarray(v) for k, v in m["series"].items()}
    field = m["field"]
    out = [directory / "wasserstein_vs_time.png", directory / "field_vs_wasserstein.png"]
    try:
        fig = plot.wasserstein_separation(
            np.asarray(m["ts"]), series, rate=m["growth_rate_bound"], title=_title(config)
        )
        _replay.save_figure(fig, out[0], dpi or 120)
        fig = plot.field_vs_wasserstein(
            {k: np.asarray(f["w1"]) for k, f in field.items()},
            {k: np.asarray(f["gap"]) for k, f in field.items()},
            slope=m["measure_lipschitz_bound"],
            title="field gap at t = 0 against $W_1$",
        )
        _replay.save_figure(fig, out[1], dpi or 120)
    finally:
        plt.close("all")
    return out


@animations("misspecified")
def render(directory: Path, *, gif: bool = False, progress: bool = True, **options) -> list[Path]:
    """`animation.mp4` (or `.gif`): the clean, noisy and dropped clouds side by side."""
    import matplotlib.colors as mcolors

    from particles import plot

    config = P.io.read_json(directory / "config.json")["config"]
    m = P.io.read_json(directory / "metrics.json")
    clean = P.io.load_trajectory(directory / P.io.TRAJECTORY_FILE)
    noise = P.io.load_trajectory(directory / "trajectory_noise.npz")
    drop = P.io.load_trajectory(directory / "trajectory_drop.npz")
    ts = np.asarray(m["ts"])
    # dropped tokens still move with the flow but no longer act: drawn in grey
    kept = np.asarray(drop.weights) > 0
    dropped_colors = np.where(
        kept[:, None], mcolors.to_rgba_array("C0"), mcolors.to_rgba_array("0.75")
    )
    return _replay.write_animation(
        directory,
        plot.animate,
        ts,
        [np.asarray(clean.xs), np.asarray(noise.xs), np.asarray(drop.xs)],
        gif=gif,
        fps=config["fps"],
        options=options,
        labels=[
            "clean",
            f"noise $\\sigma$ = {config['noise']:g}",
            f"{config['drop']:.0%} dropped (grey)",
        ],
        colors=["C0", "C3", dropped_colors],
        metrics={
            "$W_1$ to the clean flow": np.stack(
                [np.zeros(len(ts)), m["series"]["W1 noise"], m["series"]["W1 drop"]]
            )
        },
        title=_title(config),
        progress=progress,
    )


def _gaps(flow, x0, ys, ws):
    w1 = jax.vmap(lambda y, w: W.wasserstein(x0, y, None, w, p=1))(ys, ws)
    gap = jax.vmap(lambda y, w: R.field_gap(flow, x0, y, None, w))(ys, ws)
    return {"w1": np.asarray(w1), "gap": np.asarray(gap)}
