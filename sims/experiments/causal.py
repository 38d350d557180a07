"""Under the causal mask the first token attracts all the others."""

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
    """Causal attention on the sphere: the first token attracts all the others.

    Token 0 sees only itself and stays put; the others are drawn to it, faster for small
    beta (Castin, Ablin, Peyre 2024; Geshkovski et al. 2023)."""

    n: int = 32
    """number of tokens"""
    d: int = 3
    """ambient dimension: tokens live on the sphere S^{d-1}"""
    betas: tuple[float, ...] = (1.0, 4.0, 9.0)
    """inverse temperatures, all run from the same start"""
    normalization: options.Normalization = "softmax"
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
    drift0 = np.asarray(jnp.max(jnp.linalg.norm(xs[:, :, 0] - x0[0][None, None], axis=-1), axis=-1))
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

    _replay.draw_run(directory, draw, render, animation=animation, gif=gif)


def _title(config: dict) -> str:
    return (
        f"causal {config['normalization']} attention on $S^{{{config['d'] - 1}}}$, "
        f"n = {config['n']}, Q = K = V = I (token 0 in black)"
    )


def _colors(labels) -> list:
    """Colour by tracked cluster, token 0 in black."""
    from particles import plot

    colors = []
    for runs in labels:
        c = plot.cluster_colors(runs, singletons="0.65")
        c[..., 0, :] = (0.0, 0.0, 0.0, 1.0)
        colors.append(c)
    return colors


@figures("causal")
def draw(directory: Path, *, dpi: int | None = None) -> list[Path]:
    """`metrics.png`, `final_state.png` and `alignment.png`, from the run directory."""
    import matplotlib.pyplot as plt

    from particles import plot

    r = _clusterkit.load(directory)
    names, ts, series, title = r["names"], r["ts"], r["series"], _title(r["config"])
    xs, labels = r["xs"][0], r["labels"][0]
    final_cos = np.asarray([r["metrics"]["final_cosines_with_token_0"][n] for n in names])
    out = [directory / n for n in ("metrics.png", "final_state.png", "alignment.png")]
    try:
        shown = {k: series[k] for k in ("alignment with token 0", "clusters", "effective_rank")}
        axes = plot.run_curves(ts, shown, labels=names)
        axes[0].figure.suptitle(title)
        _replay.save_figure(axes[0].figure, out[0], dpi or 110)
        fig = plot.final_state(ts, list(xs), colors=_colors(labels), labels=names, title=title)
        _replay.save_figure(fig, out[1], dpi or 100)
        fig, ax = plt.subplots(figsize=(4.6, 3.4), layout="constrained")
        ax.plot(np.arange(xs.shape[2]), final_cos.T, marker="o", ms=3, lw=1)
        ax.set_xlabel("token index i")
        ax.set_ylabel(r"$\langle x_i(t_1), x_0\rangle$")
        ax.legend(names, fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_title("final alignment with the first token")
        _replay.save_figure(fig, out[2], dpi or 110)
    finally:
        plt.close("all")
    return out


@animations("causal")
def render(directory: Path, *, gif: bool = False, progress: bool = True, **options) -> list[Path]:
    """`animation.mp4` (or `.gif`): every beta side by side, token 0 in black."""
    r = _clusterkit.load(directory)
    every = list(range(len(r["names"])))
    shown = {"alignment with token 0": "alignment with token 0"}
    colors = _colors(r["labels"][0])
    title = _title(r["config"])
    return _clusterkit.animate(
        directory,
        r,
        every,
        shown,
        title=title,
        gif=gif,
        progress=progress,
        options=options,
        colors=colors,
    )
