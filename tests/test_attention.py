"""Attention operators: invariants, closed forms, blocked evaluation, errors."""

import dataclasses
import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particles as P

KERNELS = {"dot": P.DotProduct(), "l2": P.L2()}
NORMALIZATIONS = {
    "softmax": P.Softmax(),
    "unnormalized": P.Unnormalized(),
    "sinkhorn": P.Sinkhorn(),
}
OPTIONS = [
    dict(kernel=KERNELS[k], normalization=NORMALIZATIONS[nz], causal=c)
    for k, nz, c in itertools.product(KERNELS, NORMALIZATIONS, (False, True))
    if not (c and nz == "sinkhorn")
]


def _cloud(key, n=12, d=3):
    return jax.random.normal(key, (n, d))


def _weights(key, n):
    w = jax.random.uniform(key, (n,), minval=0.2, maxval=1.0)
    return w / w.sum()


def _naive(attn, x, w):
    """Dense reference straight from the definition (float64 NumPy)."""
    x, Q, K, V = (np.asarray(a, dtype=np.float64) for a in (x, attn.Q[0], attn.K[0], attn.V[0]))
    beta = float(attn.beta)
    n = len(x)
    w = np.full(n, 1 / n) if w is None else np.asarray(w, dtype=np.float64)
    q, k = x @ Q.T, x @ K.T
    if isinstance(attn.kernel, P.DotProduct):
        s = beta * q @ k.T
    else:
        s = -0.5 * beta * ((q[:, None] - k[None]) ** 2).sum(-1)
    kern = np.exp(s) * w[None, :]
    if attn.causal:
        kern = np.tril(kern)
    if isinstance(attn.normalization, P.Softmax):
        kern = kern / kern.sum(1, keepdims=True)
    return kern @ (x @ V.T)


