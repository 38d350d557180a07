"""Benchmark of attention evaluation and whole solves (issue 2).

For the sphere SA flow ($Q = K = V = I$, $d = 3$, $\\beta = 4$, float32) at each size `n`:

- the time of one evaluation of the vector field `flow(t, x, None)`, jit-compiled,
  median of `--repeats` runs (compile excluded);
- a plain NumPy implementation of the same field (stable softmax, tangent projection
  $v - \\langle x, v\\rangle x$), timed the same way;
- the machine's own limit for this kernel: $n^2$ exponentials at the rate `jnp.exp` reaches
  on a cache-resident float32 array, plus $4 n^2 d$ flops at the rate of a 2048 x 2048
  float32 matmul;
- a whole solve on $t \\in [0, t_1]$: `particles.simulate` (Tsit5, PID controller) against
  `scipy.integrate.solve_ivp` (RK45) on the NumPy field, same `rtol` and `atol`;
- the peak memory of one evaluation at `--memory-n` tokens.

The machine is shared, so the field, the NumPy field and the two limit kernels are timed in
interleaved rounds, and each ratio is the median over rounds of the ratio within a round.

Run from the repository root:

    python benchmarks/bench_attention.py                 # ~10 minutes on 2 shared cores
    python benchmarks/bench_attention.py --sizes 1024 --scipy-solve-sizes 1024 --memory-n 0

It prints a markdown table and writes every number to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy
from scipy.integrate import solve_ivp

import particles

D = 3
# The exp kernel of the limit: a 256 KiB float32 array, updated in place many times.
EXP_SIZE = 1 << 16
EXP_ITERS = 1000
MATMUL_SIZE = 2048


def make_flow(beta: float) -> particles.AttentionFlow:
    return particles.AttentionFlow(particles.Attention.identity(D, beta=beta), particles.Sphere())


def numpy_field(beta: float, block_pairs: int = 1 << 22, dtype=np.float32):
    """The same vector field in plain NumPy, as a `solve_ivp` right-hand side.

    `dtype` float32 matches the JAX precision (the stricter baseline); float64 is what a
    plain script computes, since `solve_ivp` hands the right-hand side float64 arrays.

    Rows are done in blocks of about `block_pairs` query-key pairs so that large clouds fit
    in memory. Uniform weights add $-\\log n$ to every logit, which softmax cancels.
    """
    beta = dtype(beta)

    def rhs(t, y):
        x = y.reshape(-1, D).astype(dtype)
        n = x.shape[0]
        v = np.empty_like(x)
        step = max(1, block_pairs // n)
        for i in range(0, n, step):
            s = beta * (x[i : i + step] @ x.T)
            s -= s.max(axis=1, keepdims=True)
            np.exp(s, out=s)
            v[i : i + step] = (s @ x) / s.sum(axis=1, keepdims=True)
        v -= np.sum(x * v, axis=1, keepdims=True) * x
        return v.ravel().astype(np.float64)

    return rhs


def limit_kernels():
    """The two kernels that set the machine's limit, jit-compiled, with the work each does."""
    x = jnp.linspace(0.0, 1.0, EXP_SIZE, dtype=jnp.float32)
    # Each iteration needs the previous one (x <- exp(-x) converges to 0.567, so no overflow),
    # so XLA can neither hoist the exponential out of the loop nor drop iterations.
    exp_loop = jax.jit(lambda x: jax.lax.fori_loop(0, EXP_ITERS, lambda i, x: jnp.exp(-x), x))
    m = jnp.ones((MATMUL_SIZE, MATMUL_SIZE), jnp.float32)
    matmul = jax.jit(lambda m: m @ m)
    return (exp_loop, x, EXP_SIZE * EXP_ITERS), (matmul, m, 2 * MATMUL_SIZE**3)


def _timed(f, *args):
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - start


