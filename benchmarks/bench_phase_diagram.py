"""Benchmark: the phase diagram ensemble against a batched PyTorch fixed-step Euler loop.

    python benchmarks/bench_phase_diagram.py                 # 1024 starts x 30 betas
    python benchmarks/bench_phase_diagram.py --runs 256      # a documented fraction

The problem is the phase diagram of Geshkovski et al. (2023): n = 32 tokens on S^2,
Q = K = V = I, softmax attention, t in [0, 30], `runs` random starts for each of 30 betas.
Both contenders solve the same equations from the same starts, in float32, measured in the
same process:

- particles: `particles.studies.phase_diagram`, one vmapped adaptive Tsit5 solve over
  every (beta, start), at rtol = 1e-5 and 1e-3 (atol = rtol / 10);
- PyTorch: the approach of published research code, a batched fixed-step explicit Euler
  loop `x <- normalize(x + h P_x v(x))` over all systems at once, saving at the same times.

Accuracy is measured against a tight reference (diffrax Dopri8, rtol = atol = 1e-12,
float64, checked against Tsit5 at 1e-11) on `check_runs` starts of every beta: the error of
a member is $\\max_i |x_i(30) - x_i^{ref}(30)|$, and the table reports the median over the
checked members (and the 90th percentile and maximum). Euler's error is measured on the
checked members for several step counts; its time per step is measured on the full batch
(a fixed-step loop costs exactly steps x time per step), so the time Euler needs to reach
particles' accuracy is the measured time per step times the step count that reaches it,
read off a log-log fit of the measured error curve (flagged when the count lies beyond the
measured range). At equal time, Euler runs as many steps as fit in particles' time and its
error is measured.

PyTorch is an optional benchmark dependency (`pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from particles import studies


def _errors(final, ref_final):
    e = np.max(np.linalg.norm(np.asarray(final, np.float64) - ref_final, axis=-1), axis=-1)
    return {
        "median": float(np.median(e)),
        "p90": float(np.percentile(e, 90)),
        "max": float(e.max()),
    }


def _indicator_mismatch(min_inner, ref_min_inner, eps):
    return float(np.mean((np.asarray(min_inner) > 1 - eps) != (ref_min_inner > 1 - eps)))


def torch_euler(torch, x0, betas, steps, t1, saves):
    """Batched projected Euler on the sphere: x <- normalize(x + h P_x softmax(beta x x^T) x).

    x0: (M, n, d) tensor; betas: (M,) tensor; saves: number of save intervals (steps must
    be a multiple). Returns the final clouds and the min pairwise inner product at each save.
    """
    h = t1 / steps
    every = steps // saves
    n = x0.shape[1]
    off = ~torch.eye(n, dtype=torch.bool)
    b = betas[:, None, None]

    def min_inner(x):
        g = x @ x.transpose(1, 2)
        return g[:, off].min(dim=1).values

    x = x0.clone()
    mins = [min_inner(x)]
    with torch.inference_mode():
        for k in range(1, steps + 1):
            a = torch.softmax(b * (x @ x.transpose(1, 2)), dim=-1)
            v = a @ x
            v = v - (v * x).sum(-1, keepdim=True) * x
            x = x + h * v
            x = x / x.norm(dim=-1, keepdim=True)
            if k % every == 0:
                mins.append(min_inner(x))
    return x, torch.stack(mins, dim=-1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1024, help="random starts per beta")
    parser.add_argument("--num-betas", type=int, default=30)
    parser.add_argument("--beta-min", type=float, default=0.25)
    parser.add_argument("--beta-max", type=float, default=9.0)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--d", type=int, default=3)
    parser.add_argument("--t1", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=31)
    parser.add_argument(
        "--rtols", type=float, nargs="+", default=[1e-5, 1e-3], help="particles tolerances"
    )
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--check-runs", type=int, default=8, help="starts per beta checked")
    parser.add_argument("--euler-steps", type=int, nargs="+", default=[300, 1200, 4800])
    parser.add_argument("--timed-steps", type=int, default=30, help="Euler steps timed, full batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args(argv)
    import torch

    saves = args.frames - 1
    if any(s % saves for s in args.euler_steps) or args.timed_steps % saves:
        parser.error(f"Euler step counts must be multiples of frames - 1 = {saves}")
    rng = np.random.default_rng(args.seed)
    x0 = rng.standard_normal((args.runs, args.n, args.d))
    x0 /= np.linalg.norm(x0, axis=-1, keepdims=True)
    betas = np.linspace(args.beta_min, args.beta_max, args.num_betas)
    ts = np.linspace(0.0, args.t1, args.frames)
    c = args.check_runs
    out = {
        "problem": {
            "systems": args.runs * args.num_betas,
            "runs": args.runs,
            "betas": [args.beta_min, args.beta_max, args.num_betas],
            "n": args.n,
            "d": args.d,
            "t1": args.t1,
            "normalization": "softmax",
            "dtype": "float32",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "loadavg_start": os.getloadavg(),
        },
    }

    # reference: float64, Dopri8 at 1e-12, on the checked starts
    jax.config.update("jax_enable_x64", True)
    start = time.perf_counter()
    ref = studies.phase_diagram(
        None, jnp.asarray(betas), jnp.asarray(ts), starts=x0[:c], solver=diffrax.Dopri8(),
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip
    check = studies.phase_diagram(
        None, jnp.asarray(betas), jnp.asarray(ts), starts=x0[:c], rtol=1e-11, atol=1e-11
    )
    ref_final, ref_min = np.asarray(ref.final), np.asarray(ref.min_inner)
    out["reference"] = {
        "seconds": time.perf_counter() - start,
        "tsit5_1e-11_vs_dopri8_1e-12": _errors(check.final, ref_final),
    }
    jax.config.update("jax_enable_x64", False)
    print("reference", out["reference"], flush=True)

    # particles: one vmapped adaptive solve, float32, at each tolerance (atol = rtol / 10)
    def solve(rtol):
        pd = studies.phase_diagram(
            None,
            jnp.asarray(betas, jnp.float32),
            jnp.asarray(ts, jnp.float32),
            starts=jnp.asarray(x0, jnp.float32),
            rtol=rtol,
            atol=rtol / 10,
        )
        pd.min_inner.block_until_ready()
        return pd

    out["particles"] = []
    for rtol in args.rtols:
        start = time.perf_counter()
        solve(rtol)
        first = time.perf_counter() - start
        start = time.perf_counter()
        pd = solve(rtol)
        seconds = time.perf_counter() - start
        steps = np.asarray(pd.num_steps)
        out["particles"].append(
            {
                "rtol": rtol,
                "atol": rtol / 10,
                "seconds": seconds,
                "seconds_first_call_with_compilation": first,
                "error": _errors(pd.final[:, :c], ref_final),
                "clustered_indicator_mismatch": _indicator_mismatch(
                    pd.min_inner[:, :c], ref_min, args.eps
                ),
                "steps": {
                    "min": int(steps.min()),
                    "median": float(np.median(steps)),
                    "max": int(steps.max()),
                    "batch_efficiency_mean_over_max": float(steps.mean() / steps.max()),
                },
            }
        )
        print("particles", out["particles"][-1], flush=True)

    # PyTorch Euler: error against steps on the checked starts ...
    xb = torch.tensor(np.repeat(x0[None, :c], len(betas), 0).reshape(-1, args.n, args.d))
    bb = torch.tensor(np.repeat(betas, c))

    def euler_point(k):
        final, mins = torch_euler(torch, xb.float(), bb.float(), k, args.t1, saves)
        final = final.numpy().reshape(len(betas), c, args.n, args.d)
        mins = mins.numpy().reshape(len(betas), c, -1)
        point = {
            "steps": k,
            "error": _errors(final, ref_final),
            "clustered_indicator_mismatch": _indicator_mismatch(mins, ref_min, args.eps),
        }
        print("euler", point, flush=True)
        return point

    curve = [euler_point(k) for k in args.euler_steps]
    # ... and its time per step on the full batch
    x_all = torch.tensor(np.repeat(x0[None], len(betas), 0).reshape(-1, args.n, args.d)).float()
    b_all = torch.tensor(np.repeat(betas, args.runs)).float()
    torch_euler(torch, x_all, b_all, saves, args.t1, saves)  # warm-up
    start = time.perf_counter()
    torch_euler(torch, x_all, b_all, args.timed_steps, args.t1, saves)
    per_step = (time.perf_counter() - start) / args.timed_steps
    # log-log fit of median error against steps (first order: slope -1)
    ks = np.array([p["steps"] for p in curve], float)
    errs = np.array([p["error"]["median"] for p in curve])
    slope, intercept = np.polyfit(np.log(ks), np.log(errs), 1)
    out["torch_euler"] = {
        "seconds_per_step_full_batch": per_step,
        "error_curve": curve,
        "loglog_slope": float(slope),
    }
    out["comparison"] = []
    for ours in out["particles"]:
        steps_to_match = float(np.exp((np.log(ours["error"]["median"]) - intercept) / slope))
        # Euler with as many steps as fit in particles' time, measured on the checked starts
        equal = max(saves, int(ours["seconds"] / per_step) // saves * saves)
        out["comparison"].append(
            {
                "rtol": ours["rtol"],
                "particles_seconds": ours["seconds"],
                "particles_median_error": ours["error"]["median"],
                "euler_steps_to_match": steps_to_match,
                "euler_steps_to_match_within_measured_range": bool(
                    ks.min() <= steps_to_match <= ks.max()
                ),
                "euler_seconds_to_match": steps_to_match * per_step,
                "speedup_at_equal_accuracy": steps_to_match * per_step / ours["seconds"],
                "euler_in_particles_time": euler_point(equal),
            }
        )
    out["machine"]["loadavg_end"] = os.getloadavg()
    print(json.dumps(out["comparison"], indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
