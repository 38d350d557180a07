"""A real transformer (all-MiniLM-L6-v2) as a particle system: its 6 layers beside their
continuous flow, and each real layer iterated with its own weights to large depth."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

import particles as P

from .. import _replay
from .._config import require_at_least, require_positive
from .._registry import animations, experiment, figures
from .._run import RunError


def require_extra() -> None:
    """The `pretrained` extra, checked first in a run: a one-line error naming it (exit
    status 2 on the command line), nothing left behind."""
    from particles.pretrained import MissingExtraError, check_installed

    try:
        check_installed()
    except MissingExtraError as err:
        raise RunError(str(err)) from None


@dataclasses.dataclass(frozen=True)
class Config:
    """A real transformer (all-MiniLM-L6-v2) as a particle system: 6 layers beside their flow.

    Real sentences through the real 6-layer network and through its continuous flow (each
    layer's attention and feed-forward fields solved for unit time with `sub_steps` Euler
    steps instead of one, LayerNorm maps between); then each real layer iterated with its own
    weights to `depth` layers: cluster counts on the LayerNorm sphere, plateaus, and the
    leading eigenvalues of V and Q^T K. Needs the extra `pretrained`."""

    text: str = ""
    """text to run (empty: the bundled public-domain text, particles.pretrained.TEXT)"""
    max_tokens: int = 48
    """keep the first tokens of the text ([CLS] and [SEP] included)"""
    sub_steps: int = 64
    """Euler steps per unit-time flow of the continuous network (0: adaptive Tsit5)"""
    depth: int = 1000
    """layers of each real layer iterated with shared weights"""
    every: int = 5
    """save every this many layers of the iteration"""
    cluster_tol: float = 0.05
    """token directions closer than this are one cluster"""
    animated_layer: int = 3
    """the layer whose iteration is animated (0-5)"""
    labelled: int = 6
    """tokens labelled with their strings in the animation"""
    fps: int = 20
    """frames per second of the animation"""

    def __post_init__(self):
        require_positive(self, "max_tokens", "depth", "every", "cluster_tol", "fps")
        require_at_least(self, "max_tokens", 3)
        require_at_least(self, "sub_steps", 0)
        require_at_least(self, "labelled", 0)
        if self.depth % self.every:
            raise ValueError(f"depth ({self.depth}) must be a multiple of every ({self.every})")
        if not 0 <= self.animated_layer < 6:
            raise ValueError(f"animated_layer must be in 0..5; got {self.animated_layer}")


@experiment("pretrained-flow", Config)
def run(config: Config, directory: Path, *, gif: bool = False, animation: bool = True) -> None:
    require_extra()
    import particles.pretrained as PP

    encoder = PP.load_encoder()
    tokens = PP.tokenize(config.text or PP.TEXT, max_tokens=config.max_tokens)
    study = PP.flow_study(
        encoder,
        tokens.ids,
        sub_steps=config.sub_steps or None,
        depth=config.depth,
        every=config.every,
        tol=config.cluster_tol,
    )
    steps = study["steps"]
    layers = {}
    for l in range(encoder.num_layers):
        counts = study["clusters"][l]
        layers[f"layer {l}"] = {
            "final clusters": int(counts[-1]),
            "first single cluster at": int(steps[np.argmax(counts == 1)])
            if np.any(counts == 1)
            else None,
            "plateaus": PP.plateaus(counts, steps),
            "final effective rank": float(study["effective_rank"][l, -1]),
            "V leading eigenvalues": study["value_eigenvalues"][l],
            "sym(beta Q^T K) leading eigenvalues": study["qk_eigenvalues"][l],
            "sym(beta Q^T K) positive fraction": float(study["qk_positive"][l]),
            "alignment with V's leading eigenvector": float(study["alignment"][l]),
        }
    P.io.write_json(
        directory / "metrics.json",
        {
            "tokens": list(tokens.strings),
            "n": len(tokens.strings),
            "network vs flow": {
                "relative gap per layer": study["gap"],
                "final relative gap": float(study["gap"][-1]),
                "sentence embedding cosine": float(study["embedding_cosine"]),
            },
            "iterated layers": layers,
            "steps": steps,
            "series": {k: study[k] for k in ("clusters", "effective_rank", "mean_cosine")},
        },
    )
    P.io.save_run(
        directory,
        arrays={
            "states": study["states"],
            "iterates": study["iterates"],
            "labels": study["labels"],
            "steps": steps,
        },
    )
    _replay.draw_run(directory, draw, render, animation=animation, gif=gif)


def summary(metrics: dict) -> list[str]:
    """Headline numbers: the network/flow gap and each layer's final cluster count."""
    gap = metrics["network vs flow"]
    lines = [
        f"n = {metrics['n']} tokens",
        f"network vs continuous flow: relative gap at the output {gap['final relative gap']:.3g}, "
        f"sentence-embedding cosine {gap['sentence embedding cosine']:.4f}",
    ]
    for name, layer in metrics["iterated layers"].items():
        lam = layer["V leading eigenvalues"][0]
        lines.append(
            f"{name} iterated: {layer['final clusters']} cluster(s), effective rank "
            f"{layer['final effective rank']:.2f}; V's top eigenvalue {lam:.3g}, "
            f"alignment {layer['alignment with V' + chr(39) + 's leading eigenvector']:.2f}"
        )
    return lines


