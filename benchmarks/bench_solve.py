"""Benchmark: a whole solve against SciPy and torchdiffeq scripts (issue 13, point 4).

    pip install -e ".[bench]"        # torch (CPU), torchdiffeq, scipy
    PYTHONPATH=. python benchmarks/bench_solve.py                   # ~3 minutes idle
    PYTHONPATH=. python benchmarks/bench_solve.py --n 1024 --repeats 1

The sphere softmax flow $\\dot x_i = P_{x_i} \\sum_j \\mathrm{softmax}_j(\\beta \\langle x_i,
x_j\\rangle) x_j$ (d = 3, beta = 4, n = 4096 tokens uniform on S^2) on t in [0, 10], at
rtol = 1e-5, atol = 1e-6, solved in the same run by:

- particles: `particles.simulate(flow, x0, [0, 10], rtol, atol)` (diffrax Tsit5, PID
  controller), float32; the first (compiling) call is not timed;
- SciPy: `scipy.integrate.solve_ivp(rhs, (0, 10), y0, method="RK45")` with the right-hand
  side a plain NumPy script computes: the full n x n logit matrix, stable softmax, the
  tangent projection, in float64 (solve_ivp hands float64 arrays to the right-hand side);
- torchdiffeq: `torchdiffeq.odeint(f, y0, t, method="dopri5")` with the same field in
  torch (float32, CPU, torch's default threads): `softmax(beta x x^T) @ x`, projected.

It reports wall and CPU time (median of `--repeats` runs; SciPy runs once), the number of
field evaluations, each final cloud's largest difference from SciPy's, and the speed-ups;
writes `benchmarks/results/solve.json` and `solve.md` (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

import particles

sys.path.insert(0, str(Path(__file__).parent))
from _results import commit, save  # noqa: E402

D = 3


def numpy_rhs(n, beta, counter):
    def rhs(t, y):
        counter[0] += 1
        x = y.reshape(n, D)
        s = beta * (x @ x.T)
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        v = (p @ x) / p.sum(axis=1, keepdims=True)
        v -= np.sum(x * v, axis=1, keepdims=True) * x
        return v.ravel()

    return rhs


def torch_field(torch, beta, counter):
    class Field(torch.nn.Module):
        def forward(self, t, x):
            counter[0] += 1
            v = torch.softmax(beta * (x @ x.T), dim=-1) @ x
            return v - (v * x).sum(-1, keepdim=True) * x

    return Field()


def _timed(f):
    wall, cpu = time.perf_counter(), time.process_time()
    out = f()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--beta", type=float, default=4.0)
    parser.add_argument("--t1", type=float, default=10.0)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--machine", default="2-core CPU")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/solve.json"))
    args = parser.parse_args(argv)
    import scipy
    import torch
    import torchdiffeq
    from scipy.integrate import solve_ivp

    n = args.n
    res = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "commit": commit(),
        "machine": args.machine,
        "platform": platform.platform(),
        "versions": {
            "jax": jax.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "torch": torch.__version__,
            "torchdiffeq": torchdiffeq.__version__,
        },
        "torch_threads": torch.get_num_threads(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "loadavg_start": os.getloadavg(),
    }
    x0 = particles.clouds.sphere_uniform(jax.random.key(0), n, D)
    flow = particles.AttentionFlow(
        particles.Attention.identity(D, beta=args.beta), particles.Sphere()
    )
    ts = np.array([0.0, args.t1], np.float32)

    def ours():
        sol = particles.simulate(flow, x0, ts, rtol=args.rtol, atol=args.atol)
        return jax.block_until_ready(sol)

    print("particles", file=sys.stderr, flush=True)
    _, first, _ = _timed(ours)
    runs = [_timed(ours) for _ in range(args.repeats)]
    sol = runs[0][0]
    res["particles"] = {
        "wall_s": float(np.median([r[1] for r in runs])),
        "cpu_s": float(np.median([r[2] for r in runs])),
        "first_call_s": first,
        "steps": int(sol.num_steps),
        "evaluations": 6 * int(sol.num_steps) + 1,  # Tsit5: 6 stages (FSAL) per step
    }

    print("torchdiffeq", file=sys.stderr, flush=True)
    counter = [0]
    field = torch_field(torch, args.beta, counter)
    y0 = torch.tensor(np.asarray(x0))
    tt = torch.tensor([0.0, args.t1])

    def theirs():
        counter[0] = 0
        with torch.no_grad():
            return torchdiffeq.odeint(
                field, y0, tt, method="dopri5", rtol=args.rtol, atol=args.atol
            )

    truns = [_timed(theirs) for _ in range(args.repeats)]
    res["torchdiffeq"] = {
        "wall_s": float(np.median([r[1] for r in truns])),
        "cpu_s": float(np.median([r[2] for r in truns])),
        "evaluations": counter[0],
    }
    torch_final = truns[0][0][-1].numpy()

    print("scipy", file=sys.stderr, flush=True)
    counter = [0]
    ref, wall, cpu = _timed(
        lambda: solve_ivp(
            numpy_rhs(n, args.beta, counter),
            (0.0, args.t1),
            np.asarray(x0, np.float64).ravel(),
            method="RK45",
            rtol=args.rtol,
            atol=args.atol,
        )
    )
    scipy_final = ref.y[:, -1].reshape(n, D)
    res["scipy"] = {"wall_s": wall, "cpu_s": cpu, "evaluations": int(ref.nfev)}
    res["particles"]["max_diff_vs_scipy"] = float(
        np.max(np.abs(np.asarray(sol.final, np.float64) - scipy_final))
    )
    res["torchdiffeq"]["max_diff_vs_scipy"] = float(np.max(np.abs(torch_final - scipy_final)))
    for other in ("scipy", "torchdiffeq"):
        res[f"speedup_vs_{other}"] = res[other]["wall_s"] / res["particles"]["wall_s"]
        res[f"speedup_vs_{other}_cpu"] = res[other]["cpu_s"] / res["particles"]["cpu_s"]
    res["loadavg_end"] = os.getloadavg()
    lines = [
        f"Sphere softmax flow, n = {n}, d = 3, beta = {args.beta}, t in [0, {args.t1}], "
        f"rtol = {args.rtol}, atol = {args.atol}; {args.machine}, {res['date']}, commit "
        f"{res['commit']}; load average {res['loadavg_start'][0]:.1f} -> "
        f"{res['loadavg_end'][0]:.1f}.",
        "",
        "| solver | precision | time (s) | CPU time (s) | field evaluations | max diff vs SciPy "
        "| particles faster by (wall / CPU) |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| particles, Tsit5 | float32 | {res['particles']['wall_s']:.3g} | "
        f"{res['particles']['cpu_s']:.3g} | {res['particles']['evaluations']} | "
        f"{res['particles']['max_diff_vs_scipy']:.1e} | - |",
        f"| torchdiffeq, dopri5 | float32 | {res['torchdiffeq']['wall_s']:.3g} | "
        f"{res['torchdiffeq']['cpu_s']:.3g} | {res['torchdiffeq']['evaluations']} | "
        f"{res['torchdiffeq']['max_diff_vs_scipy']:.1e} | "
        f"{res['speedup_vs_torchdiffeq']:.1f}x / {res['speedup_vs_torchdiffeq_cpu']:.1f}x |",
        f"| SciPy solve_ivp, RK45 (NumPy) | float64 | {wall:.3g} | {cpu:.3g} | "
        f"{res['scipy']['evaluations']} | 0 | {res['speedup_vs_scipy']:.1f}x / "
        f"{res['speedup_vs_scipy_cpu']:.1f}x |",
    ]
    save(args.out, res, "\n".join(lines))


if __name__ == "__main__":
    main()