@pytest.mark.parametrize("kernel", ["dot", "l2"])
@pytest.mark.parametrize("normalization", ["softmax", "unnormalized"])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_definition(key, kernel, normalization, causal):
    k1, k2, k3 = jax.random.split(key, 3)
    attn = P.Attention.random(
        k1,
        3,
        d_k=2,
        beta=0.7,
        kernel=KERNELS[kernel],
        normalization=NORMALIZATIONS[normalization],
        causal=causal,
    )
    x, w = _cloud(k2), _weights(k3, 12)
    np.testing.assert_allclose(attn(x, w), _naive(attn, x, w), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("weighted", [False, True])
def test_blocked_equals_direct(key, opts, weighted):
    k1, k2, k3 = jax.random.split(key, 3)
    n = 37  # not a multiple of the block: the remainder block is exercised
    direct = P.Attention.random(k1, 3, beta=1.5, **opts)
    blocked = dataclasses.replace(direct, block_size=8)
    x, w = _cloud(k2, n), (_weights(k3, n) if weighted else None)
    np.testing.assert_allclose(blocked(x, w), direct(x, w), rtol=2e-6, atol=2e-6)


def test_large_cloud_picks_blocks_and_agrees(key):
    x = P.clouds.sphere_uniform(key, 3000, 3)
    auto = P.Attention.identity(3, beta=4.0)  # 3000^2 pairs: above the direct threshold
    direct = P.Attention.identity(3, beta=4.0, block_size=3000)
    np.testing.assert_allclose(auto(x), direct(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["dot", "l2"])
@pytest.mark.parametrize("normalization", ["softmax", "sinkhorn"])
def test_rows_sum_to_one(key, kernel, normalization):
    k1, k2, k3 = jax.random.split(key, 3)
    attn = P.Attention.random(
        k1, 3, kernel=KERNELS[kernel], normalization=NORMALIZATIONS[normalization]
    )
    A = attn.matrix(_cloud(k2), _weights(k3, 12))[0]
    np.testing.assert_allclose(A.sum(axis=1), 1.0, rtol=1e-5)
    assert jnp.all(A >= 0)


def test_sinkhorn_plan_has_both_marginals(key):
    k1, k2, k3 = jax.random.split(key, 3)
    attn = P.Attention.random(k1, 3, normalization=P.Sinkhorn(200))
    x, w = _cloud(k2), _weights(k3, 12)
    plan = w[:, None] * attn.matrix(x, w)[0]  # pi_ij = w_i A_ij
    np.testing.assert_allclose(plan.sum(axis=1), w, rtol=1e-12)
    np.testing.assert_allclose(plan.sum(axis=0), w, rtol=1e-9)


def test_sinkhorn_symmetric_kernel_uniform_is_doubly_stochastic(key):
    x = _cloud(key)
    A = P.Attention.identity(3, normalization=P.Sinkhorn(300)).matrix(x)[0]
    np.testing.assert_allclose(A.sum(0), 1, rtol=1e-9)
    np.testing.assert_allclose(A, A.T, atol=1e-9)  # symmetric kernel: symmetric plan


def test_softmax_stable_at_beta_100():
    x = P.clouds.sphere_uniform(jax.random.key(3), 20, 3)
    attn64 = P.Attention.identity(3, beta=100.0)
    ref = _naive(attn64, x, None)  # float64: exp(100) is representable
    with jax.enable_x64(False):
        x32 = jnp.asarray(x, jnp.float32)
        v = P.Attention.identity(3, beta=100.0)(x32)
    assert v.dtype == jnp.float32 and jnp.all(jnp.isfinite(v))
    np.testing.assert_allclose(v, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opts", [o for o in OPTIONS if not o["causal"]], ids=str)
def test_permutation_equivariance(key, opts):
    k1, k2, k3 = jax.random.split(key, 3)
    attn = P.Attention.random(k1, 3, **opts)
    x, w = _cloud(k2), _weights(k3, 12)
    perm = jax.random.permutation(key, 12)
    np.testing.assert_allclose(attn(x[perm], w[perm]), attn(x, w)[perm], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("normalization", ["softmax", "unnormalized", "sinkhorn"])
@pytest.mark.parametrize("kernel", ["dot", "l2"])
def test_weight_equals_repeated_token(key, normalization, kernel):
    k1, k2 = jax.random.split(key)
    attn = P.Attention.random(
        k1,
        3,
        kernel=KERNELS[kernel],
        normalization={**NORMALIZATIONS, "sinkhorn": P.Sinkhorn(300)}[normalization],
    )
    x = _cloud(k2, 6)
    doubled = jnp.concatenate([x, x[:1]])  # token 0 twice among 7 uniform tokens
    w = jnp.array([2, 1, 1, 1, 1, 1]) / 7.0
    np.testing.assert_allclose(attn(x, w), attn(doubled)[:6], rtol=1e-8, atol=1e-10)


def test_zero_weight_removes_token(key):
    k1, k2 = jax.random.split(key)
    attn = P.Attention.random(k1, 3)
    x = _cloud(k2, 5)
    w = jnp.array([0.25, 0.25, 0.0, 0.25, 0.25])
    keep = jnp.array([0, 1, 3, 4])
    np.testing.assert_allclose(attn(x, w)[keep], attn(x[keep]), rtol=1e-12)


def test_causal_first_token_sees_only_itself(key):
    k1, k2 = jax.random.split(key)
    attn = P.Attention.random(k1, 3, causal=True)
    x = _cloud(k2)
    A = attn.matrix(x)[0]
    np.testing.assert_allclose(A[0], jnp.eye(12)[0], atol=0)
    np.testing.assert_allclose(attn(x)[0], attn.V[0] @ x[0], rtol=1e-6)
    assert jnp.all(jnp.triu(A, 1) == 0)


def test_one_head_equals_single_head(key):
    k1, k2 = jax.random.split(key)
    single = P.Attention.random(k1, 3, d_k=2, beta=2.0)
    stacked = P.Attention(single.Q, single.K, single.V, 2.0)  # (1, d_k, d): one head
    flat = P.Attention(single.Q[0], single.K[0], single.V[0], 2.0)  # (d_k, d): one head
    assert single.Q.shape == stacked.Q.shape == flat.Q.shape == (1, 2, 3)
    x = _cloud(k2)
    np.testing.assert_allclose(flat(x), single(x), rtol=1e-6)
    np.testing.assert_allclose(flat.matrix(x), single.matrix(x), rtol=1e-6)


def test_multi_head_is_sum_of_heads(key):
    k1, k2 = jax.random.split(key)
    multi = P.Attention.random(k1, 3, heads=4, beta=1.3)
    x = _cloud(k2)
    total = sum(multi.head(h)(x) for h in range(4))
    np.testing.assert_allclose(multi(x), total, rtol=1e-5, atol=1e-6)


def test_cross_attention_on_own_cloud_is_self_attention(key):
    k1, k2, k3 = jax.random.split(key, 3)
    attn = P.Attention.random(k1, 3, kernel=P.L2())
    x, w = _cloud(k2), _weights(k3, 12)
    np.testing.assert_allclose(attn.cross(x, x, w), attn(x, w), rtol=1e-6)
    grid = jax.random.normal(k3, (50, 3))
    assert attn.cross(grid, x, w).shape == (50, 3)


def test_jit_vmap_grad_over_parameters(key):
    x = P.clouds.sphere_uniform(key, 16, 3)
    betas = jnp.array([0.5, 1.0, 4.0])

    @jax.jit
    def field(beta):
        return P.Attention.identity(3, beta)(x)

    batched = jax.vmap(field)(betas)
    for b, v in zip(betas, batched, strict=True):
        np.testing.assert_allclose(v, P.Attention.identity(3, b)(x), rtol=1e-5, atol=1e-6)

    # grad with respect to an array leaf, against a central finite difference
    attn = P.Attention.identity(3, 2.0)

    def loss(a):
        return jnp.sum(a(x) ** 2)

    g = eqx.filter_grad(loss)(attn)
    h = 1e-3
    fd = (
        loss(eqx.tree_at(lambda a: a.beta, attn, 2.0 + h))
        - loss(eqx.tree_at(lambda a: a.beta, attn, 2.0 - h))
    ) / (2 * h)
    np.testing.assert_allclose(g.beta, fd, rtol=2e-3)


def test_vmap_over_clouds(key):
    xs = jax.random.normal(key, (4, 10, 3))
    attn = P.Attention.random(key, 3)
    batched = jax.vmap(attn)(xs)
    np.testing.assert_allclose(batched[2], attn(xs[2]), rtol=1e-6)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: P.Attention.identity(3, beta=0.0), "beta must be > 0"),
        (lambda: P.Attention.identity(3, beta=-1.0), "beta must be > 0"),
        (
            lambda: P.Attention.identity(3, normalization=P.Sinkhorn(), causal=True),
            "Sinkhorn normalization has no causal form",
        ),
        (lambda: P.Sinkhorn(0), "Sinkhorn iters must be a positive int"),
        (lambda: P.Attention.identity(3, block_size=0), "block_size must be a positive int"),
        (lambda: P.Attention(jnp.eye(3), jnp.eye(2, 3), jnp.eye(3)), r"K must have shape"),
        (lambda: P.Attention(jnp.eye(3), jnp.eye(3), jnp.eye(2)), r"V must have shape"),
        (lambda: P.Attention(jnp.ones(3), jnp.eye(3), jnp.eye(3)), r"Q must have shape"),
        (
            lambda: P.Attention(jnp.ones((2, 3, 3)), jnp.ones((2, 3, 3)), jnp.ones((3, 3, 3))),
            r"V must have shape \(3, 3\) per head, 2 heads",
        ),
    ],
)
def test_bad_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: P.Attention.identity(3, kernel="cosine"),
            r"kernel must be an AbstractKernel \(e.g. DotProduct\(\), L2\(\)\); got 'cosine'",
        ),
        (
            lambda: P.Attention.identity(3, normalization="max"),
            "normalization must be an AbstractNormalization",
        ),
    ],
)
def test_options_must_be_objects(build, message):
    with pytest.raises(TypeError, match=message):
        build()


