"""Frames per second of `particles.plot.animate` on the sphere S^2.

    python benchmarks/bench_render.py [--n 256 4096] [--frames 200] [--gif] [--trail 0]

The trajectory is synthetic (tokens drifting on S^2 towards a few cluster centres), since
the renderer's cost depends only on the number of tokens and frames, not on how they were
computed. Rendering is timed end to end: figure set-up, drawing and encoding.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--d", type=int, default=3)
    parser.add_argument("--trail", type=int, default=0)
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("--metrics", action="store_true", help="add a metric panel")
    parser.add_argument("--gif", action="store_true")
    args = parser.parse_args()

    from particles import plot

    for n in args.n:
        ts, xs, labels = clustering_trajectory(n, args.frames, args.d)
        metrics = {"mean cosine": np.linspace(0, 1, len(ts))} if args.metrics else None
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ("bench.gif" if args.gif else "bench.mp4")
            start = time.perf_counter()
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
            seconds = time.perf_counter() - start
            size = path.stat().st_size / 1024
        print(
            f"n = {n:5d}  frames = {args.frames}  d = {args.d}  trail = {args.trail}  "
            f"{path.suffix[1:]}: {seconds:6.1f} s  {args.frames / seconds:6.1f} frames/s  {size:8.0f} KiB"
        )


if __name__ == "__main__":
    main()
