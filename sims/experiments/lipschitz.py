"""How smooth is attention: local Lipschitz constants against the number of tokens and the
radius, next to the upper bounds (Castin, Ablin, Peyré 2024; Kim, Papamakarios, Mnih 2021)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import particles as P
from particles import metrics as M
from particles import regularity as R

from .. import _replay
from .._config import require_at_least, require_positive
from .._registry import animations, experiment, figures


@dataclasses.dataclass(frozen=True)
class Config:
    """Local Lipschitz constant of self-attention against n and R, next to the upper bounds.

    The sqrt(n) law of the adversarial cloud (one token attended by all the others) and
    where it stops, bounded i.i.d. clouds, causal and spherical attention, L2 attention;
    Q = K = V = I (Castin, Ablin, Peyre 2024; Kim, Papamakarios, Mnih 2021)."""

    d: int = 3
    """dimension of the tokens"""
    beta: float = 1.0
    """inverse temperature of the kernels exp(beta <x, y>) and exp(-beta |x - y|^2 / 2)"""
    radius: float = 5.0
    """radius R of the ball holding the clouds"""
    sphere_beta: float = 25.0
    """inverse temperature on the unit sphere (beta * radius**2 puts the logits on the scale of the ball)"""
    n_min: int = 2
    """smallest number of tokens"""
    n_max: int = 2048
    """largest number of tokens"""
    n_points: int = 11
    """token counts, geometrically spaced from n_min to n_max"""
    trials: int = 2
    """i.i.d. clouds per token count (the mean is reported)"""
    fit_n_max: int = 32
    """largest n of the sqrt(n) fit of the adversarial clouds"""
    mean_field_n_min: int = 64
    """smallest n of the fits of the i.i.d. clouds (the mean-field regime)"""
    search_n_max: int = 8
    """gradient-ascent search for worse clouds at the token counts up to this one (0: none)"""
    search_steps: int = 100
    """steps of each gradient-ascent search"""
    radius_n: int = 8
    """number of tokens of the radius sweep"""
    radius_min: float = 0.5
    """smallest radius of the radius sweep"""
    radius_max: float = 32.0
    """largest radius of the radius sweep"""
    radius_points: int = 7
    """radii of the sweep, geometrically spaced (0: no radius sweep)"""
    tol: float = 1e-5
    """relative eigen-residual at which the matrix-free iteration stops"""
    fps: int = 10
    """frames per second of the animation of the search"""
    seed: int = 0
    """random seed of the i.i.d. clouds and the searches"""

    def __post_init__(self):
        require_positive(self, "beta", "radius", "sphere_beta", "tol", "fps", "search_steps")
        require_positive(self, "radius_min", "trials")
        require_at_least(self, "radius_points", 0)
        require_at_least(self, "search_n_max", 0)
        require_at_least(self, "d", 2)
        require_at_least(self, "n_min", 2)
        require_at_least(self, "n_max", self.n_min)
        require_at_least(self, "n_points", 2)
        require_at_least(self, "fit_n_max", self.n_min)
        require_at_least(self, "mean_field_n_min", self.n_min)
        require_at_least(self, "radius_n", 3)
        require_at_least(self, "radius_max", self.radius_min)


def token_counts(config: Config) -> np.ndarray:
    ns = np.geomspace(config.n_min, config.n_max, config.n_points).round().astype(int)
    return np.unique(ns)


def _fit(ns, values, lo, hi):
    keep = (ns >= lo) & (ns <= hi)
    if keep.sum() < 2:
        return None
    exponent, prefactor = M.fit_power_law(ns[keep], values[keep])
    return {"exponent": exponent, "prefactor": prefactor, "n_range": [int(lo), int(hi)]}


@experiment("lipschitz", Config)
def run(config: Config, directory: Path, *, gif: bool = False, animation: bool = True) -> None:
    d, beta, radius = config.d, config.beta, config.radius
    dot = P.Attention.identity(d, beta)
    causal = P.Attention.identity(d, beta, causal=True)
    l2 = P.Attention.identity(d, beta, kernel=P.L2())
    sphere = P.AttentionFlow(P.Attention.identity(d, config.sphere_beta), P.Sphere())
    key = jax.random.key(config.seed)
    ns = token_counts(config)

    names = [
        "adversarial",
        "leader, max gap",
        "iid ball",
        "causal adversarial",
        "causal iid",
        "sphere iid",
        "L2 iid",
    ]

    # One compiled program per token count: clouds, constants of every variant.
    @eqx.filter_jit
    def measure(kn, n):
        def constants(model, clouds):
            est = jax.vmap(lambda x: R.lipschitz(model, x, tol=config.tol))(clouds)
            return est.value, est.iterations, est.converged

        iid = jax.vmap(lambda k: P.clouds.ball_uniform(k, n, d, radius))(
            jax.random.split(kn, config.trials)
        )
        on_sphere = jax.vmap(lambda k: P.clouds.sphere_uniform(k, n, d))(
            jax.random.split(jax.random.fold_in(kn, 1), config.trials)
        )
        leader = jnp.stack(
            [R.adversarial_cloud(dot, n, radius), R.adversarial_cloud(dot, n, radius, offset=0.5)]
        )
        v, it, ok = constants(dot, jnp.concatenate([leader, iid]))
        vc, itc, okc = constants(causal, jnp.concatenate([leader[:1], iid]))
        vs, its, oks = constants(sphere, on_sphere)
        vl, itl, okl = constants(l2, iid)
        values = [v[0], v[1], v[2:].mean(), vc[0], vc[1:].mean(), vs.mean(), vl.mean()]
        most = jnp.max(jnp.stack([it.max(), itc.max(), its.max(), itl.max()]))
        return jnp.stack(values), most, ok.all() & okc.all() & oks.all() & okl.all()

    series = {name: [] for name in names}
    iterations, converged = [], []
    for n in ns:
        values, most, ok = measure(jax.random.fold_in(key, int(n)), int(n))
        for name, value in zip(names, np.asarray(values), strict=True):
            series[name].append(float(value))
        iterations.append(int(most))
        converged.append(bool(ok))
        print(f"n = {n:5d}: adversarial {values[0]:8.3f}, iid {values[2]:7.3f}", flush=True)
    series = {k: np.asarray(v) for k, v in series.items()}
    bounds = {
        "dot: Castin et al. Thm 3.3": np.asarray(R.castin_bound(dot, ns, radius)),
        "dot: ours": np.asarray(R.softmax_bound(dot, ns, radius)),
        "sphere: ours": np.asarray(R.lipschitz_bound(sphere, ns)),
        "L2: Kim et al. Thm 3.2": np.asarray(R.kim_bound(l2, ns)),
        "L2: ours": np.asarray(R.l2_bound(l2, ns)),
    }

    # Gradient-ascent search for worse clouds at small n, started from i.i.d. clouds.
    search_ns = ns[ns <= config.search_n_max]

    @eqx.filter_jit
    def search(model, start, r, kn):
        found = R.worst_cloud(model, start, r, steps=config.search_steps, key=kn)
        return found, R.lipschitz(model, found.cloud, tol=config.tol).value

    searched = {"dot": [], "sphere": [], "L2": []}
    last = None
    for n in search_ns:
        kn = jax.random.fold_in(key, 10_000 + int(n))
        x0 = P.clouds.ball_uniform(kn, int(n), d, radius)
        s0 = P.clouds.sphere_uniform(kn, int(n), d)
        for name, model, start, r in (
            ("dot", dot, x0, radius),
            ("sphere", sphere, s0, None),
            ("L2", l2, x0, radius),
        ):
            found, value = search(model, start, r, kn)
            searched[name].append(float(value))
            if name == "dot":
                last = found

    # Radius sweep at fixed n: dot-product attention grows without bound, L2 does not.
    radii = np.geomspace(config.radius_min, config.radius_max, config.radius_points)
    m = config.radius_n
    radius_series, radius_bounds = {}, {}
    if config.radius_points:
        radius_series, radius_bounds = _radius_sweep(config, dot, l2, radii, key)

    fits = {
        "leader, max gap": _fit(ns, series["leader, max gap"], config.n_min, config.fit_n_max),
        "adversarial": _fit(ns, series["adversarial"], config.n_min, config.fit_n_max),
        "causal adversarial": _fit(
            ns, series["causal adversarial"], config.n_min, config.fit_n_max
        ),
        # i.i.d. clouds: the slope over the largest token counts (the mean-field regime)
        "iid ball": _fit(ns, series["iid ball"], config.mean_field_n_min, config.n_max),
        "sphere iid": _fit(ns, series["sphere iid"], config.mean_field_n_min, config.n_max),
        "L2 iid": _fit(ns, series["L2 iid"], config.mean_field_n_min, config.n_max),
    }
    fits = {k: v for k, v in fits.items() if v is not None}
    # The leader holds the others while (n - 1) exp(-beta lambda R^2 / 4) is small.
    threshold = float(np.exp(beta * radius**2 / 4))
    peak = int(np.argmax(series["adversarial"]))
    P.io.write_json(
        directory / "metrics.json",
        {
            "ns": ns,
            "series": series,
            "bounds": bounds,
            "fits": fits,
            "saturation": {
                "n_peak": int(ns[peak]),
                "value_peak": series["adversarial"][peak],
                "predicted_n": threshold,
            },
            "search": {"ns": search_ns, **{k: np.asarray(v) for k, v in searched.items()}},
            "radius": {
                "n": m,
                "radii": radii,
                "series": radius_series,
                "bounds": radius_bounds,
            },
            "solver": {
                "max_iterations": max(iterations),
                "all_converged": all(converged),
                "tol": config.tol,
            },
        },
    )

    if last is not None:  # the last gradient ascent, animated
        P.io.save_run(
            directory,
            arrays={"clouds": np.asarray(last.clouds), "history": np.asarray(last.history)},
        )
    _replay.draw_run(directory, draw, render, animation=animation and last is not None, gif=gif)


@figures("lipschitz")
def draw(directory: Path, *, dpi: int | None = None) -> list[Path]:
    """`lipschitz_vs_n.png` and, with a radius sweep, `lipschitz_vs_radius.png`."""
    import matplotlib.pyplot as plt

    from particles import plot

    config = P.io.read_json(directory / "config.json")["config"]
    m = P.io.read_json(directory / "metrics.json")
    d, beta, radius = config["d"], config["beta"], config["radius"]
    ns = np.asarray(m["ns"])
    series = {k: np.asarray(v) for k, v in m["series"].items()}
    names = list(series)
    bounds = {k: np.asarray(v) for k, v in m["bounds"].items()}
    fits = m["fits"]
    threshold = m["saturation"]["predicted_n"]
    search_ns = np.asarray(m["search"]["ns"])
    out = [directory / "lipschitz_vs_n.png"]
    try:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.8), layout="constrained")
        ball = {k: series[k] for k in names[:5]}
        other = {k: series[k] for k in names[5:]}
        if len(search_ns):
            ball["dot, searched"] = (search_ns, np.asarray(m["search"]["dot"]))
            other["sphere, searched"] = (search_ns, np.asarray(m["search"]["sphere"]))
            other["L2, searched"] = (search_ns, np.asarray(m["search"]["L2"]))
        plot.lipschitz_vs_n(
            ns,
            ball,
            bounds={k: v for k, v in bounds.items() if k.startswith("dot")},
            fits={
                k: fits[k]
                for k in ("leader, max gap", "causal adversarial", "iid ball")
                if k in fits
            },
            threshold=threshold if threshold <= ns[-1] else None,
            ax=left,
            title=f"dot-product attention in the ball R = {radius:g}, $\\beta$ = {beta:g}",
        )
        plot.lipschitz_vs_n(
            ns,
            other,
            bounds={k: v for k, v in bounds.items() if not k.startswith("dot")},
            fits={k: fits[k] for k in ("sphere iid", "L2 iid") if k in fits},
            ax=right,
            title=f"sphere ($\\beta$ = {config['sphere_beta']:g}) and L2 attention "
            f"(tied, R = {radius:g})",
        )
        fig.suptitle(f"local Lipschitz constant of self-attention, Q = K = V = I, d = {d}")
        _replay.save_figure(fig, out[0], dpi or 120)
        if config["radius_points"]:
            r = m["radius"]
            fig = plot.lipschitz_vs_radius(
                np.asarray(r["radii"]),
                {k: np.asarray(v) for k, v in r["series"].items()},
                bounds={k: np.asarray(v) for k, v in r["bounds"].items()},
                title=f"n = {r['n']}: dot-product attention is not globally Lipschitz",
            )
            out.append(directory / "lipschitz_vs_radius.png")
            _replay.save_figure(fig, out[-1], dpi or 120)
    finally:
        plt.close("all")
    return out


@animations("lipschitz")
def render(directory: Path, *, gif: bool = False, progress: bool = True, **options) -> list[Path]:
    """`animation.mp4` (or `.gif`): the last gradient ascent on the Lipschitz constant."""
    from particles import plot

    config = P.io.read_json(directory / "config.json")["config"]
    search_ns = P.io.read_json(directory / "metrics.json")["search"]["ns"]
    arrays = P.io.load_arrays(directory / "arrays.npz")
    steps = np.arange(config["search_steps"])
    options.setdefault("frames", steps[:: max(1, config["search_steps"] // 50)])
    return _replay.write_animation(
        directory,
        plot.animate,
        steps,
        arrays["clouds"],
        gif=gif,
        fps=config["fps"],
        options=options,
        metrics={"Lipschitz constant": arrays["history"]},
        title="gradient ascent on the Lipschitz constant, "
        f"n = {int(search_ns[-1])}, R = {config['radius']:g}",
        time_label="step",
        progress=progress,
    )


def _radius_sweep(config: Config, dot, l2, radii, key):
    m = config.radius_n
    x0 = P.clouds.ball_uniform(jax.random.fold_in(key, 20_000), m, config.d, 1.0)

    @eqx.filter_jit
    def sweep(model, radii):
        def one(r):
            found = R.worst_cloud(model, x0 * r, r, steps=config.search_steps, key=key)
            return R.lipschitz(model, found.cloud, tol=config.tol).value

        return jax.vmap(one)(radii)

    @eqx.filter_jit
    def adversarial(radii):
        return jax.vmap(
            lambda r: R.lipschitz(dot, R.adversarial_cloud(dot, m, r), tol=config.tol).value
        )(radii)

    series = {
        "dot, searched": np.asarray(sweep(dot, jnp.asarray(radii))),
        "dot, adversarial": np.asarray(adversarial(jnp.asarray(radii))),
        "L2, searched": np.asarray(sweep(l2, jnp.asarray(radii))),
    }
    bounds = {
        "dot: Castin et al. Thm 3.3": np.asarray(R.castin_bound(dot, m, jnp.asarray(radii))),
        "dot: ours": np.asarray(R.softmax_bound(dot, m, jnp.asarray(radii))),
        "L2: Kim et al. Thm 3.2": np.asarray(R.kim_bound(l2, m)),
        "L2: ours": np.asarray(R.l2_bound(l2, m)),
    }
    return series, bounds
