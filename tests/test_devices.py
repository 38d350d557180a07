"""Many devices and many processes (`particles.devices`, `sims run --devices`).

The sharded cases run in subprocesses with `XLA_FLAGS=--xla_force_host_platform_device_count=4`
(JAX fixes its device count when it starts): four CPU devices sharing this machine's cores.
Each script prints one JSON line of measured numbers, asserted here. The two-process cases
start two Python processes joined by `jax.distributed` through a coordinator on localhost
(CPU collectives over gloo, supported by the installed JAX).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

import particles as P
from particles import devices
from sims.__main__ import main

ROOT = Path(__file__).resolve().parents[1]

# every script starts like the suite: strict rank promotion, the repository on the path
_PRELUDE = """
import json, sys
import jax
import jax.numpy as jnp
import numpy as np
jax.config.update("jax_numpy_rank_promotion", "raise")
import particles as P
from particles import devices
"""


def _env(device_count: int, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_"))}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={device_count}",
        PYTHONPATH=str(ROOT),
        MPLBACKEND="Agg",
        JAX_PLATFORMS="cpu",
        **extra,
    )
    return env


def _script(
    body: str, device_count: int = 4, timeout: float = 300, args: list[str] = (), **env
) -> dict:
    """Run `body` in a fresh Python with `device_count` CPU devices; its last stdout line
    is JSON."""
    proc = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(body), *args],
        capture_output=True,
        text=True,
        env=_env(device_count, **env),
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- one device, in process


def test_mesh_axes_are_auto():
    # Explicit axes (jax.make_mesh's default) break diffrax; the mesh must use Auto
    mesh = devices.make_mesh("all")
    assert mesh.axis_names == ("devices",)
    assert mesh.axis_types == (AxisType.Auto,)
    assert mesh.size == len(jax.devices())


def test_one_device_is_the_plain_path():
    def fn(x):
        return 2 * x

    assert devices.resolve(None) is None
    assert devices.resolve(1) is None
    assert devices.resolve("all") is None  # this process sees one CPU device
    assert devices.count() == 1 and devices.count("all") == 1
    assert devices.ensemble(fn, "all") is fn
    assert devices.platform() == "cpu"
    with devices.use("all"):
        assert devices.resolve(None) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "devices must be between 1 and 1 (the devices JAX sees: 1 cpu); got 0"),
        (2, "devices must be between 1 and 1 (the devices JAX sees: 1 cpu); got 2"),
        ("most", "devices must be 'all', a positive int or a list; got 'most'"),
        ([], "devices must be 'all', a positive int or a list; got []"),
    ],
)
def test_bad_devices_are_refused(value, message):
    with pytest.raises(ValueError) as info:
        devices.make_mesh(value)
    assert str(info.value) == message
    with pytest.raises(ValueError) as info, devices.use(value):
        pass
    assert str(info.value) == message


@pytest.mark.parametrize(
    "attention",
    [
        P.Attention.random(jax.random.key(1), 3, heads=2, beta=2.0),
        P.Attention.random(jax.random.key(2), 3, beta=1.5, normalization=P.Unnormalized()),
        P.Attention.random(jax.random.key(3), 3, beta=1.0, kernel=P.L2()),
    ],
    ids=["softmax-2-heads", "unnormalized", "l2"],
)
def test_weight_zero_padding_leaves_the_field_unchanged(attention, key):
    # a weight-zero key adds nothing to sum_j w_j k(x, x_j) V x_j nor to sum_j w_j k(x, x_j)
    x = P.clouds.sphere_uniform(key, 7, 3)
    w = jax.random.dirichlet(jax.random.key(4), jnp.ones(7))
    for weights in (None, w):
        xp, wp = devices.pad(x, weights, 4)
        assert xp.shape == (8, 3) and wp.shape == (8,)
        assert float(wp[7]) == 0.0 and abs(float(jnp.sum(wp)) - 1) < 1e-15
        np.testing.assert_array_equal(xp[7], x[6])  # a copy of the last token
        flow = P.AttentionFlow(attention, P.Sphere())
        np.testing.assert_allclose(flow(0.0, xp, wp)[:7], flow(0.0, x, weights), atol=1e-14)
    same = devices.pad(x[:4], None, 4)
    assert same[0] is x[:4] or same[0].shape == (4, 3)
    np.testing.assert_array_equal(same[1], jnp.full(4, 0.25))


def test_initialize_alone_is_one_process(monkeypatch):
    for name in [*os.environ]:
        if name.startswith("SLURM_") or name == "JAX_COORDINATOR_ADDRESS":
            monkeypatch.delenv(name)
    assert devices.initialize() == 1
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node1")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # one task of a job step: nothing to join
    assert devices.initialize() == 1
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS")
    monkeypatch.setenv("SLURM_NTASKS", "8")  # a batch script of an 8-task job, not srun
    assert devices.initialize() == 1
    with pytest.raises(ValueError) as info:
        devices.initialize(num_processes=2, process_id=0)
    assert str(info.value) == (
        "num_processes and process_id need a coordinator address (host:port of process 0)"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--devices", "0"], "--devices: must be >= 1 or 'all'; got 0"),
        (["--devices", "two"], "--devices: expected a positive int or 'all', got 'two'"),
        (
            ["--devices", "3"],
            "devices must be between 1 and 1 (the devices JAX sees: 1 cpu); got 3",
        ),
        (
            ["--num-processes", "2", "--process-id", "0"],
            "num_processes and process_id need a coordinator address (host:port of process 0)",
        ),
    ],
)
def test_cli_devices_errors(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    argv = ["run", "sphere-clustering", *flags, "--n", "8", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"sims: error: {message}"
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- four devices, subprocess


_PROBE = """
import dataclasses
import sims
from sims._registry import experiment

