"""Benchmark: memory and time of derivatives of the attention field (issue 13, point 3).

    PYTHONPATH=. python benchmarks/bench_grad.py                   # about 3 minutes idle
    PYTHONPATH=. python benchmarks/bench_grad.py --sizes 4096 --memory-n 0 --repeats 3

For the sphere softmax field $F(X) = (P_{x_i} v[\\mu_X](x_i))_i$ ($Q = K = V = I$, d = 3,
beta = 4, float32) it measures, at each size n, in interleaved rounds (median; each ratio is
the median of the ratios within a round):

- forward: `F(X)`;
- grad: `jax.grad(lambda X: sum(F(X) * C))(X)` (one reverse pass; C fixed random);
- vjp: `jax.vjp(F, X)[1](C)` (forward and backward together);
- jvp: `jax.jvp(F, (X,), (T,))` (forward and tangent together);

and, in a fresh process per derivative at `--memory-n` tokens (default 65536), the peak
memory: XLA's temporary buffers from `memory_analysis()` of the compiled function and the
rise of the resident set from just before the call to its peak during it (`VmHWM` after
resetting it through `/proc/self/clear_refs`). The target is < 1 GiB at n = 65536.

Writes `benchmarks/results/grad.json` and `grad.md` (git-ignored).
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

import jax
import numpy as np
from _results import header, save

import particles

_SETUP = """
import jax, jax.numpy as jnp, particles
def problem(n, beta, block=None):
    attention = particles.Attention.identity(3, beta=beta, block_size=block)
    flow = particles.AttentionFlow(attention, particles.Sphere())
    field = lambda x: flow(0.0, x, None)
    x = particles.clouds.sphere_uniform(jax.random.key(0), n, 3)
    c = jax.random.normal(jax.random.key(1), x.shape, x.dtype)
    fns = {
        "forward": jax.jit(field),
        "grad": jax.jit(jax.grad(lambda x: jnp.sum(field(x) * c))),
        "vjp": jax.jit(lambda x: jax.vjp(field, x)[1](c)[0]),
        "jvp": jax.jit(lambda x: jax.jvp(field, (x,), (c,))[1]),
    }
    return fns, x
"""
exec(_SETUP)  # the same problem in this process and in the memory probes

_MEMORY_PROBE = _SETUP + textwrap.dedent(
    """
    import json, sys
    n, beta, kind = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    fns, x = problem(n, beta)
    compiled = fns[kind].lower(x).compile()
    mem = compiled.memory_analysis()
    jax.block_until_ready(x)
    before = status("VmRSS")
    # 5 resets the peak resident set (VmHWM) to the current one (Linux >= 4.0), so the
    # peak below is that of the call, not of the compilation
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    jax.block_until_ready(compiled(x))
    after = status("VmHWM")
    print(json.dumps({
        "n": n, "kind": kind,
        "xla_temp_bytes": mem.temp_size_in_bytes,
        "rss_before_bytes": before, "rss_peak_bytes": after,
        "rss_peak_rise_bytes": after - before,
    }))
    """
)


def _timed_cpu(f, x):
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(f(x))
    return time.perf_counter() - wall, time.process_time() - cpu


def time_derivatives(n, beta, repeats):
    fns, x = problem(n, beta)  # noqa: F821 (defined by exec above)
    for f in fns.values():
        jax.block_until_ready(f(x))
    kinds = list(fns)
    rounds = {k: [] for k in kinds}
    for _ in range(repeats):
        for k in kinds:
            rounds[k].append(_timed_cpu(fns[k], x))
    arr = {k: np.array(v) for k, v in rounds.items()}
    row = {"n": n}
    for k in kinds:
        row[f"{k}_s"] = float(np.median(arr[k][:, 0]))
        row[f"{k}_cpu_s"] = float(np.median(arr[k][:, 1]))
        if k != "forward":
            row[f"{k}_over_forward"] = float(np.median(arr[k][:, 0] / arr["forward"][:, 0]))
            row[f"{k}_over_forward_cpu"] = float(np.median(arr[k][:, 1] / arr["forward"][:, 1]))
    row["rounds"] = rounds
    return row


def measure_memory(n, beta, kind):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(particles.__file__).parent.parent), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(n), str(beta), kind],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(res):
    lines = [
        f"Sphere softmax field, d = 3, beta = {res['beta']}, float32; {res['machine']}, "
        f"{res['date']}, commit {res['commit']}, load average {res['loadavg_start'][0]:.1f} "
        f"-> {res['loadavg_end'][0]:.1f}.",
        "",
        "| n | forward (ms) | grad (ms) | grad / forward | vjp / forward | jvp / forward | "
        "grad / forward (CPU time) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["sizes"]:
        lines.append(
            f"| {r['n']} | {1e3 * r['forward_s']:.3g} | {1e3 * r['grad_s']:.3g} | "
            f"{r['grad_over_forward']:.2f} | {r['vjp_over_forward']:.2f} | "
            f"{r['jvp_over_forward']:.2f} | {r['grad_over_forward_cpu']:.2f} |"
        )
    if res.get("memory"):
        lines += [
            "",
            f"Peak memory at n = {res['memory'][0]['n']} (fresh process each):",
            "",
            "| derivative | XLA temp (MiB) | peak RSS rise (MiB) |",
            "|---|---:|---:|",
        ]
        for m in res["memory"]:
            lines.append(
                f"| {m['kind']} | {m['xla_temp_bytes'] / 2**20:.1f} | "
                f"{m['rss_peak_rise_bytes'] / 2**20:.1f} |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    parser.add_argument("--sizes", type=ints, default=[4096, 16384])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--beta", type=float, default=4.0)
    parser.add_argument("--memory-n", type=int, default=65536, help="0 skips the probes")
    parser.add_argument("--machine", default="2-core CPU")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grad.json"))
    args = parser.parse_args(argv)
    res = header(args.machine, jax=jax.__version__, beta=args.beta)
    res["sizes"] = []
    for n in args.sizes:
        print(f"n = {n}: timing", file=sys.stderr, flush=True)
        res["sizes"].append(time_derivatives(n, args.beta, args.repeats))
    if args.memory_n:
        res["memory"] = []
        for kind in ("forward", "grad", "vjp", "jvp"):
            print(f"n = {args.memory_n}: memory of {kind}", file=sys.stderr, flush=True)
            res["memory"].append(measure_memory(args.memory_n, args.beta, kind))
    res["loadavg_end"] = os.getloadavg()
    save(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
