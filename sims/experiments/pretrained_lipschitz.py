"""How smooth is a real attention layer? Local Lipschitz constants of all-MiniLM-L6-v2's
attention layers against the number of tokens (Castin, Ablin, Peyré 2024)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import numpy as np

import particles as P

from .. import _replay
from .._config import require_at_least, require_positive
from .._registry import animations, experiment, figures
from .pretrained_flow import require_extra

MODELS = ("pretrained", "random")
STYLE = {"text": "o-", "gaussian": "s--", "adversarial": "^-"}


@dataclasses.dataclass(frozen=True)
class Config:
    """Castin et al. on a real model: Lipschitz constants of real attention layers vs n.

    The local Lipschitz constant of each chosen layer's attention (all 12 heads, biases
    included; alone and inside its post-LN sub-block) on real text (the bundled
    public-domain text, particles.pretrained.TEXT), i.i.d. Gaussian tokens and the
    adversarial one-leader cloud, for n = 2^k tokens; the pretrained weights against BERT's
    random initialisation (std 0.02); power-law exponents over small n (the sqrt(n) regime)
    and large n (the mean-field plateau); the sqrt(n) bounds beside. Needs the extra
    `pretrained`."""

    n_min: int = 2
    """smallest token count (a power of 2)"""
    n_max: int = 128
    """largest token count (a power of 2, at most 512)"""
    layers: tuple[int, ...] = (0, 2, 5)
    """layers measured (0-5)"""
    radius: float = 0.0
    """radius of the adversarial cloud's ball (0: sqrt(d), the LayerNorm radius)"""
    fit_n_max: int = 16
    """exponents of the sqrt(n) regime are fitted over n <= this"""
    plateau_n_min: int = 32
    """exponents of the mean-field regime are fitted over n >= this"""
    init_std: float = 0.02
    """standard deviation of the random initialisation (BERT's initializer_range)"""
    tol: float = 1e-3
    """relative eigen-residual at which each Lipschitz estimate stops"""
    max_iters: int = 300
    """most iterations of each estimate"""
    seed: int = 0
    """seed of the random weights, the Gaussian clouds and the start vectors"""

    def __post_init__(self):
        require_positive(self, "n_min", "n_max", "init_std", "tol", "max_iters", "fit_n_max")
        require_at_least(self, "n_min", 2)
        require_at_least(self, "radius", 0.0)
        for name in ("n_min", "n_max"):
            value = getattr(self, name)
            if value & (value - 1):
                raise ValueError(f"{name} must be a power of 2; got {value}")
        if not self.n_min <= self.n_max <= 512:
            raise ValueError(f"need n_min <= n_max <= 512; got {self.n_min}, {self.n_max}")
        if not self.layers or any(not 0 <= l < 6 for l in self.layers):
            raise ValueError(
                f"layers must be a non-empty tuple of indices in 0..5; got {self.layers}"
            )


@experiment("pretrained-lipschitz", Config)
def run(config: Config, directory: Path, *, gif: bool = False, animation: bool = True) -> None:
    require_extra()
    import particles.pretrained as PP

    key = jax.random.key(config.seed)
    encoders = {
        "pretrained": PP.load_encoder(),
        "random": PP.Encoder.random(
            jax.random.fold_in(key, 1), PP.load_config(), std=config.init_std
        ),
    }
    ids = PP.tokenize(PP.TEXT).ids
    ns = [2**k for k in range(int(math.log2(config.n_min)), int(math.log2(config.n_max)) + 1)]
    radius = config.radius or math.sqrt(encoders["pretrained"].layer(0).dim)
    result = PP.lipschitz_sweep(
        encoders,
        ids,
        ns,
        list(config.layers),
        key=jax.random.fold_in(key, 2),
        radius=radius,
        tol=config.tol,
        max_iters=config.max_iters,
        fit_n_max=config.fit_n_max,
        plateau_n_min=config.plateau_n_min,
    )
    P.io.write_json(directory / "metrics.json", {"adversarial radius": radius, **result})
    _replay.draw_run(directory, draw, render, animation=animation, gif=gif)