@dataclasses.dataclass(frozen=True)
class Probe:
    runs: int = 6

@experiment("devices-probe", Probe)  # registered in this subprocess only
def probe(config, directory, **options):
    # no devices= here: the study takes the default that sims.run sets
    pd = P.studies.phase_diagram(jax.random.key(0), betas, ts, n=8, runs=config.runs)
    np.save(directory / "min_inner.npy", np.asarray(pd.min_inner))
    used = {"default": devices.count(), "holding": len(pd.min_inner.sharding.device_set)}
    (directory / "used.json").write_text(json.dumps(used))
"""


def test_sharded_phase_diagram_equals_one_device(tmp_path):
    # 6 starts over 4 devices: padded to 8; float32. Through sims.run, the study inside the
    # experiment uses the 4 devices without being told and config.json records them.
    compare = """
    betas, ts = jnp.asarray([1.0, 4.0]), jnp.linspace(0.0, 2.0, 3)
    one = P.studies.phase_diagram(jax.random.key(0), betas, ts, n=8, runs=6, devices=1)
    four = P.studies.phase_diagram(jax.random.key(0), betas, ts, n=8, runs=6, devices=4)
    """
    report = f"""
    out = sims.run(Probe(), {str(tmp_path / "run")!r})
    saved = np.load(out / "min_inner.npy")
    print(json.dumps({{
        "devices": len(jax.devices()),
        "dtype": str(four.final.dtype),
        "shape": list(four.min_inner.shape),
        "final": float(jnp.max(jnp.abs(four.final - one.final))),
        "min_inner": float(jnp.max(jnp.abs(four.min_inner - one.min_inner))),
        "steps_equal": bool(jnp.all(four.num_steps == one.num_steps)),
        "saved": float(np.max(np.abs(saved - np.asarray(four.min_inner)))),
        "record": json.loads((out / "config.json").read_text()),
        "used": json.loads((out / "used.json").read_text()),
    }}))
    """
    result = _script(textwrap.dedent(compare) + _PROBE + textwrap.dedent(report))
    assert result["devices"] == 4
    assert result["dtype"] == "float32" and result["shape"] == [2, 6, 3]
    assert result["steps_equal"]
    assert result["final"] < 1e-5 and result["min_inner"] < 1e-5
    assert result["saved"] == 0.0  # the same 4-device program, reached through sims.run
    assert result["used"] == {"default": 4, "holding": 4}
    record = result["record"]
    assert (record["devices"], record["platform"], record["processes"]) == (4, "cpu", 1)


@pytest.mark.slow
def test_sims_phase_diagram_on_four_devices(tmp_path):
    # the experiment itself (figures included) on 4 devices, against the library on one
    result = _script(
        f"""
        import sims
        from sims.experiments.phase_diagram import Config
        betas, ts = jnp.asarray([1.0, 4.0]), jnp.linspace(0.0, 2.0, 3)
        one = P.studies.phase_diagram(jax.random.key(0), betas, ts, n=8, runs=6, devices=1)
        config = Config(n=8, runs=6, num_betas=2, beta_min=1.0, beta_max=4.0, t1=2.0,
                        frames=3, normalizations=("softmax",))
        out = sims.run(config, {str(tmp_path / "run")!r}, animation=False)
        saved = np.load(out / "phase_diagram.npz")["min_inner_SA"]
        print(json.dumps({{
            "saved": float(np.max(np.abs(saved - np.asarray(one.min_inner)))),
            "record": json.loads((out / "config.json").read_text()),
        }}))
        """
    )
    assert result["saved"] < 1e-5
    record = result["record"]
    assert (record["devices"], record["platform"], record["processes"]) == (4, "cpu", 1)


_FIELD = """
from jax.sharding import NamedSharding, PartitionSpec
mesh = devices.make_mesh(4)
tokens = NamedSharding(mesh, PartitionSpec("devices"))
attention = {
    "softmax": P.Attention.random(jax.random.key(1), 3, heads=2, beta=2.0),
    "unnormalized": P.Attention.identity(3, 1.5, normalization=P.Unnormalized()),
    "l2": P.Attention.random(jax.random.key(3), 3, beta=1.0, kernel=P.L2()),
}[sys.argv[1]]
flow = P.AttentionFlow(attention, P.Sphere())
out = {}
x = jax.device_put(P.clouds.sphere_uniform(jax.random.key(0), 256, 3), tokens)
v = devices.field(flow, x, devices=mesh)
out["sharded"] = float(jnp.max(jnp.abs(v - flow(0.0, x, None))))
out["sharded-layout"] = v.sharding == x.sharding
x = P.clouds.sphere_uniform(jax.random.key(0), 257, 3)  # odd n, on one device
v = devices.field(flow, x, devices=4)
out["odd"] = float(jnp.max(jnp.abs(v - flow(0.0, x, None))))
out["odd-layout"] = v.sharding == x.sharding
"""


def _check_field(result):
    assert result["sharded"] < 2e-6 and result["odd"] < 2e-6, result
    assert result["sharded-layout"] and result["odd-layout"]


def test_sharded_field_equals_one_device():
    # softmax with two heads, and the refusals
    result = _script(
        _FIELD
        + textwrap.dedent(
            """
            sinkhorn = P.Attention.identity(3, 1.0, normalization=P.Sinkhorn(5))
            try:
                devices.field(P.AttentionFlow(sinkhorn), x, devices=4)
            except ValueError as e:
                out["sinkhorn"] = str(e)
            try:
                devices.ShardedFlow(flow, mesh)(0.0, x[:62], None)
            except ValueError as e:
                out["not-padded"] = str(e)
            print(json.dumps(out))
            """
        ),
        args=["softmax"],
    )
    _check_field(result)
    assert result["sinkhorn"] == (
        "Sinkhorn normalization needs one measure on both sides: use self-attention"
    )
    assert result["not-padded"] == (
        "a sharded cloud needs a multiple of 4 tokens; got n = 62 "
        "(particles.devices.pad adds tokens of weight zero)"
    )


@pytest.mark.slow
def test_sharded_solve_equals_one_device():
    # a whole solve with the state split by tokens: 62 tokens padded to 64
    result = _script(
        """
        from jax.sharding import NamedSharding, PartitionSpec
        mesh = devices.make_mesh(4)
        tokens = NamedSharding(mesh, PartitionSpec("devices"))
        flow = P.AttentionFlow(P.Attention.identity(3, 4.0), P.Sphere())
        x = P.clouds.sphere_uniform(jax.random.key(0), 62, 3)
        ts = jnp.linspace(0.0, 3.0, 4)
        ref = P.simulate(flow, x, ts)
        xp, wp = devices.pad(x, None, 4)
        traj = P.simulate(devices.ShardedFlow(flow, mesh), jax.device_put(xp, tokens), ts,
                          weights=wp)
        print(json.dumps({
            "error": float(jnp.max(jnp.abs(traj.xs[:, :62] - ref.xs))),
            "spec": traj.xs.sharding.spec == PartitionSpec(None, "devices"),
            "steps": [int(traj.stats.num_steps), int(ref.stats.num_steps)],
        }))
        """
    )
    assert result["error"] < 1e-5 and result["spec"]
    assert result["steps"][0] == result["steps"][1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unnormalized", "l2"])
def test_sharded_field_other_variants(name):
    _check_field(_script(_FIELD + "print(json.dumps(out))\n", args=[name]))


@pytest.mark.slow
def test_sharded_chaos_and_stability_equal_one_device():
    result = _script(
        """
        attention = P.Attention.identity(2, 0.5)
        ts = jnp.linspace(0.0, 0.5, 3)
        mean, cov = jnp.zeros(2), jnp.eye(2)
        kw = dict(seeds=3, reference=256, projections=16, exact_max_n=0)
        one = P.studies.propagation_of_chaos(jax.random.key(0), attention, mean, cov,
                                              [8, 16], ts, devices=1, **kw)
        four = P.studies.propagation_of_chaos(jax.random.key(0), attention, mean, cov,
                                               [8, 16], ts, devices=4, **kw)
        flow = P.AttentionFlow(attention)
        x0 = P.clouds.gaussian(jax.random.key(1), 6, mean, cov)
        y0 = x0 + 1e-3
        st1 = P.studies.stability(flow, x0, y0, ts, devices=1)
        st4 = P.studies.stability(flow, x0, y0, ts, devices=4)
        print(json.dumps({
            "shape": list(four.coupling.shape),
            "chaos": max(float(jnp.max(jnp.abs(getattr(four, k) - getattr(one, k))))
                         for k in ("mean_error", "cov_error", "coupling", "sliced")),
            "log_norm": float(jnp.max(jnp.abs(st4.log_norm - st1.log_norm))),
            "bound": float(jnp.max(jnp.abs(st4.bound - st1.bound) / st1.bound)),
        }))
        """
    )
    assert result["shape"] == [2, 3, 3]
    assert result["chaos"] < 1e-5 and result["log_norm"] < 1e-5 and result["bound"] < 1e-5


# ---------------------------------------------------------------- two processes, localhost


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_TWO_PROCESSES = """
import os
pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
assert devices.initialize(f"localhost:{port}", num_processes=2, process_id=pid) == 2
assert len(jax.local_devices()) == 2 and len(jax.devices()) == 4
betas, ts = jnp.asarray([1.0, 4.0]), jnp.linspace(0.0, 2.0, 3)
whole = P.studies.phase_diagram(jax.random.key(0), betas, ts, n=8, runs=6, devices="all")
alone = P.studies.phase_diagram(jax.random.key(0), betas, ts, n=8, runs=6, devices=1)
flow = P.AttentionFlow(P.Attention.identity(3, 2.0), P.Sphere())
x = P.clouds.sphere_uniform(jax.random.key(2), 101, 3)
from jax.experimental import multihost_utils
v = multihost_utils.process_allgather(devices.field(flow, x, devices="all"), tiled=True)
import sims
from sims.experiments.phase_diagram import Config
config = Config(n=8, runs=6, num_betas=2, beta_min=1.0, beta_max=4.0, t1=2.0, frames=3,
                normalizations=("softmax",))
