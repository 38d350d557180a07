"""The default experiment: tokens uniform on the sphere cluster under self-attention."""

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
from .._config import require_at_least, require_one_of, require_positive
from .._registry import experiment


@dataclasses.dataclass(frozen=True)
class Config:
    """Tokens uniform on the sphere S^{d-1} cluster under self-attention, Q = K = V = I
    (Geshkovski, Letrouit, Polyanskiy, Rigollet 2023)."""

    n: int = 256
    """number of tokens"""
    d: int = 3
    """ambient dimension: tokens live on the sphere S^{d-1} in R^d"""
    beta: float = 9.0
    """inverse temperature of the attention kernel exp(beta <x, y>)"""
    normalization: options.Normalization = "softmax"
    """softmax (SA) or unnormalized (USA) attention"""
    t1: float = 30.0
    """final time of the flow"""
    frames: int = 151
    """number of saved times (animation frames), evenly spaced in [0, t1]"""
    solver: str = "tsit5"
    """diffrax solver (every name the library offers is listed below)"""
    rtol: float = 1e-5
    """relative tolerance of the adaptive step-size controller"""
    atol: float = 1e-6
    """absolute tolerance of the adaptive step-size controller"""
    cluster_tol: float = 1e-2
    """tokens closer than this (Euclidean) belong to the same cluster"""
    fps: int = 20
    """frames per second of the animation"""
    seed: int = 0
    """random seed of the initial cloud"""

    def __post_init__(self):
        require_positive(self, "n", "beta", "t1", "rtol", "atol", "cluster_tol", "fps")
        require_at_least(self, "d", 2)
        require_at_least(self, "frames", 2)
        require_one_of(self, "solver", options.SOLVERS)


@experiment("sphere-clustering", Config)
def run(config: Config, directory: Path, *, gif: bool = False, animation: bool = True) -> None:
    key = jax.random.key(config.seed)
    x0 = P.clouds.sphere_uniform(key, config.n, config.d)
    attention = P.Attention.identity(
        config.d, config.beta, normalization=options.normalization(config.normalization)
    )
    flow = P.AttentionFlow(attention, P.Sphere())
    ts = jnp.linspace(0.0, config.t1, config.frames)
    trajectory = P.simulate(
        flow,
        x0,
        ts,
        solver=options.solver(config.solver),
        rtol=config.rtol,
        atol=config.atol,
        progress=True,
    )
    xs = trajectory.xs
    series = {
        "energy": metrics.over_time(metrics.interaction_energy, xs, config.beta),
        "clusters": metrics.over_time(metrics.cluster_count, xs, config.cluster_tol),
        "mean_cosine": metrics.over_time(metrics.mean_pairwise_cosine, xs),
        "sphere_drift": P.sphere_drift(xs),
    }
    series = {k: np.asarray(v) for k, v in series.items()}
    P.io.save_trajectory(directory / P.io.TRAJECTORY_FILE, trajectory)
    P.io.write_json(
        directory / "metrics.json",
        {
            "ts": np.asarray(ts),
            "series": series,
            "final": {k: v[-1] for k, v in series.items()},
            "solver": {
                "name": config.solver,
                "num_steps": trajectory.num_steps,
                "num_accepted": trajectory.stats.num_accepted,
                "num_rejected": trajectory.stats.num_rejected,
            },
        },
    )
    # figures and animation are drawn from the files just written, exactly as
    # `python -m sims plot` / `animate` redraw them later
    saved = _replay.load(directory)
    _replay.draw_figures(saved, cluster_tol=config.cluster_tol)
    if animation:
        _replay.draw_animation(saved, gif=gif, cluster_tol=config.cluster_tol, fps=config.fps)