def summary(metrics: dict) -> list[str]:
    """Headline numbers: per model and layer, the constant at the largest n for each input,
    and the fitted exponents."""
    lines = []
    ns = metrics["ns"]
    for model, layers in metrics["values"].items():
        for layer, inputs in layers.items():
            parts = []
            for kind, maps in inputs.items():
                fit = metrics["fits"][model][layer][kind]["attention"]
                small = fit["small_n"]["exponent"] if fit["small_n"] else float("nan")
                large = fit["large_n"]["exponent"] if fit["large_n"] else float("nan")
                parts.append(f"{kind} {maps['attention'][-1]:.3g} (n^{small:.2f} -> n^{large:.2f})")
            bound = metrics["bounds"][model][layer]["ours"][-1]
            lines.append(
                f"{model} {layer}, n = {ns[-1]}: " + ", ".join(parts) + f"; bound {bound:.3g}"
            )
    return lines


@figures("pretrained-lipschitz")
def draw(directory: Path, *, dpi: int | None = None) -> list[Path]:
    """`pretrained_lipschitz.png`: one panel per model and map, each layer and input a curve,
    the bound of the largest layer's constant dashed."""
    import matplotlib.pyplot as plt

    m = P.io.read_json(directory / "metrics.json")
    ns = np.asarray(m["ns"], float)
    maps = ("attention", "with LayerNorm")
    fig, axes = plt.subplots(
        2, 2, figsize=(12, 9), layout="constrained", sharex=True, squeeze=False
    )
    for i, model in enumerate(MODELS):
        layers = m["values"][model]
        colors = plt.cm.viridis(np.linspace(0, 0.85, len(layers)))
        for j, label in enumerate(maps):
            ax = axes[i, j]
            for color, (layer, inputs) in zip(colors, layers.items(), strict=True):
                for kind, values in inputs.items():
                    ax.loglog(
                        ns, values[label], STYLE[kind], color=color, ms=4, label=f"{layer}, {kind}"
                    )
                if label == "attention":
                    ax.loglog(ns, m["bounds"][model][layer]["ours"], ":", color=color, lw=1)
            ax.set_title(
                f"{model} weights, {label}"
                + (" (dotted: upper bounds)" if label == "attention" else ""),
                fontsize=10,
            )
            ax.set_xlabel("tokens n")
            ax.set_xticks(ns, [str(int(n)) for n in ns])
            ax.minorticks_off()
            ax.set_ylabel(r"local Lipschitz constant $\|DF(X)\|_2$")
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle("all-MiniLM-L6-v2 attention layers: Lipschitz constant vs n (Castin et al. 2024)")
    out = directory / "pretrained_lipschitz.png"
    _replay.save_figure(fig, out, dpi or 100)
    plt.close("all")
    return [out]


@animations("pretrained-lipschitz")
def render(directory: Path, *, gif: bool = False, progress: bool = True, **options) -> list[Path]:
    """`animation.mp4` (or `.gif`): the pretrained layers' constants (attention map, every
    input) drawn as n grows."""
    from particles.pretrained.plot import sweep_animation

    m = P.io.read_json(directory / "metrics.json")
    names, rows = [], []
    for layer, inputs in m["values"]["pretrained"].items():
        for kind, values in inputs.items():
            names.append(f"{layer}, {kind}")
            rows.append(values["attention"])

    def animate(ns, values, path, **kwargs):
        kwargs.pop("progress", None)
        return sweep_animation(ns, values, path, **kwargs)

    return _replay.write_animation(
        directory,
        animate,
        np.asarray(m["ns"], float),
        np.asarray(rows, float),
        gif=gif,
        fps=2,
        options={k: v for k, v in options.items() if k in ("fps", "dpi")},
        names=names,
        title="pretrained attention layers: local Lipschitz constant as n grows",
        ylabel=r"$\|DF(X)\|_2$",
    )