@pytest.mark.parametrize(
    "x, w, message",
    [
        (jnp.ones(3), None, r"x must have shape \(n, d\)"),
        (jnp.ones((4, 2)), None, "x has dimension 2 but the attention acts on dimension 3"),
        (jnp.full((4, 3), jnp.nan), None, "x contains NaN or inf"),
        (jnp.ones((4, 3)), jnp.ones(4), "weights must sum to 1"),
        (
            jnp.ones((4, 3)),
            jnp.array([0.5, 0.5, 0.5, -0.5]),
            "weights must be finite and nonnegative",
        ),
        (jnp.ones((4, 3)), jnp.ones(3) / 3, r"weights must have shape \(4,\)"),
        (jnp.arange(12).reshape(4, 3), None, "x must be a floating-point array"),
    ],
)
def test_bad_input(x, w, message):
    with pytest.raises(ValueError, match=message):
        P.Attention.identity(3)(x, w)


def test_cross_rejects_causal_and_sinkhorn():
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="causal attention has no cross form"):
        P.Attention.identity(3, causal=True).cross(x, x)
    with pytest.raises(ValueError, match="Sinkhorn normalization needs one measure"):
        P.Attention.identity(3, normalization=P.Sinkhorn()).cross(x, x)


def test_value_checks_survive_jit():
    attn = P.Attention.identity(3)
    with pytest.raises(Exception, match="weights must sum to 1"):
        eqx.filter_jit(attn)(jnp.ones((4, 3)), jnp.ones(4))


class _Skew(P.AbstractKernel):
    """An asymmetric logit s(q, k) = beta q_0 k_1: s(q, k) != s(k, q)."""

    def log_kernel(self, beta, q, k):
        return beta * q[0] * k[1]


def test_sinkhorn_plan_has_both_marginals_for_an_asymmetric_kernel(key):
    # the column update must reduce s(q_i, k_j) over i, not s(k_j, q_i)
    k1, k2 = jax.random.split(key)
    x, w = _cloud(k1, 9), _weights(k2, 9)
    attn = P.Attention.identity(3, 1.5, kernel=_Skew(), normalization=P.Sinkhorn(400))
    plan = w[:, None] * attn.matrix(x, w)[0]
    np.testing.assert_allclose(plan.sum(axis=1), w, rtol=1e-12)
    np.testing.assert_allclose(plan.sum(axis=0), w, rtol=1e-9)