def _timed_cpu(f, *args):
    """Wall time and CPU time of this process (all threads) for one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - wall, time.process_time() - cpu


def time_evaluations(n: int, beta: float, repeats: int, limits, numpy_dtype=np.float32) -> dict:
    """Interleaved rounds of: JAX field, NumPy field, exp kernel, matmul kernel."""
    x = particles.clouds.sphere_uniform(jax.random.key(0), n, D)
    flow = make_flow(beta)
    start = time.perf_counter()
    field = jax.jit(lambda x: flow(0.0, x, None)).lower(x).compile()
    jax.block_until_ready(field(x))
    compile_s = time.perf_counter() - start
    rhs = numpy_field(beta, dtype=numpy_dtype)
    y = np.asarray(x, np.float64).ravel()
    # NumPy and JAX compute the same field.
    err = np.max(np.abs(rhs(0.0, y).reshape(n, D) - np.asarray(field(x))))
    (exp_loop, ex, exps), (matmul, mm, flops) = limits
    jax.block_until_ready(exp_loop(ex))
    jax.block_until_ready(matmul(mm))
    rows = []
    for _ in range(repeats):
        t_jax, c_jax = _timed_cpu(field, x)
        t_np, c_np = _timed_cpu(rhs, 0.0, y)
        t_exp, c_exp = _timed_cpu(exp_loop, ex)
        t_mm, c_mm = _timed_cpu(matmul, mm)
        exp_rate, flop_rate = exps / t_exp, flops / t_mm
        limit = n * n / exp_rate + 4 * n * n * D / flop_rate
        limit_cpu = n * n * c_exp / exps + 4 * n * n * D * c_mm / flops
        rows.append((t_jax, t_np, limit, exp_rate, flop_rate, c_jax, limit_cpu, c_np))
    rows = np.array(rows)
    med = np.median(rows, axis=0)
    return {
        "n": n,
        "compile_s": compile_s,
        "max_abs_diff_numpy": float(err),
        "eval_jax_s": float(med[0]),
        "eval_numpy_s": float(med[1]),
        "limit_s": float(med[2]),
        "exp_rate_per_s": float(med[3]),
        "matmul_flops_per_s": float(med[4]),
        "limit_exp_fraction": float(np.median((n * n / rows[:, 3]) / rows[:, 2])),
        "ratio_to_limit": float(np.median(rows[:, 0] / rows[:, 2])),
        "ratio_to_limit_min": float(np.min(rows[:, 0]) / np.min(rows[:, 2])),
        "speedup_vs_numpy_eval": float(np.median(rows[:, 1] / rows[:, 0])),
        # The same ratio in CPU time (all threads of this process): insensitive to time the
        # process spends descheduled on a shared machine and to how XLA splits work between
        # threads (the exp kernel is split in two, the attention kernel runs on one thread).
        "eval_jax_cpu_s": float(med[5]),
        "limit_cpu_s": float(med[6]),
        "ratio_to_limit_cpu": float(np.median(rows[:, 5] / rows[:, 6])),
        "eval_numpy_cpu_s": float(med[7]),
        "speedup_vs_numpy_eval_cpu": float(np.median(rows[:, 7] / rows[:, 5])),
        "eval_rounds": rows.tolist(),
    }


def time_solves(
    n,
    beta,
    t1,
    rtol,
    atol,
    repeats,
    scipy_solve,
    scipy_nfev_hint,
    numpy_eval_s,
    numpy_eval_cpu_s,
    numpy_dtype=np.float32,
):
    x0 = particles.clouds.sphere_uniform(jax.random.key(0), n, D)
    flow = make_flow(beta)
    ts = np.array([0.0, t1], np.float32)

    # simulate is called eagerly: its input checks run on concrete values and diffrax's
    # solve is compiled once (on the first call, which is not timed) and cached.
    def solve(x0):
        return particles.simulate(flow, x0, ts, rtol=rtol, atol=atol)

    start = time.perf_counter()
    sol = solve(x0)
    jax.block_until_ready(sol)
    first_s = time.perf_counter() - start
    runs = np.array([_timed_cpu(solve, x0) for _ in range(repeats)])
    times = runs[:, 0].tolist()
    out = {
        "solve_jax_s": float(np.median(times)),
        "solve_jax_runs_s": times,
        "solve_jax_cpu_s": float(np.median(runs[:, 1])),
        "solve_jax_first_call_s": first_s,
        "steps": int(sol.num_steps),
        "accepted": int(sol.num_accepted),
        "rejected": int(sol.num_rejected),
        "max_sphere_drift_jax": float(jnp.max(jnp.abs(jnp.linalg.norm(sol.final, axis=-1) - 1))),
    }
    if scipy_solve:
        rhs = numpy_field(beta, dtype=numpy_dtype)
        y0 = np.asarray(x0, np.float64).ravel()
        wall, cpu = time.perf_counter(), time.process_time()
        ref = solve_ivp(rhs, (0.0, t1), y0, method="RK45", rtol=rtol, atol=atol)
        out["solve_scipy_s"] = time.perf_counter() - wall
        out["solve_scipy_cpu_s"] = time.process_time() - cpu
        out["scipy_nfev"] = int(ref.nfev)
        out["scipy_steps"] = len(ref.t) - 1
        out["scipy_estimated"] = False
        final = ref.y[:, -1].reshape(n, D)
        out["max_abs_diff_final_vs_scipy"] = float(np.max(np.abs(final - np.asarray(sol.final))))
    elif scipy_nfev_hint is not None:
        # Estimate: NumPy evaluation time times the evaluations SciPy needed at a smaller n
        # (the mean-field dynamics, and so the step count, barely depends on n).
        out["solve_scipy_s"] = numpy_eval_s * scipy_nfev_hint
        out["solve_scipy_cpu_s"] = numpy_eval_cpu_s * scipy_nfev_hint
        out["scipy_nfev"] = scipy_nfev_hint
        out["scipy_estimated"] = True
    if "solve_scipy_s" in out:
        out["speedup_vs_scipy_solve"] = out["solve_scipy_s"] / out["solve_jax_s"]
        out["speedup_vs_scipy_solve_cpu"] = out["solve_scipy_cpu_s"] / out["solve_jax_cpu_s"]
    return out


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys, jax, numpy as np, particles
    n, beta = int(sys.argv[1]), float(sys.argv[2])

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    flow = particles.AttentionFlow(particles.Attention.identity(3, beta=beta), particles.Sphere())
    x = particles.clouds.sphere_uniform(jax.random.key(0), n, 3)
    compiled = jax.jit(lambda x: flow(0.0, x, None)).lower(x).compile()
    mem = compiled.memory_analysis()
    jax.block_until_ready(x)
    before = status("VmRSS")
    # 5 resets the peak resident set size (VmHWM) to the current one (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    jax.block_until_ready(compiled(x))
    peak = status("VmHWM")
    print(json.dumps({
        "n": n,
        "xla_temp_bytes": mem.temp_size_in_bytes,
        "xla_argument_bytes": mem.argument_size_in_bytes,
        "xla_output_bytes": mem.output_size_in_bytes,
        "rss_before_bytes": before,
        "rss_peak_bytes": peak,
        "rss_peak_delta_bytes": peak - before,
    }))
    """
)


