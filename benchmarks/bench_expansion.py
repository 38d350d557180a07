"""Harmonic expansion against the direct blocked sum: error and speed, in one run.

    python benchmarks/bench_expansion.py                       # S^2, n = 65536, beta 4, 9, 36
    python benchmarks/bench_expansion.py --n 16384 --repeats 1 # smaller, on a loaded machine
    python benchmarks/bench_expansion.py --solve-n 1048576     # + a solve on S^2, t in [0, 10]
    python benchmarks/bench_expansion.py --circle-n 1048576    # + S^1 particles vs the density

Field rows: softmax, Q = K = V = I, tokens uniform on the sphere, float32 (the default
dtype); error = max over tokens of |v_expansion - v_direct| / max |v_direct|, the a
posteriori bound (`Attention.error_estimate`) in the same units, and the time of one jitted
evaluation (best of `--repeats`, compilation excluded) for both methods in the same run,
so the ratio holds on a loaded machine even when the absolute times do not.

The solve row integrates `AttentionFlow(Attention.identity(3, beta, evaluation=
Expansion(tol)), Sphere())` with Tsit5 at rtol = atol = `--rtol` and reports wall time
(compilation included) and steps. The circle row runs `--circle-n` particles on S^1 and the
Eulerian density solver `meanfield.circle_flow` from the same density to t = 1 and reports
W1 between them (`wasserstein.circle_w1_density`).
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp

import particles as P
from particles import meanfield as mf
from particles import wasserstein as W


def _time(f, *args, repeats: int) -> tuple[float, jax.Array]:
    out = jax.block_until_ready(f(*args))  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - start)
    return best, out


def field_rows(n: int, betas, tol: float, repeats: int, d: int) -> None:
    x = P.clouds.sphere_uniform(jax.random.key(0), n, d)
    call = eqx.filter_jit(lambda a, x: a(x))
    bound = eqx.filter_jit(lambda a, x: a.error_estimate(x))
    print(f"S^{d - 1}, n = {n}, float32, tol = {tol:g}, best of {repeats}")
    print("| beta | order L | direct | expansion | speed-up | error | a posteriori bound |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for beta in betas:
        direct = P.Attention.identity(d, beta)
        fast = P.Attention.identity(d, beta, evaluation=P.Expansion(tol))
        t_fast, v_fast = _time(call, fast, x, repeats=repeats)
        t_direct, v_direct = _time(call, direct, x, repeats=repeats)
        scale = jnp.max(jnp.linalg.norm(v_direct, axis=1))
        err = float(jnp.max(jnp.linalg.norm(v_fast - v_direct, axis=1)) / scale)
        est = float(jnp.max(bound(fast, x)) / scale)
        print(
            f"| {beta:g} | {fast.evaluation.order} | {t_direct * 1e3:.1f} ms | "
            f"{t_fast * 1e3:.1f} ms | {t_direct / t_fast:.1f}x | {err:.1e} | {est:.1e} |",
            flush=True,
        )


def solve_row(n: int, beta: float, tol: float, rtol: float, t1: float) -> None:
    x0 = P.clouds.sphere_uniform(jax.random.key(1), n, 3)
    flow = P.AttentionFlow(P.Attention.identity(3, beta, evaluation=P.Expansion(tol)), P.Sphere())
    start = time.perf_counter()
    traj = P.simulate(flow, x0, jnp.array([0.0, t1]), rtol=rtol, atol=rtol)
    jax.block_until_ready(traj.xs)
    wall = time.perf_counter() - start
    drift = float(P.sphere_drift(traj.final))
    print(
        f"solve S^2: n = {n}, beta = {beta:g}, t in [0, {t1:g}], rtol = atol = {rtol:g}: "
        f"{wall:.1f} s (compilation included), {int(traj.stats.num_steps)} steps, "
        f"sphere drift {drift:.1e}",
        flush=True,
    )


def circle_row(n: int, beta: float, tol: float, cells: int) -> None:
    theta = mf.circle_grid(cells)
    rho0 = mf.circle_density(1 + 0.5 * jnp.cos(theta) + 0.25 * jnp.sin(2 * theta))
    ts = jnp.array([0.0, 1.0])
    start = time.perf_counter()
    eulerian = mf.circle_flow(rho0, ts, beta=beta)
    jax.block_until_ready(eulerian.densities)
    t_density = time.perf_counter() - start
    flow = P.AttentionFlow(P.Attention.identity(2, beta, evaluation=P.Expansion(tol)), P.Sphere())
    x0 = mf.circle_points(mf.circle_sample(jax.random.key(2), n, rho0))
    start = time.perf_counter()
    traj = P.simulate(flow, x0, ts, rtol=1e-6, atol=1e-6)
    angles = jax.block_until_ready(mf.circle_angles(traj.xs))
    t_particles = time.perf_counter() - start
    w1 = float(W.circle_w1_density(angles[-1], eulerian.densities[-1]))
    w1_0 = float(W.circle_w1_density(angles[0], eulerian.densities[0]))
    print(
        f"circle: n = {n}, beta = {beta:g}, {cells} cells: W1 at t = 1 {w1:.2e} (at t = 0 "
        f"{w1_0:.2e}); particles {t_particles:.1f} s ({int(traj.stats.num_steps)} steps), "
        f"density {t_density:.1f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--betas", type=float, nargs="+", default=[4.0, 9.0, 36.0])
    parser.add_argument("--d", type=int, default=3, choices=[2, 3])
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--solve-n", type=int, default=0, help="0: no solve")
    parser.add_argument("--solve-beta", type=float, default=4.0)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--t1", type=float, default=10.0)
    parser.add_argument("--circle-n", type=int, default=0, help="0: no circle run")
    parser.add_argument("--circle-beta", type=float, default=1.0)
    parser.add_argument("--cells", type=int, default=1024)
    parser.add_argument("--no-field", action="store_true", help="skip the field rows")
    args = parser.parse_args()
    if not args.no_field:
        field_rows(args.n, args.betas, args.tol, args.repeats, args.d)
    if args.solve_n:
        solve_row(args.solve_n, args.solve_beta, args.tol, args.rtol, args.t1)
    if args.circle_n:
        circle_row(args.circle_n, args.circle_beta, args.tol, args.cells)


if __name__ == "__main__":
    main()
