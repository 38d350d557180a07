"""Benchmark: the phase diagram ensemble, before and after batching per beta, and against a
batched PyTorch fixed-step Euler loop.

    PYTHONPATH=. python benchmarks/bench_phase_diagram.py              # 1024 starts x 30 betas
    PYTHONPATH=. python benchmarks/bench_phase_diagram.py --runs 128 --no-torch  # a sub-grid

The problem is the phase diagram of Geshkovski et al. (2023): n = 32 tokens on S^2,
Q = K = V = I, softmax attention, t in [0, 30], `runs` random starts for each of 30 betas.
Both contenders solve the same equations from the same starts, in float32, measured in the
same process:

- particles: `particles.studies.phase_diagram` (adaptive Tsit5, one batched solve per beta,
  saving only the minimum inner products and the final clouds), at rtol = 1e-5 and 1e-3
  (atol = rtol / 10), timed in interleaved rounds against the formulation it replaced, one
  `vmap` of `particles.simulate` over every (beta, start) saving whole trajectories
  (`vmapped_simulate` below: the same members, steps and results). The batch efficiency
  is mean(steps) / max(steps) for one batch and sum_b mean_b / sum_b max_b per beta;
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

PyTorch is an optional benchmark dependency (`pip install -e .[bench]`); `--no-torch` skips
it. Writes `benchmarks/results/phase_diagram.json` and `.md` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import particles
from particles import studies

sys.path.insert(0, str(Path(__file__).parent))
from _results import commit, write_atomic  # noqa: E402


@eqx.filter_jit
def vmapped_simulate(betas, ts, x0, rtol, atol):
    """The ensemble as it was before batching per beta: one `vmap` over every (beta, start)
    of `particles.simulate`, saving each member's whole trajectory."""

    def member(beta, x):
        flow = particles.AttentionFlow(
            particles.Attention.identity(x.shape[-1], beta), particles.Sphere()
        )
        traj = particles.simulate(flow, x, ts, rtol=rtol, atol=atol, throw=False)
        mins = particles.metrics.over_time(particles.metrics.min_inner_product, traj.xs)
        return traj.final, mins, traj.num_steps

    over_starts = jax.vmap(member, in_axes=(None, 0))
    return jax.vmap(over_starts, in_axes=(0, None))(betas, x0)


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
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per variant")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch Euler part")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/phase_diagram.json"))
    args = parser.parse_args(argv)

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

    # particles, float32, at each tolerance (atol = rtol / 10): the ensemble as it was
    # (one vmap of simulate over everything) and as it is (phase_diagram: a batch per beta)
    args32 = (jnp.asarray(betas, jnp.float32), jnp.asarray(ts, jnp.float32))
    x32 = jnp.asarray(x0, jnp.float32)

    def solve(rtol, variant):
        if variant == "vmapped simulate (before)":
            final, mins, steps = vmapped_simulate(*args32, x32, rtol, rtol / 10)
            mins.block_until_ready()
            return final, mins, steps
        pd = studies.phase_diagram(None, *args32, starts=x32, rtol=rtol, atol=rtol / 10)
        pd.min_inner.block_until_ready()
        return pd.final, pd.min_inner, pd.num_steps

    out["particles"] = []
    for rtol in args.rtols:
        timings = {}
        for variant in VARIANTS:
            solve(rtol, variant)  # compiles
        # interleaved rounds: both formulations see the same load
        for _ in range(args.repeats):
            for variant in VARIANTS:
                start = time.perf_counter()
                cpu = time.process_time()
                result = solve(rtol, variant)
                timings.setdefault(variant, []).append(
                    (time.perf_counter() - start, time.process_time() - cpu)
                )
                if variant == VARIANTS[-1]:
                    final, mins, steps = result
        steps = np.asarray(steps)
        row = {
            "rtol": rtol,
            "atol": rtol / 10,
            "seconds_by_variant": {
                v: float(np.median([t[0] for t in ts_])) for v, ts_ in timings.items()
            },
            "cpu_seconds_by_variant": {
                v: float(np.median([t[1] for t in ts_])) for v, ts_ in timings.items()
            },
            "speedup_vs_before": float(
                np.median(
                    [
                        a[0] / b[0]
                        for a, b in zip(timings[VARIANTS[0]], timings[VARIANTS[1]], strict=True)
                    ]
                )
            ),
            "speedup_vs_before_cpu": float(
                np.median(
                    [
                        a[1] / b[1]
                        for a, b in zip(timings[VARIANTS[0]], timings[VARIANTS[1]], strict=True)
                    ]
                )
            ),
            "error": _errors(final[:, :c], ref_final),
            "clustered_indicator_mismatch": _indicator_mismatch(mins[:, :c], ref_min, args.eps),
            "steps": {
                "min": int(steps.min()),
                "median": float(np.median(steps)),
                "max": int(steps.max()),
                "batch_efficiency_one_batch": float(steps.mean() / steps.max()),
                "batch_efficiency_per_beta": float(steps.mean(1).sum() / steps.max(1).sum()),
            },
        }
        row["seconds"] = row["seconds_by_variant"][VARIANTS[-1]]
        out["particles"].append(row)
        print("particles", row, flush=True)
    if args.no_torch:
        _write_results(args, out)
        return out

    # PyTorch Euler: error against steps on the checked starts ...
    import torch

    out["machine"]["torch"] = torch.__version__
    out["machine"]["torch_threads"] = torch.get_num_threads()
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
    _write_results(args, out)
    return out


VARIANTS = ("vmapped simulate (before)", "phase_diagram, batch per beta")


def _write_results(args, out):
    """The JSON and a Markdown table, each written atomically."""
    out["machine"]["loadavg_end"] = os.getloadavg()
    out["commit"] = commit()
    p = out["problem"]
    lines = [
        f"Phase diagram: {p['runs']} starts x {p['betas'][2]} betas in [{p['betas'][0]}, "
        f"{p['betas'][1]}], n = {p['n']} on S^2, t in [0, {p['t1']}], float32; commit "
        f"{out['commit']}; load average {out['machine']['loadavg_start'][0]:.1f} -> "
        f"{out['machine']['loadavg_end'][0]:.1f}; error: median over {args.check_runs} "
        "checked starts per beta of max_i |x_i(t1) - x_i^ref(t1)| against float64 Dopri8.",
        "",
        "| rtol | before (s) | now (s) | speed-up (wall / CPU) | median error | batch "
        "efficiency one batch / per beta | steps median / max |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["particles"]:
        t = r["seconds_by_variant"]
        lines.append(
            f"| {r['rtol']:g} | {t[VARIANTS[0]]:.3g} | {t[VARIANTS[1]]:.3g} | "
            f"{r['speedup_vs_before']:.2f}x / {r['speedup_vs_before_cpu']:.2f}x | "
            f"{r['error']['median']:.1e} | {r['steps']['batch_efficiency_one_batch']:.2f} / "
            f"{r['steps']['batch_efficiency_per_beta']:.2f} | {r['steps']['median']:.0f} / "
            f"{r['steps']['max']} |"
        )
    for c in out.get("comparison", []):
        lines.append("")
        lines.append(
            f"PyTorch batched Euler at rtol {c['rtol']:g}'s accuracy: "
            f"{c['euler_seconds_to_match']:.3g} s ({c['speedup_at_equal_accuracy']:.1f}x "
            "slower than particles)."
        )
    out["table"] = "\n".join(lines)
    print(out["table"])
    write_atomic(args.out, json.dumps(out, indent=1))
    write_atomic(args.out.with_suffix(".md"), out["table"] + "\n")


if __name__ == "__main__":
    main()
