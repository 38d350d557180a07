"""The probability of one cluster over (t, beta): one vmapped ensemble per beta grid."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import particles as P
from particles import metrics, studies

from .. import _options as options
from .. import _replay
from .._config import require_at_least, require_positive
from .._registry import animations, experiment, figures
from . import _clusterkit

_SHORT = {"softmax": "SA", "unnormalized": "USA"}


@dataclasses.dataclass(frozen=True)
class Config:
    """Phase diagram: P(one cluster at time t) over (t, beta), SA and USA, one vmapped ensemble.

    n random tokens on S^{d-1}, `runs` starts per beta (Geshkovski, Letrouit, Polyanskiy,
    Rigollet, A mathematical perspective on Transformers, 2023)."""

    n: int = 32
    """tokens per cloud"""
    d: int = 3
    """ambient dimension: tokens live on the sphere S^{d-1}"""
    runs: int = 128
    """random starts per beta (the paper uses 1024: --runs 1024 --num-betas 30)"""
    beta_min: float = 0.25
    """smallest inverse temperature"""
    beta_max: float = 6.0
    """largest inverse temperature of SA"""
    beta_max_usa: float = 3.0
    """largest inverse temperature of USA: once clustered USA contracts at a rate ~ e^beta,
    so explicit adaptive steps grow like e^beta (about 470 per member at beta = 3, against
    about 60 for SA)"""
    num_betas: int = 12
    """number of betas, evenly spaced in [beta_min, beta_max]"""
    normalizations: tuple[str, ...] = ("softmax", "unnormalized")
    """attention normalizations, one ensemble each: softmax (SA), unnormalized (USA)"""
    t1: float = 30.0
    """final time"""
    frames: int = 31
    """number of saved times, evenly spaced in [0, t1]"""
    eps: float = 1e-3
    """one cluster means every <x_i, x_j> > 1 - eps"""
    rtol: float = 1e-5
    """relative tolerance of the adaptive step-size controller"""
    atol: float = 1e-6
    """absolute tolerance of the adaptive step-size controller"""
    cluster_tol: float = 1e-2
    """cluster tolerance of the animated example runs"""
    fps: int = 10
    """frames per second of the animation"""
    seed: int = 0
    """random seed of the starting clouds"""

    def __post_init__(self):
        require_positive(self, "runs", "beta_min", "t1", "eps", "rtol", "atol", "fps")
        require_positive(self, "cluster_tol")
        require_at_least(self, "n", 2)
        require_at_least(self, "d", 2)
        require_at_least(self, "frames", 2)
        require_at_least(self, "num_betas", 1)
        for name in ("beta_max", "beta_max_usa"):
            if not getattr(self, name) >= self.beta_min:
                raise ValueError(
                    f"{name} must be >= beta_min; got {getattr(self, name)} < {self.beta_min}"
                )
        bad = [m for m in self.normalizations if m not in _SHORT]
        if not self.normalizations or bad:
            raise ValueError(
                f"normalizations must be a non-empty list of 'softmax', 'unnormalized'; got {self.normalizations}"
            )


@experiment("phase-diagram", Config)
def run(config: Config, directory: Path, *, gif: bool = False, animation: bool = True) -> None:
    key = jax.random.key(config.seed)
    ts = jnp.linspace(0.0, config.t1, config.frames)
    numbers, arrays = {}, {}
    for norm in config.normalizations:
        top = config.beta_max if norm == "softmax" else config.beta_max_usa
        betas = jnp.linspace(config.beta_min, top, config.num_betas)
        start = time.perf_counter()
        pd = studies.phase_diagram(
            key,
            betas,
            ts,
            n=config.n,
            d=config.d,
            runs=config.runs,
            normalization=options.normalization(norm),
            rtol=config.rtol,
            atol=config.atol,
        )
        pd.min_inner.block_until_ready()
        seconds = time.perf_counter() - start
        name = _SHORT[norm]
        p = np.asarray(pd.probability(config.eps))
        s = np.asarray(pd.num_steps)
        arrays[f"min_inner_{name}"] = np.asarray(pd.min_inner)
        arrays[f"num_steps_{name}"] = s
        numbers[name] = {
            "betas": np.asarray(betas),
            "probability": p,
            "standard_error": np.asarray(pd.standard_error(config.eps)),
            "seconds_with_compilation": seconds,
            "members": int(s.size),
            "steps_min": int(s.min()),
            "steps_median": float(np.median(s)),
            "steps_max": int(s.max()),
            "steps_median_per_beta": np.median(s, axis=1),
            "steps_max_per_beta": s.max(axis=1),
            # a vmapped solve runs max(steps) iterations for everyone: the work that did
            # not idle, and what a separate batch per beta would have needed instead
            "batch_efficiency": float(s.mean() / s.max()),
            "per_beta_batches_work_fraction": float(s.max(axis=1).sum() / (s.shape[0] * s.max())),
        }
        arrays[f"betas_{name}"] = np.asarray(betas)
    np.savez(directory / "phase_diagram.npz", ts=np.asarray(ts), **arrays)

    # a few members, re-run alone with their whole trajectories: what the heat map counts
    norm = config.normalizations[0]
    top = config.beta_max if norm == "softmax" else config.beta_max_usa
    example_betas = jnp.asarray([config.beta_min, (config.beta_min + top) / 2, top])
    x0 = P.clouds.sphere_uniform(jax.random.split(key, config.runs)[0], config.n, config.d)

    def solve(beta):
        attention = P.Attention.identity(config.d, beta, normalization=options.normalization(norm))
        flow = P.AttentionFlow(attention, P.Sphere())
        return P.simulate(flow, x0, ts, rtol=config.rtol, atol=config.atol)

    examples = jax.vmap(solve)(example_betas)
    names = [f"{_SHORT[norm]} beta={float(b):.3g}" for b in example_betas]
    series = jax.vmap(lambda x, b: metrics.cluster_series(x, b, tol=config.cluster_tol))(
        examples.xs, example_betas
    )
    series = {k: np.asarray(v) for k, v in series.items()}
    labels = _clusterkit.tracked_labels(examples.xs, config.cluster_tol)
    _clusterkit.save(
        directory,
        [examples],
        names,
        series,
        labels=[labels],
        eps=config.eps,
        phase_diagram=numbers,
    )

    _replay.draw_run(directory, draw, render, animation=animation, gif=gif)


@figures("phase-diagram")
def draw(directory: Path, *, dpi: int | None = None) -> list[Path]:
    """`phase_diagram.png`: P(one cluster at t) over (t, beta) and the step counts."""
    import matplotlib.pyplot as plt

    from particles import plot

    config = P.io.read_json(directory / "config.json")["config"]
    numbers = P.io.read_json(directory / "metrics.json")["phase_diagram"]
    saved = P.io.load_arrays(directory / "phase_diagram.npz")
    names = [_SHORT[norm] for norm in config["normalizations"]]
    grids = {name: saved[f"betas_{name}"] for name in names}
    probabilities = {name: np.asarray(numbers[name]["probability"]) for name in names}
    steps = {name: saved[f"num_steps_{name}"] for name in names}
    out = directory / "phase_diagram.png"
    try:
        fig = plot.phase_figure(saved["ts"], grids, probabilities, steps)
        # two lines: a single panel (one normalization) is too narrow for one
        fig.suptitle(
            f"P(one cluster at t): n = {config['n']}, $S^{{{config['d'] - 1}}}$,\n"
            f"{config['runs']} starts per $\\beta$, eps = {config['eps']:g}"
        )
        _replay.save_figure(fig, out, dpi or 110)
    finally:
        plt.close("all")
    return [out]


@animations("phase-diagram")
def render(directory: Path, *, gif: bool = False, progress: bool = True, **options) -> list[Path]:
    """`animation.mp4` (or `.gif`): one random start of the ensemble at three betas."""
    r = _clusterkit.load(directory)
    title = "one random start of the ensemble at three betas"
    every = list(range(len(r["names"])))
    return _clusterkit.animate(
        directory,
        r,
        every,
        {"clusters": "clusters"},
        title=title,
        gif=gif,
        progress=progress,
        options=options,
    )
