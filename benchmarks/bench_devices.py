"""Scaling over devices: one ensemble and one large cloud on 1, 2, 4, ... devices.

    PYTHONPATH=. XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
        python benchmarks/bench_devices.py                      # 4 CPU devices on this host
    PYTHONPATH=. python benchmarks/bench_devices.py             # on a GPU machine: its GPUs

- **ensemble**: `studies.phase_diagram` with `runs x betas` members (default 512 x 8 =
  4096; n = 32 on S^2, softmax, t in [0, 10], float32), members split over the devices
  (`devices=k`); compile excluded (a first call with the same shapes), median of
  `--repeats` rounds. The error column is the largest difference of `min_inner` from the
  one-device result (members are the same solves, so it is float32 rounding or 0).
- **cloud**: one evaluation of the sphere SA field (`Attention.identity(3, 4.0)`) at
  n = 65536 (`--cloud-n`, a list) with the query tokens split over the devices and the keys gathered
  (`particles.devices.field` on a token-sharded cloud), compile excluded, median of rounds;
  the error is the largest difference from the one-device field; `--solve` adds a whole
  solve (t in [0, t1], Tsit5, rtol 1e-5) per size, `ShardedFlow` on several devices.

Devices counts are 1, 2, 4, ... up to what JAX sees. Forced host devices
(`--xla_force_host_platform_device_count`) share the machine's cores, so on a CPU the table
measures correctness and the overhead of splitting, not a speed-up. Writes every number to
`benchmarks/results/devices.json` (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

import particles as P
from particles import devices


def _timed(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # compile
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rounds.append(time.perf_counter() - start)
    return statistics.median(rounds), rounds


def ensemble(counts, args) -> list[dict]:
    betas = jnp.linspace(0.25, 6.0, args.betas)
    ts = jnp.linspace(0.0, args.t1, 11)
    rows, reference = [], None
    for k in counts:

        def run(k=k):
            pd = P.studies.phase_diagram(
                jax.random.key(0), betas, ts, n=args.n, runs=args.runs, devices=k
            )
            pd.min_inner.block_until_ready()
            return pd

        seconds, rounds = _timed(run, args.repeats)
        pd = run()
        if reference is None:
            reference = pd
        rows.append(
            {
                "devices": k,
                "members": args.runs * args.betas,
                "seconds": seconds,
                "rounds": rounds,
                "max_steps": int(pd.num_steps.max()),
                "error": float(jnp.max(jnp.abs(pd.min_inner - reference.min_inner))),
            }
        )
        print(f"ensemble  devices={k}: {seconds:.3f} s", flush=True)
    return rows


def cloud(counts, n: int, args) -> list[dict]:
    flow = P.AttentionFlow(P.Attention.identity(3, 4.0), P.Sphere())
    x = P.clouds.sphere_uniform(jax.random.key(0), n, 3)
    ts = jnp.asarray([0.0, args.t1])
    rows, reference = [], None
    for k in counts:
        if k == 1:
            xk, wk, solved = x, None, flow
            evaluate = jax.jit(lambda x: flow(0.0, x, None))
        else:
            mesh = devices.make_mesh(k)
            xp, wk = devices.pad(x, None, k)  # weight-zero tokens when k does not divide n
            xk = jax.device_put(xp, NamedSharding(mesh, PartitionSpec(devices.AXIS)))
            solved = devices.ShardedFlow(flow, mesh)

            def evaluate(x, mesh=mesh, w=wk):
                return devices.field(flow, x, w, devices=mesh)

        def once(evaluate=evaluate, xk=xk):
            return evaluate(xk).block_until_ready()

        seconds, rounds = _timed(once, args.repeats)
        v = evaluate(xk)[:n]
        if reference is None:
            reference = v
        row = {
            "devices": k,
            "n": n,
            "seconds": seconds,
            "rounds": rounds,
            "sharding": str(v.sharding),
            "error": float(jnp.max(jnp.abs(v - reference))),
        }
        if args.solve:
            solve = jax.jit(
                lambda x, w, solved=solved: (
                    P.simulate(solved, x, ts, weights=w, rtol=1e-5, atol=1e-6).xs
                )
            )
            row["solve_seconds"], _ = _timed(
                lambda solve=solve, xk=xk, wk=wk: solve(xk, wk).block_until_ready(), 1
            )
        rows.append(row)
        extra = f", solve {row['solve_seconds']:.3f} s" if args.solve else ""
        print(f"cloud n={n} devices={k}: field {seconds:.4f} s{extra}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=512, help="starts per beta")
    parser.add_argument("--betas", type=int, default=8)
    parser.add_argument("--n", type=int, default=32, help="tokens per ensemble member")
    parser.add_argument("--t1", type=float, default=10.0)
    parser.add_argument(
        "--cloud-n",
        type=lambda text: [int(v) for v in text.split(",") if v],
        default=[65536],
        help="cloud sizes, comma-separated (empty: no cloud)",
    )
    parser.add_argument(
        "--solve", action="store_true", help="also time a whole solve, t in [0, t1], per size"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-devices", type=int, default=None, help="default: all")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/devices.json"))
    args = parser.parse_args()

    top = min(len(jax.devices()), args.max_devices or len(jax.devices()))
    counts = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= top]
    if top not in counts:
        counts.append(top)
    load = os.getloadavg()
    print(
        f"{len(jax.devices())} {devices.platform()} devices, cores {os.cpu_count()}, "
        f"load {load[0]:.1f}",
        flush=True,
    )
    ens = ensemble(counts, args) if args.runs > 0 else []
    clouds = {n: cloud(counts, n, args) for n in args.cloud_n}
    result = {
        "platform": devices.platform(),
        "device_kind": jax.devices()[0].device_kind,
        "devices_seen": len(jax.devices()),
        "cpu_count": os.cpu_count(),
        "load_before": load,
        "load_after": os.getloadavg(),
        "jax": jax.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "ensemble": ens,
        "cloud": {str(n): rows for n, rows in clouds.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.partial")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out)  # atomic: a reader never sees half a file

    print(f"\n{result['devices_seen']} x {result['device_kind']} ({result['platform']})")
    if ens:
        print(f"\nensemble: {ens[0]['members']} members, n = {args.n}, t1 = {args.t1}")
        print("| devices | time | vs 1 device | max difference from 1 device |")
        print("|---:|---:|---:|---:|")
        for row in ens:
            speed = ens[0]["seconds"] / row["seconds"]
            print(
                f"| {row['devices']} | {row['seconds']:.3f} s | {speed:.2f}x | {row['error']:.1e} |"
            )
    for n, rows in clouds.items():
        print(
            f"\none cloud, n = {n}, d = 3: one field evaluation"
            + (" and a whole solve" if args.solve else "")
        )
        head = "| devices | field | vs 1 device | max difference |" + (
            " solve |" if args.solve else ""
        )
        print(head)
        print("|---:" * (5 if args.solve else 4) + "|")
        for row in rows:
            speed = rows[0]["seconds"] / row["seconds"]
            cells = (
                f"| {row['devices']} | {row['seconds']:.4f} s | {speed:.2f}x | {row['error']:.1e} |"
            )
            if args.solve:
                cells += f" {row['solve_seconds']:.3f} s |"
            print(cells)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
