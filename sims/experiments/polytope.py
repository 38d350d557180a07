"""Euclidean tokens, rescaled by their growth, converge to the vertices of a polytope."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import particles as P
from particles import metrics

from .. import _replay
from .._config import require_at_least, require_positive
from .._registry import animations, experiment, figures
from . import _clusterkit


@dataclasses.dataclass(frozen=True)
class Config:
    """Euclidean tokens rescaled by exp(-t) converge to the vertices of a convex polytope.

    In the plane with V = I and Q^T K positive definite; a V with a simple positive top
    eigenvalue gathers them on lines instead (Geshkovski, Letrouit, Polyanskiy, Rigollet
    2023)."""

    n: int = 40
    """number of tokens (in the plane R^2)"""
    beta: float = 5.0
    """inverse temperature"""
    t1: float = 12.0
    """final time of the flow (tokens grow like exp(t))"""
    frames: int = 121
    """number of saved times, evenly spaced in [0, t1]"""
    contrast_eigenvalue: float = 0.5
    """second eigenvalue of the contrast value matrix V = diag(1, this); must be < 1"""
    qk_noise: float = 0.0
    """Q = K = I + qk_noise * G with G Gaussian (Q^T K stays positive definite)"""
    rtol: float = 1e-6
    """relative tolerance of the adaptive step-size controller"""
    atol: float = 1e-6
    """absolute tolerance of the adaptive step-size controller"""
    cluster_tol: float = 1e-2
    """rescaled tokens closer than this are one vertex"""
    fps: int = 20
    """frames per second of the animation"""
    seed: int = 0
    """random seed of the starting cloud and of Q, K"""

    def __post_init__(self):
        require_positive(self, "n", "beta", "t1", "rtol", "atol", "cluster_tol", "fps")
        require_at_least(self, "frames", 2)
        require_at_least(self, "qk_noise", 0.0)
        if not self.contrast_eigenvalue < 1:
            raise ValueError(
                f"contrast_eigenvalue must be < 1 (so 1 is the simple top eigenvalue); "
                f"got {self.contrast_eigenvalue}"
            )


@experiment("polytope", Config)
def run(config: Config, directory: Path, *, gif: bool = False, animation: bool = True) -> None:
    key_x, key_q = jax.random.split(jax.random.key(config.seed))
    x0 = P.clouds.ball_uniform(key_x, config.n, 2)
    # Q = K = A: Q^T K = A^T A is positive definite whenever A is invertible
    A = jnp.eye(2) + config.qk_noise * jax.random.normal(key_q, (2, 2))
    values = {
        "V = I": jnp.eye(2),
        f"V = diag(1, {config.contrast_eigenvalue:g})": jnp.diag(
            jnp.array([1.0, config.contrast_eigenvalue])
        ),
    }
    ts = jnp.linspace(0.0, config.t1, config.frames)
    names, runs, zs = [], [], []
    for name, V in values.items():
        flow = P.AttentionFlow(P.Attention(A, A, V, config.beta))
        traj = P.simulate(flow, x0, ts, rtol=config.rtol, atol=config.atol)
        names.append(name)
        runs.append(traj)
        zs.append(metrics.rescaled(ts, traj.xs, V))
    if abs(float(jnp.linalg.det(A))) < 1e-6:
        raise ValueError("qk_noise drew a singular Q = K: Q^T K is not positive definite")
    trajectories = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *runs)
    zs = jnp.stack(zs)
    # how far each rescaled token still is from its final position: -> 0 as z converges
    settle = jnp.max(jnp.linalg.norm(zs - zs[:, -1:], axis=-1), axis=-1)
    vertices = jax.vmap(lambda z: metrics.cluster_count(z[-1], config.cluster_tol))(zs)
    # V = diag(1, c): the first coordinate of z is the eigen-direction; distinct values = lines
    lines = jax.vmap(lambda z: metrics.cluster_count(z[-1][:, :1], config.cluster_tol))(zs)
    series = {
        "rescaled distance to limit": np.asarray(settle),
        "vertices": np.asarray(
            jax.vmap(jax.vmap(lambda z: metrics.cluster_count(z, config.cluster_tol)))(zs)
        ),
        "max |x|": np.asarray(jnp.max(jnp.linalg.norm(trajectories.xs, axis=-1), axis=-1)),
    }
    labels = _clusterkit.tracked_labels(zs, config.cluster_tol)
    _clusterkit.save(
        directory,
        [trajectories],
        names,
        series,
        labels=[labels],
        limit_points=dict(zip(names, np.asarray(vertices).tolist(), strict=True)),
        hyperplanes=dict(zip(names, np.asarray(lines).tolist(), strict=True)),
        Q_transpose_K=np.asarray(A.T @ A),
    )
    np.savez(directory / "rescaled.npz", zs=np.asarray(zs), ts=np.asarray(ts))
    _replay.draw_run(directory, draw, render, animation=animation, gif=gif)


def _saved(directory: Path) -> dict:
    """What the figures need, read back from the run directory (never recomputed)."""
    config = P.io.read_json(directory / "config.json")["config"]
    saved = P.io.read_json(directory / "metrics.json")
    names = saved["runs"]
    rescaled = P.io.load_arrays(directory / "rescaled.npz")
    labels = P.io.load_arrays(directory / "arrays.npz")["labels"]
    distance = np.asarray(
        [saved["series"][f"rescaled distance to limit [{name}]"] for name in names]
    )
    return dict(
        config=config,
        names=names,
        ts=rescaled["ts"],
        zs=rescaled["zs"],
        labels=labels,
        distance=distance,
        vertices=[saved["limit_points"][name] for name in names],
        lines=[saved["hyperplanes"][name] for name in names],
    )


@figures("polytope")
def draw(directory: Path, *, dpi: int | None = None) -> list[Path]:
    """`polytope.png`: each run's rescaled tokens with their limit points, and how fast
    they settle."""
    import matplotlib.pyplot as plt

    from particles import plot

    r = _saved(directory)
    names, config = r["names"], r["config"]
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.4), layout="constrained")
    for j, name in enumerate(names):
        plot.polytope(
            r["zs"][j],
            ax=axes[j],
            colors=plot.cluster_colors(r["labels"][j][-1]),
            hull=j == 0,
            title=f"{name}: {int(r['vertices'][j])} limit points"
            + ("" if j == 0 else f" on {int(r['lines'][j])} lines"),
        )
    axes[2].semilogy(r["ts"], r["distance"].T, lw=1.5)
    axes[2].legend(names, fontsize=8)
    axes[2].set_xlabel("time t")
    axes[2].set_title(r"$\max_i |z_i(t) - z_i(t_1)|$")
    axes[2].grid(alpha=0.3)
    fig.suptitle(
        rf"rescaled tokens $z = e^{{-tV}} x$, n = {config['n']}, $\beta$ = {config['beta']:g}"
    )
    out = directory / "polytope.png"
    _replay.save_figure(fig, out, dpi or 110)
    plt.close("all")
    return [out]


@animations("polytope")
def render(directory: Path, *, gif: bool = False, progress: bool = True, **options) -> list[Path]:
    """`animation.mp4` (or `.gif`): the rescaled tokens of every run, coloured by their limit
    vertex."""
    from particles import plot

    r = _saved(directory)
    return _replay.write_animation(
        directory,
        plot.animate,
        r["ts"],
        list(r["zs"]),
        gif=gif,
        fps=r["config"]["fps"],
        options=options,
        labels=r["names"],
        clusters=list(r["labels"]),
        metrics={"rescaled distance to limit": r["distance"]},
        title=r"rescaled tokens $e^{-tV} x_i(t)$, coloured by their limit vertex",
        progress=progress,
    )
