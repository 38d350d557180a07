"""Random clouds on the sphere collapse to one cluster, for SA and USA at several betas."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import equinox as eqx
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
    """Random clouds on S^{d-1} collapse to one cluster, SA and USA at several betas.

    Q = K = V = I, plus random Q, K, V for contrast (Geshkovski, Letrouit, Polyanskiy,
    Rigollet 2023)."""

    n: int = 32
    """number of tokens"""
    d: int = 3
    """ambient dimension: tokens live on the sphere S^{d-1} (d >= 3 for the theorem)"""
    betas: tuple[float, ...] = (1.0, 2.0, 4.0)
    """inverse temperatures, each run with SA and with USA from the same start"""
    random_qkv: int = 2
    """number of random (Q, K, V) draws (softmax, beta = the first of betas)"""
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
    eps: float = 1e-3
    """one cluster means every <x_i, x_j> > 1 - eps"""
    fps: int = 20
    """frames per second of the animation"""
    seed: int = 0
    """random seed of the starting cloud and of the random Q, K, V"""

    def __post_init__(self):
        require_positive(self, "n", "t1", "rtol", "atol", "cluster_tol", "eps", "fps")
        require_at_least(self, "d", 2)
        require_at_least(self, "frames", 2)
        require_at_least(self, "random_qkv", 0)
        if not self.betas or any(not b > 0 for b in self.betas):
            raise ValueError(f"betas must be a non-empty list of values > 0; got {self.betas}")


def _solve(attention, x0, ts, config):
    flow = P.AttentionFlow(attention, P.Sphere())
    return P.simulate(flow, x0, ts, rtol=config.rtol, atol=config.atol)


@experiment("clustering", Config)
def run(config: Config, directory: Path, *, gif: bool = False, animation: bool = True) -> None:
    key_x, key_qkv = jax.random.split(jax.random.key(config.seed))
    x0 = P.clouds.sphere_uniform(key_x, config.n, config.d)
    ts = jnp.linspace(0.0, config.t1, config.frames)
    betas = jnp.asarray(config.betas)
    names, runs, run_betas = [], [], []
    for norm, short in (("softmax", "SA"), ("unnormalized", "USA")):
        # one vmapped solve over the betas, from the same start
        runs.append(
            jax.vmap(
                lambda b, norm=norm: _solve(
                    P.Attention.identity(config.d, b, normalization=options.normalization(norm)),
                    x0,
                    ts,
                    config,
                )
            )(betas)
        )
        names += [f"{short} beta={b:g}" for b in config.betas]
        run_betas += list(config.betas)
    if config.random_qkv:
        keys = jax.random.split(key_qkv, config.random_qkv)
        heads = eqx.filter_vmap(lambda k: P.Attention.random(k, config.d, beta=betas[0]))(keys)
        runs.append(eqx.filter_vmap(lambda a: _solve(a, x0, ts, config))(heads))
        names += [f"random QKV {j + 1}" for j in range(config.random_qkv)]
        run_betas += [config.betas[0]] * config.random_qkv
    trajectories = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *runs)
    xs = trajectories.xs
    series = jax.vmap(
        lambda x, b: metrics.cluster_series(x, b, tol=config.cluster_tol, eps=config.eps)
    )(xs, jnp.asarray(run_betas))
    series = {k: np.asarray(v) for k, v in series.items()}
    t_one = np.asarray(jax.vmap(lambda x: metrics.time_to_one_cluster(ts, x, config.eps))(xs))
    labels = _clusterkit.tracked_labels(xs, config.cluster_tol)
    _clusterkit.save(
        directory,
        [trajectories],
        names,
        series,
        labels=[labels],
        time_to_one_cluster=dict(zip(names, t_one.tolist(), strict=True)),
    )

    _replay.draw_run(directory, draw, render, animation=animation, gif=gif)


def _title(config: dict) -> str:
    return (
        f"$S^{{{config['d'] - 1}}}$, n = {config['n']}, Q = K = V = I (random QKV: softmax, "
        f"$\\beta$ = {config['betas'][0]:g})"
    )


@figures("clustering")
def draw(directory: Path, *, dpi: int | None = None) -> list[Path]:
    """`metrics.png`, `final_state.png` and `snapshots.png`, from the run directory."""
    import matplotlib.pyplot as plt

    from particles import plot

    r = _clusterkit.load(directory)
    names, ts, series, config = r["names"], r["ts"], r["series"], r["config"]
    xs, labels, title = r["xs"][0], r["labels"][0], _title(config)
    out = [directory / n for n in ("metrics.png", "final_state.png", "snapshots.png")]
    try:
        shown = ["clusters", "effective_rank", "energy", "diameter"]
        axes = plot.run_curves(ts, {k: series[k] for k in shown}, labels=names, logy=("diameter",))
        axes[0].figure.suptitle(title)
        _replay.save_figure(axes[0].figure, out[0], dpi or 110)
        fig = plot.final_state(
            ts, list(xs), clusters=list(labels), singletons="0.65", labels=names, title=title
        )
        _replay.save_figure(fig, out[1], dpi or 90)
        # the slowest of the SA runs, on its way
        slow = len(config["betas"]) - 1
        fig = plot.snapshots(ts, xs[slow], clusters=labels[slow], singletons="0.65")
        fig.suptitle(f"{names[slow]}: snapshots coloured by tracked cluster")
        _replay.save_figure(fig, out[2], dpi or 90)
    finally:
        plt.close("all")
    return out


@animations("clustering")
def render(directory: Path, *, gif: bool = False, progress: bool = True, **options) -> list[Path]:
    """`animation.mp4` (or `.gif`): SA and USA at the middle beta, and the first random
    draw, side by side."""
    r = _clusterkit.load(directory)
    config = r["config"]
    k = len(config["betas"])
    pick = [k // 2, k + k // 2] + ([2 * k] if config["random_qkv"] else [])
    shown = {"clusters": "clusters", "effective rank": "effective_rank"}
    title = _title(config)
    return _clusterkit.animate(
        directory, r, pick, shown, title=title, gif=gif, progress=progress, options=options
    )
