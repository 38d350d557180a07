"""Benchmark: one evaluation of the attention field against the machine's honest limit.

    PYTHONPATH=. python benchmarks/bench_attention.py                 # ~4 minutes idle
    PYTHONPATH=. python benchmarks/bench_attention.py --sizes 4096 --repeats 3

The limit is the strongest this script can find on the machine it runs on, measured in the
same run, in interleaved rounds with the kernels it judges:

- **exp rate**: the fastest rate of float32 (float64) exponentials among several
  formulations, every one reported: a serial `fori_loop` (`x <- exp(-x)` on a cache-resident
  array: each iteration waits for the last), one elementwise `exp` of an `(N, N)` outer
  product written to memory, one fused row sum `sum_j exp(a_i b_j)` over all of it, the
  same row sum under `lax.map` over tiles of 64, 256 and 1024 rows, and the row sum written
  as `exp(a_i b_j) @ ones` (the shape of the attention kernel itself) over tiles of 64 and
  256 rows; N = 4096 (16.8 M exponentials per call). The exponents lie in [-1, 1].
- **matmul rate**: the fastest of a 2048^2 and a 4096^2 matmul in the same precision.
- **limit** of an evaluation: `E / exp rate + F / matmul rate`, with E the exponentials and
  F the flops of the two products that any formulation must do: for one head of n tokens
  with d_k key features and values of width d, E = n^2 and F = 2 n^2 (d_k + d) (logits and
  product with the values); H heads multiply both; a causal mask halves both.

Kernels judged (float32 unless marked; the field of `AttentionFlow(..., Sphere())` with
`Attention.identity(3, beta=4)` on `clouds.sphere_uniform`, jit-compiled, checks excluded):
softmax, unnormalized (beta = 1: the sum of e^{beta <x, y>}/n stays finite), softmax with
random weights, causal softmax, softmax in float64, and multi-head attention in R^64
(`Attention.random(key, 64, heads=4, d_k=16, beta=1)`, Euclidean, n = 4096). Each ratio is
the median over rounds of the kernel's time over the limit of the same round, in wall time
and in CPU time (all threads of the process).

Writes `benchmarks/results/attention.json` and `attention.md` (git-ignored) and prints the
table; `--memory-n` also measures the peak memory of one evaluation in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _results import header, save

import particles

EXP_N = 4096  # exponentials per call: EXP_N ** 2
TILED_ROWS = (64, 256, 1024)
MATMUL_SIZES = (2048, 4096)


def exp_formulations(dtype):
    """name -> (jitted function, argument, exponentials per call)."""
    a = jnp.linspace(-1.0, 1.0, EXP_N, dtype=dtype)
    b = jnp.linspace(0.0, 1.0, EXP_N, dtype=dtype)[::-1]
    out = {}
    small = jnp.linspace(0.0, 1.0, 1 << 16, dtype=dtype)
    iters = EXP_N**2 >> 16
    # x <- exp(-x) converges to 0.567: no overflow, no hoisting, no dropped iteration
    out["serial fori_loop, 64K array"] = (
        jax.jit(lambda x: jax.lax.fori_loop(0, iters, lambda i, x: jnp.exp(-x), x)),
        small,
        (1 << 16) * iters,
    )
    out["elementwise, N x N to memory"] = (
        jax.jit(lambda a: jnp.exp(a[:, None] * b[None, :])),
        a,
        EXP_N**2,
    )
    out["fused row sum, whole"] = (
        jax.jit(lambda a: jnp.sum(jnp.exp(a[:, None] * b[None, :]), axis=1)),
        a,
        EXP_N**2,
    )
    for rows in TILED_ROWS:
        out[f"fused row sum, lax.map tiles of {rows}"] = (
            jax.jit(
                lambda a, rows=rows: jax.lax.map(
                    lambda t: jnp.sum(jnp.exp(t[:, None] * b[None, :]), axis=1),
                    a.reshape(-1, rows),
                )
            ),
            a,
            EXP_N**2,
        )
    ones = jnp.ones((EXP_N, 1), dtype)
    for rows in TILED_ROWS[:2]:
        out[f"exp(tile) @ ones, lax.map tiles of {rows}"] = (
            jax.jit(
                lambda a, rows=rows: jax.lax.map(
                    lambda t: jnp.exp(t[:, None] * b[None, :]) @ ones, a.reshape(-1, rows)
                )
            ),
            a,
            EXP_N**2,
        )
    return out


def matmuls(dtype):
    return {
        f"matmul {m}^2": (jax.jit(lambda x: x @ x), jnp.full((m, m), 0.5, dtype), 2 * m**3)
        for m in MATMUL_SIZES
    }


def _cast(tree, dtype):
    """Every float array of `tree` in `dtype`: with float64 enabled (for the float64 cases)
    `identity` builds float64 matrices, which would silently make a float32 case float64."""
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)


def cases(sizes, multihead_n):
    """name -> (dtype, n, builder of (field, x), exponentials, flops)."""
    out = {}

    def sphere(n, dtype, beta=4.0, **options):
        def build():
            att = _cast(particles.Attention.identity(3, beta=beta, **options), dtype)
            flow = particles.AttentionFlow(att, particles.Sphere())
            x = particles.clouds.sphere_uniform(jax.random.key(0), n, 3).astype(dtype)
            return (lambda x: flow(0.0, x, None)), x

        return build

    def weighted(n):
        def build():
            att = _cast(particles.Attention.identity(3, beta=4.0), "float32")
            flow = particles.AttentionFlow(att, particles.Sphere())
            x = particles.clouds.sphere_uniform(jax.random.key(0), n, 3).astype("float32")
            w = jax.random.uniform(jax.random.key(1), (n,), "float32", minval=0.5)
            w = w / jnp.sum(w)
            return (lambda x: flow(0.0, x, w)), x

        return build

    d = 3
    for n in sizes:
        full = (n * n, 2 * n * n * (d + d))
        half = (full[0] / 2, full[1] / 2)
        out[f"softmax n={n}"] = ("float32", n, sphere(n, "float32"), *full)
        out[f"unnormalized n={n}"] = (
            "float32",
            n,
            sphere(n, "float32", beta=1.0, normalization=particles.Unnormalized()),
            *full,
        )
        out[f"softmax, weights n={n}"] = ("float32", n, weighted(n), *full)
        out[f"softmax, causal n={n}"] = ("float32", n, sphere(n, "float32", causal=True), *half)
        out[f"softmax float64 n={n}"] = ("float64", n, sphere(n, "float64"), *full)
    if multihead_n:
        n, h, dk, dm = multihead_n, 4, 16, 64

        def build():
            att = particles.Attention.random(jax.random.key(2), dm, heads=h, d_k=dk, beta=1.0)
            att = _cast(att, "float32")
            x = jax.random.normal(jax.random.key(0), (n, dm), "float32")
            return (lambda x: att.unchecked(x)), x

        out[f"multi-head d=64, H=4, d_k=16, n={n}"] = (
            "float32",
            n,
            build,
            h * n * n,
            h * 2 * n * n * (dk + dm),
        )
    return out


def _timed_cpu(f, x):
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(f(x))
    return np.array([time.perf_counter() - wall, time.process_time() - cpu])


def run(sizes, multihead_n, repeats):
    jax.config.update("jax_enable_x64", True)
    limits = {dt: (exp_formulations(dt), matmuls(dt)) for dt in ("float32", "float64")}
    compiled = {}
    for name, (dtype, n, build, exps, flops) in cases(sizes, multihead_n).items():
        field, x = build()
        f = jax.jit(field)
        # the case computes in its own precision (no silent float64)
        assert jax.block_until_ready(f(x)).dtype == dtype, (name, f(x).dtype)
        compiled[name] = (dtype, n, f, x, exps, flops)
    for exps, mms in limits.values():
        for f, a, _ in list(exps.values()) + list(mms.values()):
            jax.block_until_ready(f(a))
    rounds = []
    for r in range(repeats):
        print(f"round {r + 1}/{repeats}", file=sys.stderr, flush=True)
        kernel_t = {name: _timed_cpu(c[2], c[3]) for name, c in compiled.items()}
        rates = {}
        for dt, (exps, mms) in limits.items():
            rates[dt] = {
                "exp": {k: work / _timed_cpu(f, a) for k, (f, a, work) in exps.items()},
                "matmul": {k: work / _timed_cpu(f, a) for k, (f, a, work) in mms.items()},
            }
        rounds.append((kernel_t, rates))
    return compiled, rounds


def summarize(compiled, rounds):
    out = {"cases": [], "rates": {}}
    for dt in ("float32", "float64"):
        out["rates"][dt] = {}
        for kind in ("exp", "matmul"):
            names = rounds[0][1][dt][kind]
            out["rates"][dt][kind] = {
                k: {
                    "wall_per_s": float(np.median([r[1][dt][kind][k][0] for r in rounds])),
                    "cpu_per_s": float(np.median([r[1][dt][kind][k][1] for r in rounds])),
                }
                for k in names
            }
    for name, (dtype, n, _, _, exps, flops) in compiled.items():
        rows = []
        for kernel_t, rates in rounds:
            best_exp = {
                i: max(v[i] for v in rates[dtype]["exp"].values()) for i in (0, 1)
            }  # wall, cpu
            best_mm = {i: max(v[i] for v in rates[dtype]["matmul"].values()) for i in (0, 1)}
            limit = [exps / best_exp[i] + flops / best_mm[i] for i in (0, 1)]
            rows.append([*kernel_t[name], *limit])
        rows = np.array(rows)
        out["cases"].append(
            {
                "case": name,
                "dtype": dtype,
                "n": n,
                "exponentials": exps,
                "flops": flops,
                "eval_s": float(np.median(rows[:, 0])),
                "eval_cpu_s": float(np.median(rows[:, 1])),
                "limit_s": float(np.median(rows[:, 2])),
                "limit_cpu_s": float(np.median(rows[:, 3])),
                "ratio": float(np.median(rows[:, 0] / rows[:, 2])),
                "ratio_cpu": float(np.median(rows[:, 1] / rows[:, 3])),
                "rounds": rows.tolist(),
            }
        )
    return out


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys, jax, particles
    n = int(sys.argv[1])

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    flow = particles.AttentionFlow(particles.Attention.identity(3, beta=4.0), particles.Sphere())
    x = particles.clouds.sphere_uniform(jax.random.key(0), n, 3)
    compiled = jax.jit(lambda x: flow(0.0, x, None)).lower(x).compile()
    mem = compiled.memory_analysis()
    jax.block_until_ready(x)
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # 5: reset the peak (VmHWM)
        f.write("5")
    jax.block_until_ready(compiled(x))
    print(json.dumps({"n": n, "xla_temp_bytes": mem.temp_size_in_bytes,
                      "rss_peak_rise_bytes": status("VmHWM") - before}))
    """
)


