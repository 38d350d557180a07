"""The default experiment: tokens uniform on the sphere cluster under self-attention."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

import particles as P
from particles import analysis

from .._config import require_at_least, require_positive
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
    normalization: Literal["softmax", "unnormalized"] = "softmax"
    """softmax (SA) or unnormalized (USA) attention"""
    t1: float = 30.0
    """final time of the flow"""
    frames: int = 151
    """number of saved times (animation frames), evenly spaced in [0, t1]"""
    solver: str = "tsit5"
    """diffrax solver: euler, heun, midpoint, ralston, bosh3, dopri5, dopri8, tsit5"""
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
        if self.solver not in P.SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(P.SOLVERS)}; got {self.solver!r}")


@experiment("sphere-clustering", Config)
def run(config: Config, directory: Path, *, gif: bool = False, animation: bool = True) -> None:
    from particles import plot

    key = jax.random.key(config.seed)
    x0 = P.clouds.sphere_uniform(key, config.n, config.d)
    attention = P.SelfAttention.identity(config.d, config.beta, normalization=config.normalization)
    flow = P.AttentionFlow(attention, P.Sphere())
    ts = jnp.linspace(0.0, config.t1, config.frames)
    trajectory = P.simulate(
        flow, x0, ts, solver=config.solver, rtol=config.rtol, atol=config.atol, progress=True
    )
    xs = trajectory.xs
    series = {
        "energy": analysis.over_time(analysis.interaction_energy, xs, config.beta),
        "clusters": analysis.over_time(analysis.cluster_count, xs, config.cluster_tol),
        "mean_cosine": analysis.over_time(analysis.mean_pairwise_cosine, xs),
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
                "num_accepted": trajectory.num_accepted,
                "num_rejected": trajectory.num_rejected,
            },
        },
    )
    labels = np.asarray(analysis.cluster_labels(xs[-1], config.cluster_tol))
    colors = plot.cluster_colors(labels)
    title = (
        f"{config.normalization} attention on $S^{{{config.d - 1}}}$: "
        f"n = {config.n}, $\\beta$ = {config.beta:g}, Q = K = V = I"
    )
    shown = {
        "energy $E_\\beta$": series["energy"],
        "clusters (tol " + f"{config.cluster_tol:g})": series["clusters"],
    }
    fig = plot.summary_figure(ts, xs, shown, colors=colors, title=title)
    fig.savefig(directory / "figure.png", dpi=110)
    if animation:
        name = "animation.gif" if gif else "animation.mp4"
        plot.animate(
            ts, xs, directory / name, metrics=shown, colors=colors, fps=config.fps, title=title
        )