def measure_memory(n: int, beta: float) -> dict:
    """Peak memory of one evaluation, in a fresh process: XLA's buffer assignment (temp) and
    the rise of the resident set from just before the call to its peak during it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(particles.__file__).parent.parent), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(n), str(beta)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ms(s):
    return f"{1e3 * s:.3g}" if s < 1 else f"{1e3 * s:,.0f}"


def markdown(results: dict) -> str:
    cfg = results["config"]
    lines = [
        f"Sphere SA flow, d = {D}, beta = {cfg['beta']}, float32; solve on t in [0, {cfg['t1']}] "
        f"with rtol = {cfg['rtol']}, atol = {cfg['atol']}. {results['machine']}, "
        f"{results['date']}, JAX {results['versions']['jax']}; NumPy baseline in "
        f"{cfg['numpy_dtype']}.",
        "",
        "| n | eval JAX (ms) | eval NumPy (ms) | limit (ms) | JAX / limit | JAX / limit (CPU time) | "
        "solve JAX (s) | steps | solve SciPy (s) | SciPy nfev | solve speed-up | (CPU time) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["sizes"]:
        scipy_s = r.get("solve_scipy_s")
        est = "~" if r.get("scipy_estimated") else ""
        lines.append(
            f"| {r['n']} | {_ms(r['eval_jax_s'])} | {_ms(r['eval_numpy_s'])} | "
            f"{_ms(r['limit_s'])} | {r['ratio_to_limit']:.2f} | {r['ratio_to_limit_cpu']:.2f} | "
            + (f"{r['solve_jax_s']:.3g} | {r['steps']} | " if "solve_jax_s" in r else "- | - | ")
            + (
                f"{est}{scipy_s:.3g} | {est}{r['scipy_nfev']} | {est}{r['speedup_vs_scipy_solve']:.0f}x | "
                f"{est}{r['speedup_vs_scipy_solve_cpu']:.0f}x |"
                if scipy_s is not None
                else "- | - | - | - |"
            )
        )
    lines.append("")
    lines.append(
        "limit = n^2 / (exp rate) + 4 n^2 d / (matmul rate); median exp rate "
        + ", ".join(f"{r['exp_rate_per_s']:.3g}/s" for r in results["sizes"])
        + "; matmul "
        + ", ".join(f"{r['matmul_flops_per_s'] / 1e9:.0f}" for r in results["sizes"])
        + " GFLOP/s (per size, measured in the same rounds). `~`: estimated, not run."
    )
    mem = results.get("memory")
    if mem:
        lines.append("")
        lines.append(
            f"Memory of one evaluation at n = {mem['n']}: XLA temp buffers "
            f"{mem['xla_temp_bytes'] / 2**20:.1f} MiB; peak RSS rise during the call "
            f"{mem['rss_peak_delta_bytes'] / 2**20:.1f} MiB."
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    parser.add_argument("--sizes", type=ints, default=[1024, 4096, 16384])
    parser.add_argument("--scipy-solve-sizes", type=ints, default=[1024, 4096])
    parser.add_argument("--solve-sizes", type=ints, default=None, help="default: --sizes")
    parser.add_argument("--repeats", type=int, default=7, help="rounds of evaluation timing")
    parser.add_argument("--solve-repeats", type=int, default=3)
    parser.add_argument("--beta", type=float, default=4.0)
    parser.add_argument("--t1", type=float, default=10.0)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument(
        "--numpy-dtype",
        choices=["float32", "float64"],
        default="float32",
        help="precision of the NumPy baseline (float64 is what plain solve_ivp code computes)",
    )
    parser.add_argument("--memory-n", type=int, default=65536, help="0 skips the memory probe")
    parser.add_argument("--machine", default="2-core CPU, shared")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attention.json"))
    args = parser.parse_args(argv)
    solve_sizes = args.sizes if args.solve_sizes is None else args.solve_sizes
    numpy_dtype = np.dtype(args.numpy_dtype).type

    results = {
        "date": datetime.date.today().isoformat(),
        "machine": args.machine,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "versions": {
            "jax": jax.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "python": platform.python_version(),
        },
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sizes": [],
    }
    limits = limit_kernels()
    nfev_hint = None
    for n in args.sizes:
        print(f"n = {n}: evaluations", file=sys.stderr, flush=True)
        row = time_evaluations(n, args.beta, args.repeats, limits, numpy_dtype)
        if n in solve_sizes:
            scipy_solve = n in args.scipy_solve_sizes
            print(
                f"n = {n}: solves (SciPy {'run' if scipy_solve else 'estimated'})",
                file=sys.stderr,
                flush=True,
            )
            repeats = args.solve_repeats if n <= 4096 else 1
            row.update(
                time_solves(
                    n,
                    args.beta,
                    args.t1,
                    args.rtol,
                    args.atol,
                    repeats,
                    scipy_solve,
                    nfev_hint,
                    row["eval_numpy_s"],
                    row["eval_numpy_cpu_s"],
                    numpy_dtype,
                )
            )
            if scipy_solve:
                nfev_hint = row["scipy_nfev"]
        results["sizes"].append(row)
    if args.memory_n:
        print(f"n = {args.memory_n}: memory", file=sys.stderr, flush=True)
        results["memory"] = measure_memory(args.memory_n, args.beta)
    results["loadavg_end"] = os.getloadavg()
    table = markdown(results)
    results["table"] = table
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