sims.run(config, out, animation=False)
print(json.dumps({
    "process": jax.process_index(),
    "min_inner": float(jnp.max(jnp.abs(whole.min_inner - alone.min_inner))),
    "steps_equal": bool(jnp.all(whole.num_steps == alone.num_steps)),
    "sum": float(jnp.sum(whole.min_inner)),
    "field": float(np.max(np.abs(v - np.asarray(flow(0.0, x, None))))),
    "scratch": sorted(os.listdir(os.environ["TMPDIR"])),
}))
"""


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    port, out = str(_free_port()), tmp_path / "run"
    procs = []
    for pid in (0, 1):
        scratch = tmp_path / f"tmp{pid}"
        scratch.mkdir()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _PRELUDE + _TWO_PROCESSES, str(pid), port, str(out)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(2, TMPDIR=str(scratch)),
                cwd=ROOT,
            )
        )
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    for pid, r in enumerate(results):
        assert r["process"] == pid
        assert r["min_inner"] < 1e-5 and r["steps_equal"] and r["field"] < 2e-6
        assert r["scratch"] == []  # process 1 computed its share in a removed directory
    assert results[0]["sum"] == results[1]["sum"]  # both processes hold every result
    record = json.loads((out / "config.json").read_text())
    assert (record["devices"], record["processes"], record["platform"]) == (4, 2, "cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "tmp0", "tmp1"]
