"""Measure the fastest query tile of the attention reduction for each size and precision.

    PYTHONPATH=. python benchmarks/tune_tiles.py              # about 5 minutes idle
    PYTHONPATH=. python benchmarks/tune_tiles.py --sizes 4096 --dtypes float32 --repeats 3

For the sphere softmax field (Q = K = V = I, d = 3, beta = 4), at each number of tokens n
and each dtype, it times `Attention.identity(3, beta, block_size=T)` for every candidate tile
T (and T = n, the direct formula, where n <= 4096) in interleaved rounds, and picks the
tile with the smallest median CPU time (CPU time of all threads: it does not count time the
process waits for a core on a shared machine, and it charges a tile that uses two threads
for both). It prints the `TILES` table of `particles/attention/_tiled.py` to paste, with
the timings, and writes them to `benchmarks/results/tiles.json` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

import particles


def _timed_cpu(f, x):
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(f(x))
    return time.perf_counter() - wall, time.process_time() - cpu


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)


def tune(n, dtype, tiles, repeats, beta):
    x = particles.clouds.sphere_uniform(jax.random.key(0), n, 3).astype(dtype)
    fns = {}
    for t in tiles:
        if t > n:
            continue
        # the operator's arrays in the measured dtype: with float64 enabled, identity()
        # builds float64 matrices, and float32 tokens would then be computed in float64
        att = _cast(particles.Attention.identity(3, beta=beta, block_size=t), dtype)
        f = jax.jit(lambda x, att=att: att.unchecked(x))
        jax.block_until_ready(f(x))
        fns[t] = f
    rounds = {t: [] for t in fns}
    for _ in range(repeats):
        for t, f in fns.items():
            rounds[t].append(_timed_cpu(f, x))
    med = {t: np.median(np.array(r), axis=0) for t, r in rounds.items()}
    best = min(med, key=lambda t: med[t][1])
    # the dtype the field computed in, so a wrong table cannot come from a silent upcast
    assert fns[best](x).dtype == dtype, (fns[best](x).dtype, dtype)
    return best, {str(t): {"wall_s": m[0], "cpu_s": m[1]} for t, m in med.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    parser.add_argument("--sizes", type=ints, default=[1024, 4096, 16384, 65536])
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--tiles", type=ints, default=[16, 32, 64, 128, 256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--beta", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tiles.json"))
    args = parser.parse_args(argv)
    dtypes = args.dtypes.split(",")
    if "float64" in dtypes:
        jax.config.update("jax_enable_x64", True)
    res = {"loadavg_start": os.getloadavg(), "jax": jax.__version__, "sizes": {}}
    table = {}
    for dtype in dtypes:
        for i, n in enumerate(args.sizes):
            tiles = list(args.tiles) + ([n] if n <= 4096 else [])
            # big sizes: only tiles that fit in cache are worth the time
            if n > 16384:
                tiles = [t for t in tiles if t <= 256]
            print(f"{dtype} n = {n}", file=sys.stderr, flush=True)
            best, timings = tune(n, dtype, sorted(set(tiles)), args.repeats, args.beta)
            bound = n if i < len(args.sizes) - 1 else "1 << 62"
            table[(dtype, bound)] = best
            res["sizes"][f"{dtype}-{n}"] = {"best": best, "timings": timings}
            print(
                f"  best {best}: "
                + ", ".join(f"{t}: {1e3 * v['cpu_s']:.2f} ms" for t, v in timings.items()),
                file=sys.stderr,
                flush=True,
            )
    res["loadavg_end"] = os.getloadavg()
    print("TILES: dict[tuple[str, int], int] = {")
    for (dtype, bound), t in table.items():
        print(f'    ("{dtype}", {bound}): {t},')
    print("}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(res, indent=1, default=float))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
