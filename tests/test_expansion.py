"""The harmonic expansion of attention on S^1 and S^2 against the direct sum."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import eval_legendre, ive, spherical_in

import particles as P
from particles.attention import _harmonics as H
from particles.attention._expansion import _feature_dim


def _cloud(key, n, d, dtype=jnp.float64):
    return P.clouds.sphere_uniform(key, n, d).astype(dtype)


def _weights(key, n):
    w = jax.random.uniform(key, (n,)) ** 2
    w = w.at[::7].set(0.0)  # removed tokens
    return w / jnp.sum(w)


@eqx.filter_jit
def _field(attention, x, w=None):
    return attention(x, w)


@eqx.filter_jit
def _cross(attention, queries, context):
    return attention.cross(queries, context)


@eqx.filter_jit
def _estimate(attention, x, w=None):
    return attention.error_estimate(x, w)


def _rel(v, ref):
    return float(jnp.max(jnp.linalg.norm(v - ref, axis=1)) / jnp.max(jnp.linalg.norm(ref, axis=1)))


@pytest.mark.parametrize("z", [1e-3, 0.5, 4.0, 9.0, 36.0, 100.0])
def test_bessel_coefficients_match_scipy(z):
    order = 40
    start = H.start_degree(order, z)
    c, tail = H.Sphere2.coefficients(jnp.array([z]), order, start)
    ref = 4 * np.pi * spherical_in(np.arange(order + 1), z) * np.exp(-z)
    np.testing.assert_allclose(np.asarray(c[0]), ref, rtol=1e-12)
    c, _ = H.Circle.coefficients(jnp.array([z]), order, start)
    ref = ive(np.arange(order + 1), z) * np.where(np.arange(order + 1) > 0, 2, 1)
    np.testing.assert_allclose(np.asarray(c[0]), ref, rtol=1e-12)


def test_harmonics_satisfy_the_addition_theorem(key):
    # sum_m Y_lm(x) Y_lm(y) = (2l + 1) / 4 pi P_l(<x, y>), poles included
    x = jnp.concatenate([_cloud(key, 6, 3), jnp.array([[0.0, 0, 1], [0, 0, -1]])])
    y = _cloud(jax.random.fold_in(key, 1), 5, 3)
    order = 20
    features = jax.jit(H.Sphere2.features, static_argnums=1)
    fx, fy = np.asarray(features(x, order)), np.asarray(features(y, order))
    deg = H.Sphere2.degrees(order)
    assert fx.shape == (8, (order + 1) ** 2)
    for l in range(order + 1):  # noqa: E741
        got = fx[:, deg == l] @ fy[:, deg == l].T
        ref = (2 * l + 1) / (4 * np.pi) * eval_legendre(l, np.asarray(x @ y.T))
        np.testing.assert_allclose(np.asarray(got), ref, atol=1e-12)


@pytest.mark.parametrize("basis", [H.Circle, H.Sphere2])
@pytest.mark.parametrize("z", [4.0, 36.0])
def test_truncation_error_is_the_tail_and_falls_geometrically(basis, z):
    # the truncated kernel against e^{z t - z} on a grid of angles: the largest error is the
    # coefficient tail (reached at t = 1), and it falls faster than any geometric rate
    t = np.linspace(-1, 1, 201)
    if basis is H.Circle:
        u = np.stack([t, np.sqrt(1 - t**2)], axis=1)
    else:
        u = np.stack([t, np.sqrt(1 - t**2), 0 * t], axis=1)
    pole = np.eye(basis.dim)[:1]
    # one evaluation at the highest order; lower orders keep the degrees <= L
    top = int(3 * np.sqrt(z)) + 12
    coef, tail = basis.coefficients(jnp.array([z]), top, H.start_degree(top, z))
    assert float(tail[0]) == pytest.approx(basis.numpy_tail(z, top), rel=1e-9, abs=1e-300)
    deg = basis.degrees(top)
    terms = np.asarray(basis.features(jnp.asarray(u), top) * coef[:, deg])
    terms = terms * np.asarray(basis.features(jnp.asarray(pole), top))
    errors = []
    for order in range(2, top + 1, 2):
        approx = terms[:, deg <= order].sum(axis=1)
        err = np.max(np.abs(approx - np.exp(z * t - z)))
        tail = basis.numpy_tail(z, order)
        assert err <= tail * (1 + 1e-9) + 1e-15
        assert err == pytest.approx(tail, rel=1e-6, abs=1e-15)
        errors.append(err)
    errors = np.array(errors)
    ratios = errors[1:] / errors[:-1]
    big = errors[:-1] > 1e-13
    assert np.all(ratios[big] < 1)
    # past the bandwidth sqrt(z) the ratio per two degrees keeps shrinking (super-geometric)
    tail_ratios = ratios[big][-4:]
    assert np.all(np.diff(tail_ratios) < 0)
    assert tail_ratios[-1] < 0.3


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("tol", [1e-4, 1e-8])
@pytest.mark.parametrize("z", [1.0, 9.0, 36.0])
def test_a_priori_order_is_the_least_meeting_tol(dim, tol, z):
    order = H.order_for(dim, z, tol)
    basis = H.BASES[dim]
    assert basis.numpy_tail(z, order) <= tol
    assert order == 0 or basis.numpy_tail(z, order - 1) > tol
    # the tail grows with z, so the order chosen at z_max holds for every smaller z
    assert all(basis.numpy_tail(s, order) <= tol for s in np.linspace(0.01, z, 17))


GRID = [
    (d, beta, norm, causal, weighted)
    for d in (2, 3)
    for beta in (1.0, 4.0, 9.0, 36.0)
    for norm in ("softmax", "unnormalized")
    for causal in (False, True)
    for weighted in (False, True)
]
# the default suite runs one case per beta and dimension, covering each option twice
QUICK = (
    [(d, 1.0, "softmax", False, False) for d in (2, 3)]
    + [(d, 4.0, "unnormalized", False, True) for d in (2, 3)]
    + [(d, 9.0, "softmax", True, True) for d in (2, 3)]
    + [(d, 36.0, "unnormalized", True, False) for d in (2, 3)]
)
CASES = [pytest.param(*case, marks=() if case in QUICK else pytest.mark.slow) for case in GRID]


@pytest.mark.parametrize("d, beta, normalization, causal, weighted", CASES)
def test_expansion_matches_direct_in_float64(key, d, beta, normalization, causal, weighted):
    n = 300
    x = _cloud(key, n, d)
    w = _weights(jax.random.fold_in(key, 2), n) if weighted else None
    opts = dict(
        normalization={"softmax": P.Softmax(), "unnormalized": P.Unnormalized()}[normalization],
        causal=causal,
    )
    direct = P.Attention.identity(d, beta, **opts)
    # block 64: several blocks and a padded last one
    fast = P.Attention.identity(d, beta, evaluation=P.Expansion(1e-14), block_size=64, **opts)
    assert _rel(_field(fast, x, w), _field(direct, x, w)) < 1e-10
    est = _estimate(fast, x, w)
    scale = float(jnp.max(jnp.linalg.norm(_field(direct, x, w), axis=1)))
    assert np.all(np.isfinite(est)) and float(jnp.max(est)) < 1e-9 * scale


@pytest.mark.parametrize("beta", [4.0, 9.0, 36.0])
@pytest.mark.parametrize("d", [2, 3])
def test_float32_field_is_within_1e_4(key, beta, d, float32):
    x = _cloud(key, 2048, d, jnp.float32)
    direct = P.Attention.identity(d, beta)
    fast = P.Attention.identity(d, beta, evaluation=P.Expansion(1e-6))
    v = _field(fast, x)
    assert v.dtype == jnp.float32
    assert _rel(v, _field(direct, x)) < 1e-4


@pytest.mark.parametrize("normalization", [P.Softmax(), P.Unnormalized()])
@pytest.mark.parametrize("causal", [False, True])
def test_a_posteriori_estimate_bounds_the_error(key, normalization, causal):
    x = _cloud(key, 400, 3)
    w = _weights(jax.random.fold_in(key, 3), 400)
    opts = dict(normalization=normalization, causal=causal)
    exact = _field(P.Attention.identity(3, 9.0, **opts), x, w)
    for order in (3, 10):
        fast = P.Attention.identity(3, 9.0, evaluation=P.Expansion(order=order), **opts)
        err = jnp.linalg.norm(_field(fast, x, w) - exact, axis=1)
        est = _estimate(fast, x, w)
        # (plus rounding: the first causal block is summed exactly, its bound is zero)
        rounding = 1e-12 * float(jnp.max(jnp.linalg.norm(exact, axis=1)))
        assert bool(jnp.all(err <= est + rounding))
        # and it is not vacuous: within a factor 1000 of the largest error
        assert float(jnp.max(est)) < 1e3 * float(jnp.max(err))


def test_general_q_k_multihead_and_l2_on_the_sphere(key):
    kq, kx, kc = jax.random.split(key, 3)
    x = _cloud(kx, 128, 3)
    # d_k = 5 > d = 3: features K^T Q x and y (the change of variables)
    for kernel in (P.DotProduct(), P.L2()):
        direct = P.Attention.random(kq, 3, heads=2, d_k=5, beta=6.0, kernel=kernel)
        fast = P.Attention(
            direct.Q, direct.K, direct.V, 6.0, kernel=kernel, evaluation=P.Expansion(1e-14)
        )
        assert _rel(_field(fast, x), _field(direct, x)) < 1e-10
        ctx = _cloud(kc, 180, 3)
        assert _rel(_cross(fast, x, ctx), _cross(direct, x, ctx)) < 1e-10
    # d_k = 2 < d = 3 with K an isometry onto the plane: key features on a circle
    Q = jax.random.normal(kq, (2, 3))
    K = jnp.eye(3)[:2] * 1.5
    xs = x.at[:, 2].set(0.0)
    xs = xs / jnp.linalg.norm(xs, axis=1, keepdims=True)
    direct = P.Attention(Q, K, jnp.eye(3), 2.0)
    fast = P.Attention(Q, K, jnp.eye(3), 2.0, evaluation=P.Expansion(1e-14))
    assert _feature_dim(fast.Q) == 2
    assert _rel(_field(fast, xs), _field(direct, xs)) < 1e-10


def test_jit_vmap_and_grad_agree_with_direct(key):
    xs = jnp.stack([_cloud(jax.random.fold_in(key, i), 128, 3) for i in range(3)])
    direct = P.Attention.identity(3, 4.0)
    fast = P.Attention.identity(3, 4.0, evaluation=P.Expansion(1e-14))
    batched = jax.jit(jax.vmap(fast))(xs)
    assert _rel(batched.reshape(-1, 3), jax.vmap(direct)(xs).reshape(-1, 3)) < 1e-10

    def loss(attention, x):
        return jnp.sum(attention.unchecked(x) * jnp.sin(x))

    # Gradients in the tokens' tangent directions (the expansion models the keys on their
    # sphere, so derivatives off it are those of the kernel restricted to the sphere), and
    # in beta and Q, K (which act on the query side)
    x = xs[0]
    tangent = P.Sphere().tangent(x, jax.random.normal(jax.random.fold_in(key, 9), x.shape))
    jd = jax.jvp(direct.unchecked, (x,), (tangent,))[1]
    jf = jax.jvp(fast.unchecked, (x,), (tangent,))[1]
    np.testing.assert_allclose(np.asarray(jf), np.asarray(jd), atol=1e-9)
    gx_d = P.Sphere().tangent(x, jax.grad(loss, argnums=1)(direct, x))
    gx_f = P.Sphere().tangent(x, jax.grad(loss, argnums=1)(fast, x))
    np.testing.assert_allclose(np.asarray(gx_f), np.asarray(gx_d), atol=1e-9)
    ga_d, ga_f = jax.grad(loss)(direct, x), jax.grad(loss)(fast, x)
    np.testing.assert_allclose(float(ga_f.beta), float(ga_d.beta), rtol=1e-8)
    np.testing.assert_allclose(np.asarray(ga_f.Q), np.asarray(ga_d.Q), atol=1e-9)
    np.testing.assert_allclose(np.asarray(ga_f.K), np.asarray(ga_d.K), atol=1e-9)
    # a token at a pole: the polynomial harmonics keep the gradient finite
    pole = x.at[0].set(jnp.array([0.0, 0.0, 1.0]))
    assert bool(jnp.all(jnp.isfinite(jax.grad(loss, argnums=1)(fast, pole))))


def test_beta_changed_after_building_is_caught_by_the_estimate(key):
    x = _cloud(key, 256, 3)
    fast = P.Attention.identity(3, 4.0, evaluation=P.Expansion(1e-8))
    hot = eqx.tree_at(lambda a: a.beta, fast, jnp.asarray(36.0))
    exact = P.Attention.identity(3, 36.0)(x)
    err = float(jnp.max(jnp.linalg.norm(hot(x) - exact, axis=1)))
    assert float(jnp.max(hot.error_estimate(x))) >= err > 1e-3


def test_auto_picks_by_size(key):
    small = _cloud(key, 64, 3)
    auto = P.Attention.identity(3, 4.0, evaluation=P.Auto(1e-6))
    assert isinstance(auto.evaluation, P.Auto) and auto.evaluation.order == 12
    args = (auto.Q[0], small, small, jnp.zeros((64, 3)), False, None)
    assert isinstance(auto.evaluation._choice(*args), P.Direct)
    big = jnp.zeros((1 << 14, 3))
    args = (auto.Q[0], big, big, jnp.zeros((1 << 14, 3)), False, None)
    assert isinstance(auto.evaluation._choice(*args), P.Expansion)
    np.testing.assert_array_equal(auto(small), P.Attention.identity(3, 4.0)(small))
    # where no expansion applies, Auto is Direct
    sink = P.Attention.identity(3, 4.0, normalization=P.Sinkhorn(), evaluation=P.Auto())
    assert sink.evaluation == P.Direct()
    assert P.Attention.identity(5, 4.0, evaluation=P.Auto()).evaluation == P.Direct()


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match=r"^Expansion does not apply: Sinkhorn normalization"):
        P.Attention.identity(3, 1.0, normalization=P.Sinkhorn(), evaluation=P.Expansion())
    with pytest.raises(ValueError, match=r"min\(d, d_k\) = 4; the expansion needs 2"):
        P.Attention.identity(4, 1.0, evaluation=P.Expansion())
    with pytest.raises(ValueError, match="Expansion tol must be a number in"):
        P.Expansion(tol=0.0)
    with pytest.raises(ValueError, match="Expansion order must be a non-negative int"):
        P.Expansion(order=-1)
    with pytest.raises(TypeError, match="evaluation must be an AbstractEvaluation"):
        P.Attention.identity(3, 1.0, evaluation="expansion")
    with pytest.raises(ValueError, match="no expansion of order <= 256 reaches tol=1e-12"):
        P.Attention.identity(3, 3000.0, evaluation=P.Expansion(1e-12))

    def build(beta):
        return P.Attention.identity(3, beta, evaluation=P.Expansion()).beta

    with pytest.raises(ValueError, match=r"chooses its order from beta, Q and K when the"):
        jax.vmap(build)(jnp.array([1.0, 2.0]))
    # with an explicit order a traced beta is fine
    out = jax.vmap(
        lambda b: P.Attention.identity(3, b, evaluation=P.Expansion(order=8))(
            _cloud(jax.random.key(0), 32, 3)
        )
    )(jnp.array([1.0, 2.0]))
    assert out.shape == (2, 32, 3)


def test_command_line_names_map_to_evaluations():
    from sims import _options

    assert _options.evaluation("direct") == P.Direct()
    assert _options.evaluation("expansion") == P.Expansion(1e-6)
    assert _options.evaluation("auto") == P.Auto(1e-6)
    with pytest.raises(ValueError, match="evaluation must be one of direct, expansion, auto"):
        _options.evaluation("fmm")