def _saved(directory: Path) -> dict:
    config = P.io.read_json(directory / "config.json")["config"]
    saved = P.io.read_json(directory / "metrics.json")
    arrays = P.io.load_arrays(directory / "arrays.npz")
    return dict(config=config, metrics=saved, **arrays)


@figures("pretrained-flow")
def draw(directory: Path, *, dpi: int | None = None) -> list[Path]:
    """`pretrained_flow.png`: the network against its flow (gap per layer, both clouds in
    one PCA), and the iterated layers' cluster counts and effective ranks."""
    import matplotlib.pyplot as plt

    r = _saved(directory)
    m = r["metrics"]
    steps = np.asarray(m["steps"], float)
    series = {k: np.asarray(v, float) for k, v in m["series"].items()}
    fig = plt.figure(figsize=(14, 8.4), layout="constrained")
    grid = fig.add_gridspec(2, 3)
    ax = fig.add_subplot(grid[0, 0])
    gap = np.asarray(m["network vs flow"]["relative gap per layer"], float)
    ax.plot(np.arange(len(gap)), gap, "o-")
    ax.set_xlabel("layer l")
    ax.set_ylabel(r"$|x^l_{flow} - x^l_{net}| / |x^l_{net}|$")
    ax.set_title("network (1 Euler step) vs continuous flow", fontsize=10)
    ax.grid(alpha=0.3)
    states = np.asarray(r["states"])
    for j, name in enumerate(("network", "continuous flow")):
        ax = fig.add_subplot(grid[0, 1 + j], projection="3d")
        for l in range(states.shape[1]):
            ax.scatter(*states[j, l].T, s=10, color=plt.cm.viridis(l / (states.shape[1] - 1)))
        ax.set_title(f"{name}: token directions by layer (fixed PCA)", fontsize=10)
    x = steps + 1
    for k, (key, label) in enumerate(
        [
            ("clusters", f"clusters (tol {r['config']['cluster_tol']:g})"),
            ("effective_rank", "effective rank"),
            ("mean_cosine", "mean pairwise cosine"),
        ]
    ):
        ax = fig.add_subplot(grid[1, k])
        for l in range(series[key].shape[0]):
            ax.plot(x, series[key][l], label=f"layer {l}")
        ax.set_xscale("log")
        ax.set_xlabel("iterations of the layer + 1")
        ax.set_title(f"each real layer iterated: {label}", fontsize=10)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8)
    fig.suptitle(f"all-MiniLM-L6-v2 as a particle system, n = {m['n']} tokens")
    out = directory / "pretrained_flow.png"
    _replay.save_figure(fig, out, dpi or 100)
    plt.close("all")
    return [out]


@animations("pretrained-flow")
def render(directory: Path, *, gif: bool = False, progress: bool = True, **options) -> list[Path]:
    """`animation.mp4` (or `.gif`): the animated layer iterated to large depth, its token
    directions in a fixed 3-D PCA, a few tokens labelled with their strings."""
    from particles.pretrained.plot import token_animation

    r = _saved(directory)
    config, tokens = r["config"], r["metrics"]["tokens"]
    l = config["animated_layer"]
    labelled = sorted(set(np.linspace(0, len(tokens) - 1, config["labelled"]).round().astype(int)))
    if config["labelled"] == 0:
        labelled = []

    def animate(ts, xs, path, **kwargs):
        kwargs.pop("progress", None)
        return token_animation(ts, xs, path, **kwargs)

    return _replay.write_animation(
        directory,
        animate,
        np.asarray(r["steps"], float),
        np.asarray(r["iterates"][l]),
        gif=gif,
        fps=config["fps"],
        options={k: v for k, v in options.items() if k in ("fps", "dpi")},
        strings=tokens,
        labelled=labelled,
        clusters=np.asarray(r["labels"][l]),
        title=f"layer {l} of all-MiniLM-L6-v2 iterated with shared weights",
        time_label="layer",
    )