def measure_memory(n):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(particles.__file__).parent.parent), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(n)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ms(s):
    return f"{1e3 * s:.3g}" if s < 1 else f"{1e3 * s:,.0f}"


def markdown(res):
    lines = [
        f"{res['machine']}, {res['date']}, commit {res['commit']}, JAX {res['jax']}; load "
        f"average {res['loadavg_start'][0]:.1f} at the start, {res['loadavg_end'][0]:.1f} at "
        f"the end; {res['repeats']} interleaved rounds.",
        "",
        "| case | eval (ms) | limit (ms) | eval / limit | eval / limit (CPU time) |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in res["cases"]:
        lines.append(
            f"| {c['case']} | {_ms(c['eval_s'])} | {_ms(c['limit_s'])} | {c['ratio']:.2f} | "
            f"{c['ratio_cpu']:.2f} |"
        )
    lines += ["", "Rates of every formulation tried (median over rounds; wall / CPU time):", ""]
    lines += ["| precision | formulation | rate (wall) | rate (CPU time) |", "|---|---|---:|---:|"]
    for dt, kinds in res["rates"].items():
        for kind, forms in kinds.items():
            unit, scale = ("exp/s", 1.0) if kind == "exp" else ("GFLOP/s", 1e-9)
            best = max(forms, key=lambda k: forms[k]["wall_per_s"])
            for k, v in forms.items():
                mark = " (fastest)" if k == best else ""
                lines.append(
                    f"| {dt} | {k}{mark} | {v['wall_per_s'] * scale:.3g} {unit} | "
                    f"{v['cpu_per_s'] * scale:.3g} {unit} |"
                )
    if res.get("memory"):
        m = res["memory"]
        lines += [
            "",
            f"One evaluation at n = {m['n']}: XLA temporaries {m['xla_temp_bytes'] / 2**20:.1f} "
            f"MiB, peak resident set rise {m['rss_peak_rise_bytes'] / 2**20:.1f} MiB.",
        ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    parser.add_argument("--sizes", type=ints, default=[4096, 16384])
    parser.add_argument("--multihead-n", type=int, default=4096, help="0 skips it")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--memory-n", type=int, default=65536, help="0 skips the probe")
    parser.add_argument("--machine", default="2-core CPU")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attention.json"))
    args = parser.parse_args(argv)
    res = header(args.machine, jax=jax.__version__, repeats=args.repeats)
    compiled, rounds = run(args.sizes, args.multihead_n, args.repeats)
    res.update(summarize(compiled, rounds))
    if args.memory_n:
        print(f"n = {args.memory_n}: memory", file=sys.stderr, flush=True)
        res["memory"] = measure_memory(args.memory_n)
    res["loadavg_end"] = os.getloadavg()
    save(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
