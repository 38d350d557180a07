"""Attention variants: the Performer estimate's error against the number of features, and
linear attention's O(n) evaluation against the blocked one.

    python benchmarks/bench_variants.py [--sizes 1024 4096 16384] [--draws 256]

Random features: RMS error, over `--draws` draws, of the estimated kernel matrix
$e^{\\beta\\langle x_i, x_j\\rangle}$ and of the softmax attention matrix built from it
(n = 8 on S^3, beta = 1/2, float64), i.i.d. and orthogonal frequencies, for m = 16 ... 4096,
with the fitted log-log slopes (theory: -1/2). Linear attention: best of 5 jitted
evaluations of the field (d = 3, beta = 4, float32), O(n) against blocked.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import particles as P
from particles import metrics


def feature_errors(draws: int, ms) -> None:
    d, beta = 4, 0.5
    kx, kk = jax.random.split(jax.random.key(0))
    x = P.clouds.sphere_uniform(kx, 8, d)
    u = jnp.sqrt(beta) * x
    exact = jnp.exp(u @ u.T)
    target = P.Attention.identity(d, beta).matrix(x)[0]
    for orthogonal in (False, True):
        kernel_rms, attention_rms = [], []
        for m in ms:

            @jax.vmap
            def errors(k, m=int(m), orthogonal=orthogonal):
                kernel = P.Performer.random(k, d, m, orthogonal=orthogonal)
                K = jnp.exp(kernel.logits(beta, x, x))
                A = K / jnp.sum(K, axis=1, keepdims=True)
                return jnp.sum((K - exact) ** 2), jnp.sum((A - target) ** 2)

            ek, ea = errors(jax.random.split(kk, draws))
            kernel_rms.append(float(jnp.sqrt(jnp.mean(ek))))
            attention_rms.append(float(jnp.sqrt(jnp.mean(ea))))
        name = "orthogonal" if orthogonal else "i.i.d."
        ks = metrics.fit_power_law(ms, np.array(kernel_rms))[0]
        As = metrics.fit_power_law(ms, np.array(attention_rms))[0]
        print(f"{name:10s} kernel slope {ks:+.3f}, attention slope {As:+.3f}")
        for m, a, b in zip(ms, kernel_rms, attention_rms, strict=True):
            print(f"    m = {m:5d}: kernel RMS {a:.4f}, attention RMS {b:.4f}")


def linear_timings(sizes) -> None:
    with jax.enable_x64(False):
        attention = P.Attention.identity(3, 4.0, kernel=P.Linear())
        fast = jax.jit(lambda y: P.attention.linear_attention(attention, y))
        blocked = jax.jit(lambda y: attention(y))
        print("|      n | O(n) | blocked | ratio | max difference |")
        print("|---:|---:|---:|---:|---:|")
        for n in sizes:
            y = P.clouds.sphere_uniform(jax.random.key(1), n, 3)
            best = []
            for f in (fast, blocked):
                f(y).block_until_ready()
                times = []
                for _ in range(5):
                    start = time.perf_counter()
                    f(y).block_until_ready()
                    times.append(time.perf_counter() - start)
                best.append(min(times))
            gap = float(jnp.max(jnp.abs(fast(y) - blocked(y))))
            print(
                f"| {n} | {best[0] * 1e3:.3f} ms | {best[1] * 1e3:.2f} ms | "
                f"{best[1] / best[0]:.0f} | {gap:.1e} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--draws", type=int, default=256)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    feature_errors(args.draws, np.array([16, 64, 256, 1024, 4096]))
    linear_timings(args.sizes)


if __name__ == "__main__":
    main()
