"""Under the causal mask the first token attracts all the others."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

import particles as P
from particles import metrics

from .. import _options as options
from .._config import require_at_least, require_positive
from .._registry import experiment
from . import _clusterkit


@dataclasses.dataclass(frozen=True)
class Config:
    """Causal attention on the sphere: the first token attracts all the others.

    Token 0 sees only itself and stays put; the others are drawn to it, faster for small
    beta (Castin, Ablin, Peyre 2024; Geshkovski et al. 2023)."""

    n: int = 32
    """number of tokens"""
    d: int = 3
    """ambient dimension: tokens live on the sphere S^{d-1}"""
    betas: tuple[float, ...] = (1.0, 4.0, 9.0)
    """inverse temperatures, all run from the same start"""
    normalization: Literal["softmax", "unnormalized"] = "softmax"
    """softmax (SA) or unnormalized (USA) attention"""
    t1: float = 40.0
    """final time of the flow"""
    frames: int = 121
    """number of saved times, evenly spaced in [0, t1]"""
    rtol: float = 1e-6
    """relative tolerance of the adaptive step-size controller"""
    atol: float = 1e-7
    """absolute tolerance of the adaptive step-size controller"""
    cluster_tol: float = 1e-2
    """tokens closer than this (Euclidean) are in the same cluster"""
    fps: int = 20
    """frames per second of the animation"""
    seed: int = 0
    """random seed of the starting cloud"""

    def __post_init__(self):
        require_positive(self, "t1", "rtol", "atol", "cluster_tol", "fps")
        require_at_least(self, "n", 2)
        require_at_least(self, "d", 2)
        require_at_least(self, "frames", 2)
        if not self.betas or any(not b > 0 for b in self.betas):
            raise ValueError(f"betas must be a non-empty list of values > 0; got {self.betas}")


@experiment("causal", Config)
def run(config: Config, directory: Path, *, gif: bool = False, animation: bool = True) -> None:
    from particles import plot

    x0 = P.clouds.sphere_uniform(jax.random.key(config.seed), config.n, config.d)
    ts = jnp.linspace(0.0, config.t1, config.frames)
    betas = jnp.asarray(config.betas)

    def solve(beta):
        attention = P.Attention.identity(
            config.d, beta, normalization=options.normalization(config.normalization), causal=True
        )
        flow = P.AttentionFlow(attention, P.Sphere())
        return P.simulate(flow, x0, ts, rtol=config.rtol, atol=config.atol)

    trajectories = jax.vmap(solve)(betas)
    xs = trajectories.xs
    names = [f"beta={b:g}" for b in config.betas]
    series = jax.vmap(lambda x, b: metrics.cluster_series(x, b, tol=config.cluster_tol))(xs, betas)
    series = {k: np.asarray(v) for k, v in series.items()}
    series["alignment with token 0"] = np.asarray(
        jax.vmap(lambda x: metrics.over_time(metrics.alignment_to, x, 0))(xs)
    )
    # the first token never moves: it sees only itself, and P_x x = 0
    drift0 = np.asarray(jnp.max(jnp.linalg.norm(xs[:, :, 0] - x0[0], axis=-1), axis=-1))
    labels = _clusterkit.tracked_labels(xs, config.cluster_tol)
    final_cos = np.asarray(xs[:, -1] @ x0[0])
    _clusterkit.save(
        directory,
        [trajectories],
        names,
        series,
        labels=[labels],
        first_token_displacement=dict(zip(names, drift0.tolist(), strict=True)),
        final_cosines_with_token_0=dict(zip(names, final_cos.tolist(), strict=True)),
    )

    title = (
        f"causal {config.normalization} attention on $S^{{{config.d - 1}}}$, n = {config.n}, "
        "Q = K = V = I (token 0 in black)"
    )
    shown = {k: series[k] for k in ("alignment with token 0", "clusters", "effective_rank")}
    axes = plot.run_curves(ts, shown, labels=names)
    axes[0].figure.suptitle(title)
    axes[0].figure.savefig(directory / "metrics.png", dpi=110)
    # colour by tracked cluster, token 0 in black
    colors = []
    for j in range(len(names)):
        c = plot.cluster_colors(labels[j], singletons="0.65")
        c[..., 0, :] = (0.0, 0.0, 0.0, 1.0)
        colors.append(c)
    fig = plot.final_state(ts, list(np.asarray(xs)), colors=colors, labels=names, title=title)
    fig.savefig(directory / "final_state.png", dpi=100)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.4), layout="constrained")
    ax.plot(np.arange(config.n), final_cos.T, marker="o", ms=3, lw=1)
    ax.set_xlabel("token index i")
    ax.set_ylabel(r"$\langle x_i(t_1), x_0\rangle$")
    ax.legend(names, fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("final alignment with the first token")
    fig.savefig(directory / "alignment.png", dpi=110)
    plt.close("all")
    if animation:
        plot.animate(
            ts,
            list(np.asarray(xs)),
            directory / ("animation.gif" if gif else "animation.mp4"),
            labels=names,
            colors=colors,
            metrics={"alignment with token 0": series["alignment with token 0"]},
            fps=config.fps,
            title=title,
        )
