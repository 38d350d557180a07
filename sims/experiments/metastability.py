"""Metastability: at large beta, several clusters persist for a long time, then merge."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import particles as P
from particles import metrics

from .. import _options as options
from .. import _replay
from .._config import require_at_least, require_positive
from .._registry import animations, experiment, figures
from . import _clusterkit


@dataclasses.dataclass(frozen=True)
class Config:
    """Metastable clusters at large beta on S^2 and the circle, merging over log-time.

    The energy climbs a staircase as clusters merge (Geshkovski, Letrouit, Polyanskiy,
    Rigollet 2023)."""

    n: int = 32
    """number of tokens"""
    dims: tuple[int, ...] = (2, 3)
    """ambient dimensions: 2 is the circle S^1, 3 the sphere S^2"""
    betas: tuple[float, ...] = (9.0, 36.0)
    """inverse temperatures (large: metastable)"""
    normalization: options.Normalization = "softmax"
    """softmax (SA) or unnormalized (USA) attention"""
    evaluation: options.Evaluation = "direct"
    """sum over tokens: direct O(n^2), or the harmonic expansion O(n L^2) (expansion, auto)"""
    t1: float = 3000.0
    """final time of the flow (the horizon is long: saved times are spaced in log-time)"""
    t_first: float = 0.01
    """first saved time after 0"""
    frames: int = 161
    """number of saved times: 0, then log-spaced from t_first to t1"""
    rtol: float = 1e-6
    """relative tolerance of the adaptive step-size controller"""
    atol: float = 1e-7
    """absolute tolerance of the adaptive step-size controller"""
    max_steps: int = 200_000
    """most solver steps per run"""
    cluster_tol: float = 1e-2
    """tokens closer than this (Euclidean) are in the same cluster"""
    fps: int = 20
    """frames per second of the animation"""
    seed: int = 0
    """random seed of the starting clouds"""

    def __post_init__(self):
        require_positive(self, "n", "t1", "t_first", "rtol", "atol", "cluster_tol", "fps")
        require_positive(self, "max_steps")
        require_at_least(self, "frames", 3)
        if not self.t_first < self.t1:
            raise ValueError(f"t_first must be < t1; got t_first={self.t_first}, t1={self.t1}")
        if not self.dims or any(d < 2 for d in self.dims):
            raise ValueError(f"dims must be a non-empty list of values >= 2; got {self.dims}")
        if not self.betas or any(not b > 0 for b in self.betas):
            raise ValueError(f"betas must be a non-empty list of values > 0; got {self.betas}")


@experiment("metastability", Config)
def run(config: Config, directory: Path, *, gif: bool = False, animation: bool = True) -> None:
    ts = jnp.concatenate(
        [
            jnp.zeros(1),
            jnp.geomspace(config.t_first, config.t1, config.frames - 1),
        ]
    )
    betas = jnp.asarray(config.betas)
    groups, names, labels = [], [], []
    series_rows: dict[str, list] = {}
    keys = jax.random.split(jax.random.key(config.seed), len(config.dims))
    for key, d in zip(keys, config.dims, strict=True):
        x0 = P.clouds.sphere_uniform(key, config.n, d)
        # an expansion's order is fixed at the largest beta, outside the vmap over betas
        evaluation = P.Attention.identity(
            d,
            max(config.betas),
            normalization=options.normalization(config.normalization),
            evaluation=options.evaluation(config.evaluation),
        ).evaluation

        def solve(beta, x0=x0, d=d, evaluation=evaluation):
            attention = P.Attention.identity(
                d,
                beta,
                normalization=options.normalization(config.normalization),
                evaluation=evaluation,
            )
            flow = P.AttentionFlow(attention, P.Sphere())
            return P.simulate(
                flow, x0, ts, rtol=config.rtol, atol=config.atol, max_steps=config.max_steps
            )

        group = jax.vmap(solve)(betas)
        groups.append(group)
        sphere = "S^1" if d == 2 else f"S^{d - 1}"
        names += [f"{sphere} beta={b:g}" for b in config.betas]
        labels.append(_clusterkit.tracked_labels(group.xs, config.cluster_tol))
        per_run = jax.vmap(lambda x, b: metrics.cluster_series(x, b, tol=config.cluster_tol))(
            group.xs, betas
        )
        for k, v in per_run.items():
            series_rows.setdefault(k, []).append(np.asarray(v))
    series = {k: np.concatenate(v) for k, v in series_rows.items()}
    # the energy relative to its value at one cluster, exp(beta) / (2 beta): a staircase to 1
    run_betas = np.tile(np.asarray(config.betas), len(config.dims))
    series["energy / max"] = series["energy"] / (np.exp(run_betas) / (2 * run_betas))[:, None]
    steps = np.concatenate([np.asarray(g.stats.num_steps) for g in groups])
    _clusterkit.save(
        directory,
        groups,
        names,
        series,
        labels=labels,
        horizon=config.t1,
        steps_per_unit_time=dict(zip(names, (steps / config.t1).tolist(), strict=True)),
    )

    _replay.draw_run(directory, draw, render, animation=animation, gif=gif)


def _title(config: dict) -> str:
    return f"metastability, {config['normalization']}, n = {config['n']}, Q = K = V = I"


@figures("metastability")
def draw(directory: Path, *, dpi: int | None = None) -> list[Path]:
    """`metrics.png` and one `snapshots_d{d}.png` per dimension, from the run directory."""
    import matplotlib.pyplot as plt

    from particles import plot

    r = _clusterkit.load(directory)
    config, names, ts, series = r["config"], r["names"], r["ts"], r["series"]
    out = [directory / "metrics.png"]
    try:
        shown = {k: series[k] for k in ("clusters", "energy / max", "effective_rank")}
        axes = plot.run_curves(ts, shown, labels=names, log_time=True)
        axes[0].figure.suptitle(_title(config))
        _replay.save_figure(axes[0].figure, out[0], dpi or 110)
        for g, d in enumerate(config["dims"]):
            # one snapshot row per dimension at the largest beta: the plateaus
            j = len(config["betas"]) - 1
            # ts is log-spaced already: evenly spaced indices are evenly spaced in log-time
            frames = np.unique(np.linspace(1, len(ts) - 1, 6).round().astype(int))
            fig = plot.snapshots(
                ts, r["xs"][g][j], frames, clusters=r["labels"][g][j], singletons="0.65"
            )
            fig.suptitle(f"{names[g * len(config['betas']) + j]}: clusters over log-time")
            out.append(directory / f"snapshots_d{d}.png")
            _replay.save_figure(fig, out[-1], dpi or 90)
    finally:
        plt.close("all")
    return out


@animations("metastability")
def render(directory: Path, *, gif: bool = False, progress: bool = True, **options) -> list[Path]:
    """`animation.mp4` (or `.gif`): every beta on the last sphere of `dims`, side by side."""
    r = _clusterkit.load(directory)
    config = r["config"]
    g, k = len(r["xs"]) - 1, len(config["betas"])
    pick = [g * k + i for i in range(k)]
    shown = {"clusters": "clusters", "energy / max": "energy / max"}
    title = _title(config) + " (time axis: log-spaced frames)"
    return _clusterkit.animate(
        directory,
        r,
        pick,
        shown,
        title=title,
        gif=gif,
        progress=progress,
        options=options,
        time_format=".3g",
    )
