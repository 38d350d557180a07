"""The tiled reduction equals the direct formula to rounding: values, gradients, jvp, vjp.

`reduce_rows(..., block=b)` with fewer queries than `b` is the direct formula on the whole
(q, m) matrix, differentiated by JAX; with more it maps tiles of `b` queries (the last one
padded), each with its own derivative rule and recomputed when differentiated, and causal
rows skip the keys past each chunk (particles/attention/_tiled.py).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particles as P
from particles.attention import _tiled, reduce_rows

KERNELS = [P.DotProduct(), P.L2()]
OPS = ["softmax", "sum", "lse"]


def _problem(key, n=37, m=37, k=3, e=3, dtype=jnp.float64):
    kq, kk, kv, kw = jax.random.split(key, 4)
    qf = jax.random.normal(kq, (n, k), dtype)
    kf = jax.random.normal(kk, (m, k), dtype)
    values = jax.random.normal(kv, (m, e), dtype)
    w = jax.random.uniform(kw, (m,), dtype, 0.1, 1.0)
    # one removed token (log 0 = -inf) exercises the masked entries
    w = w.at[3].set(0.0)
    bias = P.attention.log_weights(w / jnp.sum(w), m, dtype)
    return qf, kf, bias, values


def _rows(op, kernel, causal, block):
    def f(beta, qf, kf, bias, values):
        vals = None if op == "lse" else values
        return reduce_rows(op, kernel, beta, qf, kf, bias, vals, causal=causal, block=block)

    return f


def _close(a, b, rtol=1e-11, atol=1e-12):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("kernel", KERNELS, ids=str)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("causal", [False, True])
def test_tiled_equals_direct_with_derivatives(key, kernel, op, causal):
    # 37 queries in tiles of 5: 8 tiles, the last one padded; causal: 8 chunks of one tile
    args = (jnp.asarray(1.7),) + _problem(key)
    direct = _rows(op, kernel, causal, 10_000)
    tiled = _rows(op, kernel, causal, 5)
    # every argument perturbed at once: forward mode
    tangents = jax.tree.map(lambda a: jax.random.normal(jax.random.key(5), a.shape, a.dtype), args)
    out = direct(*args)
    cot = jax.random.normal(jax.random.key(6), out.shape, out.dtype)

    def everything(f):
        # value, jvp and the cotangent of every argument (the key bias included)
        return f(*args), jax.jvp(f, args, tangents), jax.vjp(f, *args)[1](cot)

    _close(jax.jit(everything, static_argnums=0)(tiled), everything(direct))


def test_tiled_second_derivatives_equal_direct(key):
    # worst_cloud differentiates a jvp and a vjp of the field: the tiled rule must be
    # differentiable again
    qf, kf, bias, values = _problem(key, n=20, m=20)

    def sigma(block):
        def f(x):
            field = lambda x: reduce_rows(  # noqa: E731
                "softmax", P.DotProduct(), 2.0, x, x, bias, x, causal=False, block=block
            )
            jv = jax.jvp(field, (x,), (values,))[1]
            return jnp.sum(jax.vjp(field, x)[1](jv)[0] ** 2)

        return jax.grad(f)(qf)

    _close(sigma(6), sigma(10_000), rtol=1e-10, atol=1e-11)


class _Scaled(P.AbstractKernel):
    """A kernel with an array parameter: its cotangent must pass through the tiled rule."""

    scale: jax.Array

    def log_kernel(self, beta, q, k):
        return beta * self.scale * jnp.dot(q, k)


def test_tiled_gradient_reaches_kernel_parameters(key):
    qf, kf, bias, values = _problem(key)

    def loss(kernel, block):
        out = reduce_rows("softmax", kernel, 1.3, qf, kf, bias, values, causal=True, block=block)
        return jnp.sum(out**2)

    kernel = _Scaled(jnp.asarray(0.8))
    g_tiled = eqx.filter_grad(loss)(kernel, 7).scale
    g_direct = eqx.filter_grad(loss)(kernel, 10_000).scale
    assert abs(float(g_direct)) > 1e-3  # the parameter matters
    np.testing.assert_allclose(g_tiled, g_direct, rtol=1e-11)


def test_causal_chunks_cover_every_row_once(key):
    # 37 rows in tiles of 3: 13 tiles in 8 chunks of 1 or 2 tiles; a unique value per key
    # makes any missing, repeated or misplaced row visible
    n = 37
    qf = jnp.zeros((n, 1))
    values = jnp.arange(n, dtype=jnp.float64)[:, None]
    bias = jnp.zeros(n)
    out = reduce_rows("softmax", P.DotProduct(), 1.0, qf, qf, bias, values, causal=True, block=3)
    # equal logits: row i averages keys 0..i, i.e. i / 2
    np.testing.assert_allclose(out[:, 0], np.arange(n) / 2, rtol=1e-14)


def test_float32_tiled_equals_direct_to_rounding(key, float32):
    qf, kf, bias, values = (a.astype(jnp.float32) for a in _problem(key))
    a = reduce_rows("softmax", P.DotProduct(), 4.0, qf, kf, bias, values, causal=False, block=8)
    b = reduce_rows("softmax", P.DotProduct(), 4.0, qf, kf, bias, values, causal=False, block=64)
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_operator_tiled_equals_direct_multihead_causal(key):
    x = P.clouds.sphere_uniform(key, 50, 4)
    kw = jax.random.split(key)[1]
    w = jax.random.uniform(kw, (50,), minval=0.1)
    w = w / jnp.sum(w)
    opts = dict(heads=3, d_k=2, beta=3.0, causal=True)
    tiled = P.Attention.random(key, 4, block_size=8, **opts)
    direct = P.Attention.random(key, 4, block_size=1000, **opts)
    _close(tiled(x, w), direct(x, w))
    g = lambda att: jax.grad(lambda x: jnp.sum(jnp.sin(att(x, w))))(x)  # noqa: E731
    _close(g(tiled), g(direct))


def test_tile_table_is_measured_and_total():
    # every dtype ends with an unbounded entry, so every size has a tile
    for name in ("float32", "float64"):
        bounds = sorted(b for (kind, b) in _tiled.TILES if kind == name)
        assert bounds[-1] >= 1 << 62
    assert _tiled.tile_size(10**9, jnp.float32) >= 1
    assert _tiled.tile_size(100, jnp.float64) >= 1


_MEMORY_PROBE = """
import json, sys, jax, jax.numpy as jnp, particles as P
kind = sys.argv[1]
flow = P.AttentionFlow(P.Attention.identity(3, beta=4.0), P.Sphere())
field = lambda x: flow(0.0, x, None)
x = P.clouds.sphere_uniform(jax.random.key(0), 65536, 3)
f = {
    "grad": jax.grad(lambda x: jnp.sum(field(x))),
    "vjp": lambda x: jax.vjp(field, x)[1](x)[0],
    "jvp": lambda x: jax.jvp(field, (x,), (x,))[1],
}[kind]
compiled = jax.jit(f).lower(x).compile()
jax.block_until_ready(x)

def status(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024

before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:  # 5: reset the peak resident set
    fh.write("5")
jax.block_until_ready(compiled(x))
print(json.dumps({"temp": compiled.memory_analysis().temp_size_in_bytes,
                  "peak_rise": status("VmHWM") - before}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["grad", "vjp", "jvp"])
def test_derivative_memory_at_65536_under_one_gib(kind):
    # run in a fresh process, so the peak resident set is this derivative's alone; the
    # stored n x n exponentials would take 16 GiB
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(P.__file__).parent.parent))
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, kind],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    assert mem["temp"] < 1 << 30
    assert mem["peak_rise"] < 1 << 30
