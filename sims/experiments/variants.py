"""Clustering under the attention variants (dot-product, linear, Performer, additive, rotary)
from one start on the sphere: cluster count, attention-row entropy and, where it exists,
the interaction energy over time."""

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
    """Clustering under each attention variant from the same start on S^{d-1}.

    Q = K = V = I, softmax; the kernels are dot-product, linear (elu + 1, Katharopoulos et
    al. 2020), Performer random features (Choromanski et al. 2021), additive (Bahdanau et
    al. 2015) and rotary positions (Su et al. 2021)."""

    n: int = 32
    """number of tokens"""
    d: int = 3
    """ambient dimension: tokens live on the sphere S^{d-1}"""
    beta: float = 4.0
    """inverse temperature of every kernel"""
    kernels: tuple[options.AnyKernel, ...] = ("dot", "linear", "performer", "additive", "rotary")
    """the kernels compared (performer: 64 random features; additive: hidden width d)"""
    t1: float = 30.0
    """final time of the flow"""
    frames: int = 61
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
    """random seed of the starting cloud and of the kernels' random parameters"""

    def __post_init__(self):
        require_positive(self, "n", "beta", "t1", "rtol", "atol", "cluster_tol", "fps")
        require_at_least(self, "d", 2)
        require_at_least(self, "frames", 2)
        if not self.kernels or len(set(self.kernels)) != len(self.kernels):
            raise ValueError(
                f"kernels must be a non-empty list without repeats; got {self.kernels}"
            )


@experiment("variants", Config)
def run(config: Config, directory: Path, *, gif: bool = False, animation: bool = True) -> None:
    key_x, key_k = jax.random.split(jax.random.key(config.seed))
    x0 = P.clouds.sphere_uniform(key_x, config.n, config.d)
    ts = jnp.linspace(0.0, config.t1, config.frames)
    runs, energies, series = [], {}, {}
    for name, key in zip(config.kernels, jax.random.split(key_k, len(config.kernels)), strict=True):
        kernel = options.kernel(name, key, config.d)
        attention = P.Attention.identity(config.d, config.beta, kernel=kernel)
        flow = P.AttentionFlow(attention, P.Sphere())
        trajectory = P.simulate(flow, x0, ts, rtol=config.rtol, atol=config.atol)
        runs.append(trajectory)
        rows = metrics.over_time(
            lambda x, a=attention: metrics.attention_entropy(a, x)[0], trajectory.xs
        )
        entropy = {
            "entropy": jnp.mean(rows, axis=1),
            "entropy_low": jnp.quantile(rows, 0.1, axis=1),
            "entropy_high": jnp.quantile(rows, 0.9, axis=1),
        }
        clusters = {
            "clusters": metrics.over_time(metrics.cluster_count, trajectory.xs, config.cluster_tol),
            "effective_rank": metrics.over_time(metrics.effective_rank, trajectory.xs),
        }
        for k, v in {**clusters, **entropy}.items():
            series.setdefault(k, []).append(np.asarray(v))
        try:
            energy = metrics.over_time(
                lambda x, k=kernel: metrics.interaction_energy(x, config.beta, kernel=k),
                trajectory.xs,
            )
            energies[name] = np.asarray(energy)
        except NotImplementedError:
            pass  # no energy is known for this kernel: the figure leaves it out
    trajectories = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *runs)
    series = {k: np.stack(v) for k, v in series.items()}
    labels = _clusterkit.tracked_labels(trajectories.xs, config.cluster_tol)
    _clusterkit.save(
        directory,
        [trajectories],
        list(config.kernels),
        series,
        labels=[labels],
        energy=energies,
    )
    _replay.draw_run(directory, draw, render, animation=animation, gif=gif)


def _title(config: dict) -> str:
    return (
        f"$S^{{{config['d'] - 1}}}$, n = {config['n']}, Q = K = V = I, softmax, "
        f"$\\beta$ = {config['beta']:g}"
    )


@figures("variants")
def draw(directory: Path, *, dpi: int | None = None) -> list[Path]:
    """`variants.png` (cluster count, row entropy, energy) and `final_state.png`."""
    import matplotlib.pyplot as plt

    from particles import plot

    r = _clusterkit.load(directory)
    names, ts, series, config = r["names"], r["ts"], r["series"], r["config"]
    energy = {k: np.asarray(v) for k, v in r["metrics"]["energy"].items()}
    out = [directory / "variants.png", directory / "final_state.png"]
    try:
        fig = plot.variants_figure(
            ts, series, labels=names, n=config["n"], energy=energy, title=_title(config)
        )
        _replay.save_figure(fig, out[0], dpi or 110)
        fig = plot.final_state(
            ts,
            list(r["xs"][0]),
            clusters=list(r["labels"][0]),
            singletons="0.65",
            labels=names,
            title=_title(config),
        )
        _replay.save_figure(fig, out[1], dpi or 90)
    finally:
        plt.close("all")
    return out


@animations("variants")
def render(directory: Path, *, gif: bool = False, progress: bool = True, **options) -> list[Path]:
    """`animation.mp4` (or `.gif`): every kernel side by side, with its cluster count and
    mean row entropy."""
    r = _clusterkit.load(directory)
    shown = {"clusters": "clusters", "row entropy": "entropy"}
    return _clusterkit.animate(
        directory,
        r,
        list(range(len(r["names"]))),
        shown,
        title=_title(r["config"]),
        gif=gif,
        progress=progress,
        options=options,
    )


def summary(saved: dict) -> list[str]:
    """Final cluster count and mean row entropy of each kernel."""
    final = saved["final"]
    return [
        f"{name}: {final['clusters'][name]:g} clusters, row entropy {final['entropy'][name]:.3f}"
        for name in saved["runs"]
    ]
