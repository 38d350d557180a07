"""Infinitely deep weight-sharing networks converge to the attention flow."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

import diffrax
import equinox as eqx
import jax
import numpy as np

import particles as P
from particles import metrics, networks, studies

from .. import _replay
from .._config import require_at_least, require_positive
from .._registry import animations, experiment, figures

# the names of `particles.studies.VARIANTS`, as a type the command line checks against
Variant = Literal[studies.VARIANTS]


@dataclasses.dataclass(frozen=True)
class Config:
    """Residual attention networks of depth L converge to the flow they discretise as
    L -> infinity: error at T against L for ten networks, with fitted orders (float64)."""

    n: int = 32
    """number of tokens"""
    d: int = 3
    """dimension of the tokens (3: the animation draws the sphere S^2)"""
    beta: float = 1.0
    """inverse temperature of the random attention"""
    horizon: float = 2.0
    """time T spanned by the networks (step h = T / L)"""
    min_depth: int = 4
    """smallest depth L of the study"""
    max_depth: int = 1024
    """largest depth L; depths double from min_depth"""
    variants: tuple[Variant, ...] = studies.VARIANTS
    """networks studied: post-norm N(x + h v) and projected-post-norm N(x + h P_x v) live on the
    sphere, pre-norm normalises attention's input, strang-euler is Macaron (Euler sub-steps,
    first order), strang has Heun sub-steps (second order)"""
    pieces: int = 4
    """distinct weight sets of the per-layer network (its depth is a multiple of this)"""
    hidden: int = 16
    """width of the feed-forward block of lie-trotter, strang-euler and strang"""
    depth_for_profile: int = 32
    """depth at which the error along depth is recorded for every variant"""
    collapse_depths: tuple[int, ...] = (16, 32, 64, 128)
    """depths of the first variant whose errors along depth, times L^order, are overlaid"""
    shallow_depth: int = 8
    """depth of the network animated beside its flow (frames: its layers)"""
    animated: Variant = "post-norm"
    """variant animated beside its flow"""
    rtol: float = 1e-12
    """relative tolerance of the reference dopri8 solve"""
    atol: float = 1e-12
    """absolute tolerance of the reference dopri8 solve"""
    fit_floor: float = 1e-11
    """errors at or below this are left out of the slope fits (reference accuracy, rounding)"""
    fps: float = 2.0
    """frames (layers) per second of the animation"""
    seed: int = 0
    """random seed of the weights and the initial cloud"""

    def __post_init__(self):
        require_positive(self, "n", "beta", "horizon", "rtol", "atol", "fit_floor", "fps")
        require_at_least(self, "d", 2)
        require_at_least(self, "min_depth", 1)
        require_at_least(self, "max_depth", 2 * self.min_depth)
        require_at_least(self, "pieces", 1)
        require_at_least(self, "hidden", 1)
        require_at_least(self, "depth_for_profile", 1)
        require_at_least(self, "shallow_depth", 1)
        if not self.variants:
            raise ValueError("variants must name at least one network")
        unknown = [v for v in self.variants if v not in studies.VARIANTS]
        if unknown:
            raise ValueError(
                f"variants must be among {', '.join(studies.VARIANTS)}; got {unknown[0]!r}"
            )
        if self.animated not in studies.VARIANTS:
            raise ValueError(f"animated must be one of {', '.join(studies.VARIANTS)}")
        if not self.collapse_depths or min(self.collapse_depths) < 1:
            raise ValueError(f"collapse_depths must be positive; got {self.collapse_depths}")
        if "per-layer" in (*self.variants, self.animated):
            for name in ("min_depth", "depth_for_profile", "shallow_depth", "collapse_depths"):
                values = np.atleast_1d(getattr(self, name))
                if np.any(values % self.pieces):
                    raise ValueError(
                        f"{name} must be a multiple of pieces={self.pieces} for the per-layer "
                        f"network; got {getattr(self, name)}"
                    )

    @property
    def depths(self) -> list[int]:
        out = [self.min_depth]
        while 2 * out[-1] <= self.max_depth:
            out.append(2 * out[-1])
        return out


@eqx.filter_jit
def _draw(key, n: int, d: int, beta: float, hidden: int, pieces: int):
    # one compiled draw instead of a dozen eagerly dispatched ones
    k_attention, k_ff, k_layers, k_x0 = jax.random.split(key, 4)
    attention = P.Attention.random(k_attention, d, beta=beta)
    feedforward = P.FeedForward.random(k_ff, d, hidden, "tanh")
    layers = eqx.filter_vmap(lambda k: P.Attention.random(k, d, beta=beta))(
        jax.random.split(k_layers, pieces)
    )
    return attention, feedforward, layers, P.clouds.sphere_uniform(k_x0, n, d)


def _setup(config: Config):
    attention, feedforward, layers, x0 = _draw(
        jax.random.key(config.seed), config.n, config.d, config.beta, config.hidden, config.pieces
    )

    def make(name):
        return studies.variant(
            name, attention, feedforward=feedforward, layers=layers, horizon=config.horizon
        )

    return make, x0


def _reference_options(config):
    return dict(solver=diffrax.Dopri8(), rtol=config.rtol, atol=config.atol, max_steps=1_000_000)


@experiment("deep-limit", Config)
def run(config: Config, directory: Path, *, gif: bool = False, animation: bool = True) -> None:
    # float64 throughout: the RK4 network reaches errors of 1e-12
    with jax.enable_x64(True):
        _run(config, directory, gif=gif, animation=animation)


def _run(config: Config, directory: Path, *, gif: bool, animation: bool) -> None:
    make, x0 = _setup(config)
    options = _reference_options(config)
    depths = config.depths
    collapse_name = config.variants[0]
    # One reference solve per flow, saved on a grid that every recorded depth divides: the
    # layer grid of depth L is every (M / L)-th of its points, bit for bit.
    M = math.lcm(config.depth_for_profile, config.shallow_depth, *config.collapse_depths)
    fine_ts = networks.layer_times(M, config.horizon, x0.dtype)

    errors, slopes, fitted, profile, collapse = {}, {}, {}, {}, {}
    for name in dict.fromkeys((*config.variants, config.animated)):
        flow, scheme = make(name)
        fine = P.simulate(flow, x0, fine_ts, **options)

        def along_depth(L, flow=flow, scheme=scheme, fine=fine):
            net = P.ResidualNetwork(flow, L, config.horizon, scheme=scheme)
            return np.asarray(studies.depth_error(net, x0, reference=fine.xs[:: M // L]))

        if name == config.animated:
            shallow = P.ResidualNetwork(flow, config.shallow_depth, config.horizon, scheme=scheme)
            step = M // config.shallow_depth
            limit = eqx.tree_at(lambda tr: (tr.ts, tr.xs), fine, (fine.ts[::step], fine.xs[::step]))
            layers = shallow.trajectory(x0)
            along = np.asarray(studies.max_distance(layers.xs, limit.xs))
        if name not in config.variants:
            continue
        e = np.asarray(
            studies.final_errors(
                flow, x0, depths, config.horizon, scheme=scheme, reference=fine.final
            )
        )
        errors[name] = e
        keep = e > config.fit_floor
        fitted[name] = [L for L, k in zip(depths, keep, strict=True) if k]
        slopes[name] = (
            metrics.fit_power_law(depths, e, floor=config.fit_floor)[0] if keep.sum() >= 2 else None
        )
        profile[name] = along_depth(config.depth_for_profile)
        # the first variant at several depths: L^p e_l is one curve if the error is O(L^-p)
        # uniformly along depth
        if name == collapse_name:
            collapse = {
                L: (np.asarray(fine_ts[:: M // L]), along_depth(L)) for L in config.collapse_depths
            }
    profile_ts = np.asarray(fine_ts[:: M // config.depth_for_profile])
    ts = limit.ts

    P.io.save_trajectory(directory / P.io.TRAJECTORY_FILE, limit)
    P.io.save_trajectory(directory / "network.npz", layers)
    P.io.write_json(
        directory / "metrics.json",
        {
            "ts": np.asarray(ts),
            "series": {"network_error": along},
            "depths": depths,
            "errors": errors,
            "slopes": slopes,
            # slope between consecutive depths: tends to -order as L grows
            "local_slopes": {
                name: np.diff(np.log(e)) / np.diff(np.log(depths)) for name, e in errors.items()
            },
            "orders": {name: networks.ORDERS[make(name)[1]] for name in config.variants},
            "fit_floor": config.fit_floor,
            "fitted_depths": fitted,
            "depth_profile": {
                "depth": config.depth_for_profile,
                "ts": profile_ts,
                "errors": profile,
            },
            "collapse": {
                "variant": collapse_name,
                "errors": {str(L): e for L, (_, e) in collapse.items()},
                "ts": {str(L): t for L, (t, _) in collapse.items()},
            },
            "shallow": {
                "variant": config.animated,
                "depth": config.shallow_depth,
                "final_error": along[-1],
            },
            "reference": {"solver": "dopri8", "rtol": config.rtol, "atol": config.atol},
        },
    )

    _replay.draw_run(directory, draw, render, animation=animation, gif=gif)


def _title(config: dict) -> str:
    return (
        f"n = {config['n']}, d = {config['d']}, T = {config['horizon']:g}, "
        f"random Q, K, V ($\\beta$ = {config['beta']:g}), float64"
    )


@figures("deep-limit")
def draw(directory: Path, *, dpi: int | None = None) -> list[Path]:
    """`convergence.png` (error at T against depth, fitted slopes) and `depth_error.png`
    (error along depth, and the collapse of L^p e_l), from the run directory."""
    import matplotlib.pyplot as plt

    from particles import plot

    config = P.io.read_json(directory / "config.json")["config"]
    m = P.io.read_json(directory / "metrics.json")
    title = _title(config)
    errors = {k: np.asarray(v) for k, v in m["errors"].items()}
    out = [directory / "convergence.png", directory / "depth_error.png"]
    try:
        fig = plot.depth_convergence_figure(
            m["depths"],
            errors,
            slopes={k: v for k, v in m["slopes"].items() if v is not None},
            floor=m["fit_floor"],
            title=f"residual attention networks against their flows\n{title}",
        )
        _replay.save_figure(fig, out[0], dpi or 120)
        collapse = m["collapse"]
        fig = plot.depth_error_figure(
            np.asarray(m["depth_profile"]["ts"]),
            {k: np.asarray(v) for k, v in m["depth_profile"]["errors"].items()},
            collapse={
                int(L): (np.asarray(collapse["ts"][L]), np.asarray(e))
                for L, e in collapse["errors"].items()
            },
            order=m["orders"][collapse["variant"]],
            collapse_label=collapse["variant"],
            title=title,
        )
        _replay.save_figure(fig, out[1], dpi or 120)
    finally:
        plt.close("all")
    return out


@animations("deep-limit")
def render(directory: Path, *, gif: bool = False, progress: bool = True, **options) -> list[Path]:
    """`animation.mp4` (or `.gif`): the shallow network's layers beside its flow."""
    from particles import plot

    config = P.io.read_json(directory / "config.json")["config"]
    m = P.io.read_json(directory / "metrics.json")
    layers = P.io.load_trajectory(directory / "network.npz")
    limit = P.io.load_trajectory(directory / P.io.TRAJECTORY_FILE)
    return _replay.write_animation(
        directory,
        plot.animate,
        np.asarray(m["ts"]),
        [np.asarray(layers.xs), np.asarray(limit.xs)],
        gif=gif,
        fps=config["fps"],
        options=options,
        labels=[f"{config['animated']} network, {config['shallow_depth']} layers", "its flow"],
        metrics={"max distance, network to flow": np.asarray(m["series"]["network_error"])},
        # one colour per token, the same in both panels: token i of the network is
        # token i of the flow
        colors=np.linspace(0.0, 1.0, config["n"]),
        cmap="viridis",
        title=_title(config),
        time_label="t = l h",
        progress=progress,
    )
