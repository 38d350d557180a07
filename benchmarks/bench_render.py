"""Frames per second of the animation pipeline of `particles.plot`.

    python benchmarks/bench_render.py [--n 256 4096] [--frames 200] [--gif] [--trail 0]
    python benchmarks/bench_render.py --scene gaussian --n 1024 --frames 61
    python benchmarks/bench_render.py --scene circle --n 2048 --frames 61

The data are synthetic, since the renderer's cost depends only on the number of tokens and
frames, not on how they were computed: `clouds` (`animate`), tokens drifting on S^2
towards a few cluster centres; `gaussian` (`gaussian_animation`), a planar cloud over the
level ellipses of a spreading Gaussian; `circle` (`circle_animation`), angles over a
density on 256 cells. Rendering is timed end to end: figure set-up, drawing and encoding.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def clustering_trajectory(n: int, frames: int, d: int = 3, centres: int = 5, seed: int = 0):
    """Tokens uniform on S^{d-1} moving along great circles to the nearest of a few centres."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(n, d))
    x0 /= np.linalg.norm(x0, axis=1, keepdims=True)
    c = rng.normal(size=(centres, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    target = c[np.argmax(x0 @ c.T, axis=1)]
    s = np.linspace(0, 1, frames)[:, None, None] ** 0.5
    xs = (1 - s) * x0 + s * target
    xs /= np.linalg.norm(xs, axis=-1, keepdims=True)
    labels = np.where(s[..., 0] > 0.999, np.argmax(x0 @ c.T, axis=1)[None], np.arange(n)[None])
    return np.linspace(0, 10, frames), xs, labels.astype(np.int32)


def gaussian_trajectory(n: int, frames: int, seed: int = 0):
    """A planar cloud `(T, n, 2)` spreading like its Gaussian `N(0, g(t)^2 I)`."""
    rng = np.random.default_rng(seed)
    growth = np.linspace(1.0, 2.0, frames)[:, None, None]
    xs = rng.normal(size=(frames, n, 2)) * growth
    return np.linspace(0, 3, frames), xs, np.zeros((frames, 2)), np.eye(2)[None] * growth**2


def circle_trajectory(n: int, frames: int, cells: int = 256, seed: int = 0):
    """Angles `(T, n)` sharpening around 0, and von Mises densities on `cells` cells."""
    rng = np.random.default_rng(seed)
    kappa = np.linspace(0.5, 4.0, frames)
    angles = rng.vonmises(0.0, kappa[:, None], size=(frames, n))
    theta = (np.arange(cells) + 0.5) * 2 * np.pi / cells
    densities = np.exp(kappa[:, None] * np.cos(theta)) / (2 * np.pi * np.i0(kappa)[:, None])
    return np.linspace(0, 3, frames), angles, theta, densities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--d", type=int, default=3)
    parser.add_argument("--trail", type=int, default=0)
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("--metrics", action="store_true", help="add a metric panel")
    parser.add_argument("--gif", action="store_true")
    parser.add_argument("--scene", choices=["clouds", "gaussian", "circle"], default="clouds")
    args = parser.parse_args()

    from particles import plot

    def render(n: int, path: Path) -> None:
        if args.scene == "gaussian":
            ts, xs, means, covs = gaussian_trajectory(n, args.frames)
            plot.gaussian_animation(ts, xs, means, covs, path, dpi=args.dpi, progress=False)
        elif args.scene == "circle":
            ts, angles, theta, densities = circle_trajectory(n, args.frames)
            plot.circle_animation(ts, angles, theta, densities, path, dpi=args.dpi, progress=False)
        else:
            ts, xs, labels = clustering_trajectory(n, args.frames, args.d)
            metrics = {"mean cosine": np.linspace(0, 1, len(ts))} if args.metrics else None
            plot.animate(
                ts,
                xs,
                path,
                clusters=labels,
                trail=args.trail,
                metrics=metrics,
                dpi=args.dpi,
                progress=False,
            )

    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ("bench.gif" if args.gif else "bench.mp4")
            start = time.perf_counter()
            render(n, path)
            seconds = time.perf_counter() - start
            size = path.stat().st_size / 1024
        shape = f"d = {args.d}  trail = {args.trail}" if args.scene == "clouds" else args.scene
        print(
            f"n = {n:5d}  frames = {args.frames}  {shape}  "
            f"{path.suffix[1:]}: {seconds:6.1f} s  {args.frames / seconds:6.1f} frames/s  {size:8.0f} KiB"
        )


if __name__ == "__main__":
    main()
