"""Regularity of attention: Lipschitz constants against dense Jacobians and the bounds,
Wasserstein stability, mis-specified inputs, and the two experiments at smoke size."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particles as P
from particles import metrics as M
from particles import regularity as R
from particles import wasserstein as W

# ---------------------------------------------------------------------------------------
# Matrix-free norm against the dense Jacobian
# ---------------------------------------------------------------------------------------

VARIANTS = {
    "softmax": lambda k: P.Attention.random(k, 3, beta=1.5),
    "unnormalized": lambda k: P.Attention.random(k, 3, beta=1.5, normalization=P.Unnormalized()),
    "l2": lambda k: P.Attention.random(k, 3, beta=1.5, kernel=P.L2()),
    "causal": lambda k: P.Attention.random(k, 3, beta=1.5, causal=True),
    "multihead": lambda k: P.Attention.random(k, 3, heads=2, beta=1.5),
    "sinkhorn": lambda k: P.Attention.random(k, 3, beta=1.5, normalization=P.Sinkhorn()),
    "sphere": lambda k: P.AttentionFlow(P.Attention.random(k, 3, beta=1.5), P.Sphere()),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_matrix_free_norm_equals_dense_spectral_norm(key, variant):
    model = VARIANTS[variant](key)
    x = P.clouds.ball_uniform(jax.random.key(7), 5, 3, 1.5)
    if variant == "sphere":
        x = P.Sphere().retract(x)
    est = R.lipschitz(model, x, tol=1e-10)
    dense = R.lipschitz_dense(model, x)
    assert bool(est.converged) and int(est.iterations) < 60
    assert abs(float(est.value) / float(dense) - 1) < 1e-5
    # the returned vector is the top right singular vector: |J v| = sigma_max
    J = R.jacobian(model, x)
    assert np.linalg.norm(J @ np.asarray(est.vector).ravel()) == pytest.approx(float(dense), 1e-6)


def test_power_iteration_agrees_and_lobpcg_needs_far_fewer_iterations():
    # The adversarial cloud with n = 8 has two top singular values 3.00 and 2.80, a ratio
    # of 0.87 for G = J^T J: power iteration needs ~170 steps for 1e-10, LOBPCG ~7.
    attention = P.Attention.identity(3, 1.0)
    x = R.adversarial_cloud(attention, 8, 5.0, offset=0.5)
    dense = float(R.lipschitz_dense(attention, x))
    power = R.lipschitz(attention, x, method="power", tol=1e-10)
    lobpcg = R.lipschitz(attention, x, tol=1e-10)
    assert bool(power.converged) and bool(lobpcg.converged)
    assert float(power.value) == pytest.approx(dense, rel=1e-8)
    assert float(lobpcg.value) == pytest.approx(dense, rel=1e-8)
    assert int(lobpcg.iterations) < 15 < 100 < int(power.iterations)


def test_lipschitz_reports_non_convergence_within_max_iters():
    attention = P.Attention.identity(3, 1.0)
    x = R.adversarial_cloud(attention, 8, 5.0, offset=0.5)
    est = R.lipschitz(attention, x, method="power", tol=1e-12, max_iters=5)
    assert int(est.iterations) == 5 and not bool(est.converged)
    assert float(est.residual) > 1e-12


def test_lipschitz_works_under_jit_and_vmap():
    attention = P.Attention.identity(3, 1.0)
    offsets = jnp.array([0.3, 0.5, 0.7])
    clouds = jax.vmap(lambda a: R.adversarial_cloud(attention, 8, 5.0, offset=a))(offsets)
    batched = jax.jit(jax.vmap(lambda x: R.lipschitz(attention, x, tol=1e-10).value))(clouds)
    one = [float(R.lipschitz(attention, x, tol=1e-10).value) for x in clouds]
    np.testing.assert_allclose(np.asarray(batched), one, rtol=1e-8)


def test_zero_map_has_constant_zero():
    zero = P.Attention(jnp.eye(2), jnp.eye(2), jnp.zeros((2, 2)), 1.0)
    est = R.lipschitz(zero, jnp.ones((3, 2)))
    assert float(est.value) == 0.0 and bool(est.converged)


# ---------------------------------------------------------------------------------------
# The sqrt(n) law and the bounds
# ---------------------------------------------------------------------------------------


def test_adversarial_cloud_grows_like_sqrt_n_below_the_bound():
    # Q = K = V = I, d = 3, beta = 1, R = 5, leader at R u, the others at R u / 2: logit gap
    # beta R^2 / 4 = 6.25, so the others attend to the leader with p = 1/(1 + (n-1)e^-6.25),
    # p > 0.97 for n <= 16. Measured: 1.4214, 2.0453, 2.9998, 4.5379 for n = 2, 4, 8, 16:
    # the log-log fit against n over 2 <= n <= 16 has exponent 0.557, and against the n - 1
    # followers over 4 <= n <= 16 exponent 0.499.
    attention = P.Attention.identity(3, 1.0)
    ns = np.array([2, 4, 8, 16])
    clouds = [R.adversarial_cloud(attention, int(n), 5.0, offset=0.5) for n in ns]
    values = np.array([float(R.lipschitz(attention, x, tol=1e-10).value) for x in clouds])
    np.testing.assert_allclose(values, [1.4214149, 2.0453019, 2.9997871, 4.5378906], rtol=1e-6)
    exponent, _ = M.fit_power_law(ns, values)
    assert 0.5 < exponent < 0.6
    followers, _ = M.fit_power_law(ns[1:] - 1, values[1:])
    assert abs(followers - 0.5) < 0.01
    assert np.all(values <= np.asarray(R.softmax_bound(attention, ns, 5.0)))
    assert np.all(values <= np.asarray(R.castin_bound(attention, ns, 5.0)))
    # one token attended by all: the leader's column of the attention matrix sums to ~n - 1
    column = float(jnp.sum(attention.matrix(clouds[-1])[0, 1:, 0]))
    assert column > 0.97 * 15


def test_adversarial_cloud_default_offset_and_causal_stay_below_bound():
    attention = P.Attention.identity(3, 1.0)
    causal = P.Attention.identity(3, 1.0, causal=True)
    x = R.adversarial_cloud(attention, 16, 5.0)
    assert float(jnp.max(jnp.linalg.norm(x, axis=-1))) == pytest.approx(5.0)
    bound = float(R.softmax_bound(attention, 16, 5.0))
    best = float(R.lipschitz(attention, x, tol=1e-10).value)
    assert best <= bound and float(R.lipschitz(causal, x).value) <= bound
    # the default offset realises the gap of best_gap(16) (p* = 0.76), whose constant 6.28
    # beats the 4.54 of the maximal gap at n = 16
    max_gap = R.adversarial_cloud(attention, 16, 5.0, offset=0.5)
    assert best > 1.3 * float(R.lipschitz(attention, max_gap, tol=1e-10).value)


@pytest.mark.slow
def test_bounds_hold_on_random_clouds_of_every_variant(key):
    kq, kk, kv = jax.random.split(key, 3)
    Q = jax.random.normal(kq, (3, 3)) / math.sqrt(3)
    K = jax.random.normal(kk, (3, 3)) / math.sqrt(3)
    V = jax.random.normal(kv, (3, 3)) / math.sqrt(3)
    models = {
        "softmax": P.Attention(Q, K, V, 2.0),
        "causal": P.Attention(Q, K, V, 2.0, causal=True),
        "unnormalized": P.Attention(Q, K, V, 2.0, normalization=P.Unnormalized()),
        "multihead": P.Attention(jnp.stack([Q, K]), jnp.stack([K, Q]), jnp.stack([V, -V]), 2.0),
        "sphere": P.AttentionFlow(P.Attention(Q, K, V, 2.0), P.Sphere()),
    }
    radius, n = 2.0, 12
    clouds = jax.vmap(lambda k: P.clouds.ball_uniform(k, n, 3, radius))(jax.random.split(key, 4))
    for name, model in models.items():
        xs = P.Sphere().retract(clouds) if name == "sphere" else clouds
        values = jax.vmap(lambda x, model=model: R.lipschitz(model, x).value)(xs)
        bound = R.lipschitz_bound(model, n, None if name == "sphere" else radius)
        assert np.all(np.asarray(values) <= float(bound)), name


def _tied_l2(key):
    kq, ku = jax.random.split(key)
    Q = jax.random.normal(kq, (3, 3)) / math.sqrt(3)
    U = jax.random.normal(ku, (3, 3)) / math.sqrt(3)
    return P.Attention(Q, Q, U @ Q, 1.0, kernel=P.L2())


def test_l2_attention_stays_below_the_kim_type_bound_at_every_scale(key):
    # Tied keys K = Q and values V = U Q: L2 attention is globally Lipschitz. Clouds of
    # radius 0.01 to 100 all stay below the bound, which does not depend on the radius.
    l2 = _tied_l2(key)
    n = 8
    bound = float(R.l2_bound(l2, n))
    radii = jnp.geomspace(0.01, 100.0, 9)
    x0 = P.clouds.ball_uniform(key, n, 3, 1.0)
    values = np.asarray(jax.vmap(lambda r: R.lipschitz(l2, x0 * r).value)(radii))
    assert np.all(values <= bound)
    assert values.max() > 1.2 * values.min()  # the constant does depend on the cloud


@pytest.mark.slow
def test_searched_l2_clouds_stay_below_the_kim_type_bound(key):
    l2 = _tied_l2(key)
    x0 = P.clouds.ball_uniform(key, 8, 3, 3.0)
    start = float(R.lipschitz(l2, x0).value)
    found = R.worst_cloud(l2, x0, 10.0, steps=60, key=key)
    value = float(R.lipschitz(l2, found.cloud).value)
    assert float(found.value) > start  # the search finds worse clouds
    assert float(found.value) <= value * (1 + 1e-5)  # a Rayleigh quotient: below sigma_max
    assert value <= float(R.l2_bound(l2, 8))
    assert float(jnp.max(jnp.linalg.norm(found.clouds, axis=-1))) <= 10.0 * (1 + 1e-6)


def test_dot_product_constant_grows_without_bound_with_the_radius():
    # x = (R u, -R u, 0): the middle token attends 1/3 to each, so the column of the
    # Jacobian for moving it along u is (1/3 + (2/3) beta R^2) u exactly (Q = K = V = I):
    # the constant is at least that, and grows like R^2. L2 attention on the same clouds
    # stays below its n-independent-of-R bound.
    u = jnp.array([0.0, 0.0, 1.0])
    radii = jnp.array([1.0, 2.0, 4.0, 8.0, 16.0])
    clouds = jax.vmap(lambda r: jnp.stack([r * u, -r * u, 0 * u]))(radii)
    dot = P.Attention.identity(3, 1.0)
    l2 = P.Attention.identity(3, 1.0, kernel=P.L2())
    values = np.asarray(jax.vmap(lambda x: R.lipschitz(dot, x, tol=1e-10).value)(clouds))
    lower = 1 / 3 + 2 / 3 * np.asarray(radii) ** 2
    assert np.all(values >= lower * (1 - 1e-9))
    exponent, _ = M.fit_power_law(np.asarray(radii)[2:], values[2:])
    assert abs(exponent - 2) < 0.05
    l2_values = np.asarray(jax.vmap(lambda x: R.lipschitz(l2, x).value)(clouds))
    assert np.all(l2_values <= float(R.l2_bound(l2, 3)))


def test_kim_bound_is_infinite_without_tied_keys_and_lambert_w_is_exact(key):
    from scipy.special import lambertw

    untied = P.Attention.random(key, 3, kernel=P.L2())
    assert math.isinf(float(R.l2_bound(untied, 10)))
    assert math.isinf(float(R.kim_bound(untied, 10)))
    xs = np.array([0.0, 1e-3, 0.5, 1.0, math.e, 100.0, 1e6])
    np.testing.assert_allclose(np.asarray(R.lambert_w0(xs)), lambertw(xs).real, rtol=1e-6)
    # the Kim-type bound grows like sqrt(n log n): between n = 10^3 and 10^5, slope ~0.6
    l2 = P.Attention.identity(3, 1.0, kernel=P.L2())
    exponent, _ = M.fit_power_law([1e3, 1e5], np.asarray(R.l2_bound(l2, jnp.array([1e3, 1e5]))))
    assert 0.5 < exponent < 0.7


def test_worst_cloud_on_the_sphere_stays_on_it_and_below_the_bound(key):
    flow = P.AttentionFlow(P.Attention.identity(3, 4.0), P.Sphere())
    x0 = P.clouds.sphere_uniform(key, 6, 3)
    found = R.worst_cloud(flow, x0, steps=25, key=key)
    assert float(jnp.max(P.sphere_drift(found.clouds))) < 1e-5
    assert float(found.value) >= float(found.history[0])
    assert float(R.lipschitz(flow, found.cloud).value) <= float(R.lipschitz_bound(flow, 6))


# ---------------------------------------------------------------------------------------
# Wasserstein regularity
# ---------------------------------------------------------------------------------------


def test_wasserstein_matches_closed_forms(key):
    x = P.clouds.ball_uniform(key, 20, 3, 1.0)
    shift = jnp.array([0.3, -0.4, 0.0])
    assert float(W.wasserstein(x, x + shift[None, :], p=1)) == pytest.approx(0.5, rel=1e-6)
    assert float(W.wasserstein(x, x, p=1)) == pytest.approx(0.0, abs=1e-7)
    # two Diracs of masses (1/2, 1/2) against (1/4, 3/4) at distance 2: move 1/4 by 2
    a, b = jnp.array([[0.0, 0.0]]), jnp.array([[2.0, 0.0]])
    both = jnp.concatenate([a, b])
    w = W.wasserstein(both, both, jnp.array([0.5, 0.5]), jnp.array([0.25, 0.75]), p=1)
    assert float(w) == pytest.approx(0.5, rel=1e-6)
    assert float(W.wasserstein(a, b, p=2)) == pytest.approx(2.0, rel=1e-6)
    ys = jax.vmap(lambda s: x + s[None, :])(jnp.array([[0.1, 0, 0], [0, 0.2, 0]]))
    np.testing.assert_allclose(
        jax.jit(jax.vmap(lambda y: W.wasserstein(x, y, p=1)))(ys), [0.1, 0.2], rtol=1e-5
    )


def test_misspecify_changes_exactly_the_requested_tokens(key):
    x = P.clouds.sphere_uniform(key, 40, 3)
    y, w = R.misspecify(key, x, "drop", 0.25)
    assert int(jnp.sum(w == 0)) == 10 and np.allclose(y, x)
    np.testing.assert_allclose(np.asarray(w[w > 0]), 1 / 30, rtol=1e-6)
    y, w = R.misspecify(key, x, "duplicate", 0.25)
    np.testing.assert_allclose(np.sort(np.asarray(w))[-10:], 2 / 50, rtol=1e-6)
    np.testing.assert_allclose(np.sort(np.asarray(w))[:30], 1 / 50, rtol=1e-6)
    y, w = R.misspecify(jax.random.key(1), x, "noise", 0.1, space=P.Sphere())
    assert float(jnp.max(P.sphere_drift(y))) < 1e-6
    assert 0.02 < float(jnp.max(jnp.linalg.norm(y - x, axis=-1))) < 0.6


@pytest.mark.parametrize("space", ["euclidean", "sphere"])
def test_field_gap_is_below_the_measure_lipschitz_bound_times_w1(key, space):
    attention = P.Attention.identity(3, 1.0)
    if space == "sphere":
        model, sphere = P.AttentionFlow(attention, P.Sphere()), P.Sphere()
        x, radius = P.clouds.sphere_uniform(key, 24, 3), None
    else:
        model, sphere = attention, None
        x, radius = P.clouds.ball_uniform(key, 24, 3, 0.8), 1.0
    lip_mu = float(R.measure_lipschitz_bound(model, radius))
    for kind, amount in (("noise", 0.05), ("drop", 0.3), ("duplicate", 0.5)):
        y, w = R.misspecify(jax.random.key(3), x, kind, amount, space=sphere)
        if sphere is None:
            y = y * jnp.minimum(1, 1 / jnp.linalg.norm(y, axis=-1, keepdims=True))
        gap = float(R.field_gap(model, x, y, None, w))
        w1 = float(W.wasserstein(x, y, None, w, p=1))
        assert 0 < gap <= lip_mu * w1, kind


def _pair_on_circle(phi):
    """Two unit vectors at angles +-phi/2."""
    c, s = jnp.cos(phi / 2), jnp.sin(phi / 2)
    return jnp.array([[c, s], [c, -s]])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_two_pairs_on_the_circle_separate_at_the_sharp_gronwall_rate(sign):
    # Q = K = I, V = I, softmax, beta = 1 on S^1. A symmetric pair at angles +-phi/2 stays
    # symmetric and, from rho' = 2 (1 - rho^2) / (1 + e^{beta (1 - rho)}) with rho = cos phi,
    # phi' = g(phi) = -2 sin(phi) / (1 + e^{beta (1 - cos phi)}). Two such pairs, phi0 = 1
    # and psi0 = 1 + 1e-3: by the mean value theorem (phi - psi)' = g'(xi) (phi - psi) with
    # xi between them, so Gronwall's inequality with the sharp local rate, read along the
    # trajectory, is two-sided:
    #     exp(int min g') <= |phi_t - psi_t| / |phi_0 - psi_0| <= exp(int max g'),
    # min and max over [phi(s), psi(s)]; the bounds differ by 0.1 % at t = 3. W1 (chord
    # cost, same-side coupling) is 2 sin(|phi - psi| / 4), so |phi - psi| is read from
    # `wasserstein`. The flow with the wrong sign (V = -I: the pair repels) breaks the
    # check by a factor 8, while it satisfies e^{L t} with L = growth_rate_bound = 25.2
    # (sign-blind: it depends on |V| only) as easily as the right flow does.
    beta = 1.0
    flow = P.AttentionFlow(P.Attention(jnp.eye(2), jnp.eye(2), sign * jnp.eye(2), beta), P.Sphere())

    def g(phi):
        return -2 * jnp.sin(phi) / (1 + jnp.exp(beta * (1 - jnp.cos(phi))))

    rate = jax.vmap(jax.grad(g))
    ts = jnp.linspace(0.0, 3.0, 301)
    xs = P.simulate(flow, _pair_on_circle(1.0), ts, rtol=1e-12, atol=1e-12).xs
    ys = P.simulate(flow, _pair_on_circle(1.0 + 1e-3), ts, rtol=1e-12, atol=1e-12).xs
    w1 = np.asarray(jax.vmap(lambda a, b: W.wasserstein(a, b, p=1))(xs, ys))
    gap = 4 * np.arcsin(w1 / 2)
    assert gap[0] == pytest.approx(1e-3, rel=1e-10)
    angle = lambda x: np.arccos(np.clip(np.sum(x[:, 0] * x[:, 1], -1), -1, 1))  # noqa: E731
    phi, psi = angle(np.asarray(xs)), angle(np.asarray(ys))
    between = phi[:, None] + (psi - phi)[:, None] * np.linspace(0, 1, 9)[None, :]
    local = np.asarray(rate(jnp.asarray(between.ravel()))).reshape(between.shape)
    from scipy.integrate import cumulative_trapezoid

    upper = np.exp(cumulative_trapezoid(local.max(1), ts, initial=0))
    lower = np.exp(cumulative_trapezoid(local.min(1), ts, initial=0))
    assert upper[-1] / lower[-1] < 1.002  # the check is sharp
    L = float(R.growth_rate_bound(flow))
    assert L == pytest.approx(1 + 2 + 3 * math.e**2, rel=1e-12)
    assert np.all(w1 <= w1[0] * np.exp(L * np.asarray(ts)))  # true for both signs
    ratio = gap / gap[0]
    inside = np.all(ratio <= upper * (1 + 1e-7)) and np.all(ratio >= lower * (1 - 1e-7))
    if sign > 0:
        assert inside
        assert ratio[-1] == pytest.approx(0.0967, abs=1e-4)
    else:
        assert not inside
        assert lower[-1] / ratio[-1] > 7  # 2.81 against 0.355


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(key):
    attention = P.Attention.identity(3, 1.0)
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="method must be one of"):
        R.lipschitz(attention, x, method="lanczos")
    with pytest.raises(ValueError, match="max_iters must be a positive int"):
        R.lipschitz(attention, x, max_iters=0)
    with pytest.raises(ValueError, match="tol must be > 0"):
        R.lipschitz(attention, x, tol=0.0)
    with pytest.raises(ValueError, match="x contains NaN"):
        R.lipschitz(attention, x.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="x must have shape"):
        R.lipschitz(attention, jnp.ones(3))
    with pytest.raises(TypeError, match="model must be"):
        R.lipschitz(3.0, x)
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        R.adversarial_cloud(attention, 1, 5.0)
    with pytest.raises(
        NotImplementedError,
        match="the adversarial cloud is known for DotProduct; none is implemented for L2",
    ):
        R.adversarial_cloud(P.Attention.identity(3, kernel=P.L2()), 4, 5.0)
    with pytest.raises(ValueError, match=r"head must be an int in \[0, 2\); got 2"):
        R.adversarial_cloud(P.Attention.random(key, 3, heads=2), 4, 5.0, head=2)
    with pytest.raises(ValueError, match="offset must lie in"):
        R.adversarial_cloud(attention, 4, 5.0, offset=1.5)
    with pytest.raises(ValueError, match="radius must be > 0"):
        R.softmax_bound(attention, 4, -1.0)
    with pytest.raises(
        NotImplementedError,
        match="softmax_bound is known for the kernels DotProduct; none is implemented for the L2",
    ):
        R.softmax_bound(P.Attention.identity(3, kernel=P.L2()), 4, 1.0)
    with pytest.raises(NotImplementedError, match="none is implemented for the DotProduct kernel"):
        R.l2_bound(attention, 4)
    with pytest.raises(NotImplementedError, match="none is implemented for Sinkhorn"):
        R.lipschitz_bound(P.Attention.identity(3, normalization=P.Sinkhorn()), 4, 1.0)
    with pytest.raises(NotImplementedError, match="none is implemented for Unnormalized"):
        R.kim_bound(P.Attention.identity(3, kernel=P.L2(), normalization=P.Unnormalized()), 4)
    l2_usa = P.Attention.identity(3, kernel=P.L2(), normalization=P.Unnormalized())
    with pytest.raises(
        NotImplementedError,
        match="lipschitz_bound for the L2 kernel is known for Softmax; none is implemented for "
        "Unnormalized",
    ):
        R.lipschitz_bound(l2_usa, 4)
    with pytest.raises(NotImplementedError, match="none is implemented for Unnormalized"):
        R.growth_rate_bound(l2_usa, 1.0)
    with pytest.raises(NotImplementedError, match="a flow with a FeedForward term"):
        R.lipschitz_bound(
            P.AttentionFlow(attention, feedforward=P.FeedForward.random(key, 3, 4)), 4, 1.0
        )
    with pytest.raises(ValueError, match="radius is required"):
        R.lipschitz_bound(attention, 4)
    with pytest.raises(ValueError, match="radius is required"):
        R.worst_cloud(attention, x, None)
    with pytest.raises(ValueError, match="causal attention is not a function of the measure"):
        R.growth_rate_bound(P.Attention.identity(3, causal=True), 1.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        R.misspecify(key, x, "shuffle", 0.1)
    with pytest.raises(ValueError, match="amount must be < 1 for kind='drop'"):
        R.misspecify(key, x, "drop", 1.0)
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        W.wasserstein(x, x, p=3)
    with pytest.raises(ValueError, match="same dimension"):
        W.wasserstein(x, jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="log-log fit"):
        M.fit_power_law([1, 2], [1, -1])


# ---------------------------------------------------------------------------------------
# Experiments at smoke size
# ---------------------------------------------------------------------------------------


def test_lipschitz_experiment_writes_figures_and_consistent_numbers(tmp_path):
    import sims
    from particles.io import read_json
    from sims.experiments.lipschitz import Config

    # smoke size: one token count, no search, no radius sweep (the full run is a slow test)
    config = Config(n_max=2, trials=1, search_n_max=0, radius_points=0)
    out = sims.run(config, tmp_path / "run", animation=False)
    for name in ("config.json", "metrics.json", "lipschitz_vs_n.png"):
        assert (out / name).is_file(), name
    m = read_json(out / "metrics.json")
    assert m["ns"] == [2] and m["search"]["ns"] == [] and m["radius"]["series"] == {}
    bounds = {k: np.array(v) for k, v in m["bounds"].items()}
    assert np.all(bounds["dot: ours"] <= bounds["dot: Castin et al. Thm 3.3"])
    assert np.all(bounds["L2: ours"] <= bounds["L2: Kim et al. Thm 3.2"])
    for name in ("adversarial", "leader, max gap", "iid ball", "causal adversarial"):
        assert np.all(np.array(m["series"][name]) <= bounds["dot: ours"]), name
    assert np.all(np.array(m["series"]["sphere iid"]) <= bounds["sphere: ours"])
    assert np.all(np.array(m["series"]["L2 iid"]) <= bounds["L2: ours"])
    # n = 2, offset 1/2: the leader attended with p = 1/(1 + e^-6.25); 1.4214 in float64
    assert m["series"]["leader, max gap"][0] == pytest.approx(1.4214149, rel=1e-4)
    assert m["solver"]["all_converged"] is True


@pytest.mark.slow
def test_lipschitz_experiment_with_search_radius_sweep_and_animation(tmp_path):
    import sims
    from particles.io import read_json
    from sims.experiments.lipschitz import Config

    config = Config(
        n_max=4,
        n_points=2,
        trials=1,
        fit_n_max=4,
        search_n_max=2,
        search_steps=4,
        radius_points=2,
        radius_min=1.0,
        radius_max=4.0,
        radius_n=3,
    )
    out = sims.run(config, tmp_path / "run")
    for name in ("lipschitz_vs_n.png", "lipschitz_vs_radius.png", "animation.mp4"):
        assert (out / name).is_file(), name
    m = read_json(out / "metrics.json")
    assert m["ns"] == [2, 4] and m["search"]["ns"] == [2]
    assert 0.4 < m["fits"]["leader, max gap"]["exponent"] < 0.7
    radius = m["radius"]
    assert np.all(
        np.array(radius["series"]["dot, searched"]) <= np.array(radius["bounds"]["dot: ours"])
    )
    assert np.all(np.array(radius["series"]["L2, searched"]) <= radius["bounds"]["L2: ours"])


def test_misspecified_experiment_writes_consistent_trajectories_and_distances(tmp_path):
    import sims
    from particles.io import load_trajectory, read_json
    from sims.experiments.misspecified import Config

    config = Config(n=12, frames=5, t1=0.5, sweep_points=2)
    out = sims.run(config, tmp_path / "run", animation=False)
    m = read_json(out / "metrics.json")
    assert len(m["ts"]) == 5
    # (The Gronwall inequality itself is checked where it is sharp, on two pairs on the
    # circle; e^{L t} with L = 25.2 exceeds the diameter 2 here from the first saved time.)
    ts = np.array(m["ts"])
    clean = load_trajectory(out / P.io.TRAJECTORY_FILE).xs
    for kind in ("noise", "drop", "duplicate", "resampled"):
        w1 = np.array(m["series"][f"W1 {kind}"])
        assert w1[0] > 0
        assert m["measured_rate"][kind] == pytest.approx(R.separation_rate(ts, w1), rel=1e-12)
        assert (out / f"trajectory_{kind}.npz").is_file()
    # the saved distances are those of the saved trajectories (uniform weights for noise)
    noisy = load_trajectory(out / "trajectory_noise.npz").xs
    for k in (0, -1):
        w1 = float(W.wasserstein(clean[k], noisy[k], p=1))
        assert m["series"]["W1 noise"][k] == pytest.approx(w1, rel=1e-5)
    assert m["max_field_ratio"] <= m["measure_lipschitz_bound"]
    # Q = K = V = I, beta = 1 on the sphere: L = beta + 2 + 3 e^2 (L_x + 2 sup|v| + L_mu)
    assert m["growth_rate_bound"] == pytest.approx(3 + 3 * math.e**2, rel=1e-6)
    assert load_trajectory(out / P.io.TRAJECTORY_FILE).xs.shape == (5, 12, 3)
    assert (out / "wasserstein_vs_time.png").is_file() and (
        out / "field_vs_wasserstein.png"
    ).is_file()


def test_experiment_configs_reject_bad_values():
    from sims.experiments.lipschitz import Config as LipschitzConfig
    from sims.experiments.misspecified import Config as MisspecifiedConfig

    with pytest.raises(ValueError, match="n_max must be >= 2"):
        LipschitzConfig(n_max=1)
    with pytest.raises(ValueError, match="search_n_max must be >= 0"):
        LipschitzConfig(search_n_max=-1)
    with pytest.raises(ValueError, match="radius must be > 0"):
        LipschitzConfig(radius=0.0)
    with pytest.raises(ValueError, match="drop must be < 1"):
        MisspecifiedConfig(drop=1.0)
    with pytest.raises(ValueError, match="solver must be one of"):
        MisspecifiedConfig(solver="rk4")


def test_paper_bounds_are_their_formulas():
    from scipy.special import lambertw

    # Castin, Ablin, Peyre (2024), Theorem 3.3: sqrt(3) |V| (|A|^2 R^4 (4n + 1) + n)^(1/2),
    # with A = beta Q^T K. Q = K = I, V = 2I, beta = 0.5, R = 3: |A| = 0.5, |V| = 2.
    dot = P.Attention(jnp.eye(3), jnp.eye(3), 2 * jnp.eye(3), 0.5)
    ns = np.array([1.0, 4.0, 100.0])
    expected = math.sqrt(3) * 2 * np.sqrt(0.25 * 81 * (4 * ns + 1) + ns)
    np.testing.assert_allclose(np.asarray(R.castin_bound(dot, ns, 3.0)), expected, rtol=1e-13)
    # Kim, Papamakarios, Mnih (2021), Theorem 3.2 with |W^Q| squared per head (see
    # kim_bound: the exponent is forced by n = 1) and Q = K = I, V = 3I, one head:
    # W^Q = (beta sqrt(3) / 2)^(1/2) I, W^V = (6 / beta) I, D/H = 3, W^O = I, so
    # sqrt(N)/sqrt(3) (4 W0((N-1)/e) + 1) |W^Q|^2 |W^V| = 3 sqrt(N) (4 W0((N-1)/e) + 1).
    l2 = P.Attention(jnp.eye(3), jnp.eye(3), 3 * jnp.eye(3), 0.8, kernel=P.L2())
    phi_inv = lambertw((ns - 1) / math.e).real
    expected = 3 * np.sqrt(ns) * (4 * phi_inv + 1)
    np.testing.assert_allclose(np.asarray(R.kim_bound(l2, ns)), expected, rtol=1e-12)
    # two heads: W^O stacks two identities (|W^O| = sqrt 2), per-head terms in quadrature
    Q2 = 2 * jnp.eye(3)
    mh = P.Attention(
        jnp.stack([jnp.eye(3), Q2]),
        jnp.stack([jnp.eye(3), Q2]),
        jnp.stack([jnp.eye(3), Q2]),
        0.8,
        kernel=P.L2(),
    )
    # a_h = |Q_h|^2 |V_h (Q_h^T Q_h)^+|: 1 and 4 * 2 / 4 = 2
    expected = np.sqrt(2) * math.sqrt(1 + 4) * np.sqrt(ns) * (4 * phi_inv + 1)
    np.testing.assert_allclose(np.asarray(R.kim_bound(mh, ns)), expected, rtol=1e-12)


def test_our_bounds_never_exceed_the_papers(key):
    ns = np.array([1, 2, 3, 8, 64, 1024, 2**20])
    for k in jax.random.split(key, 5):
        kq, kk, kv, kb = jax.random.split(k, 4)
        Q, K, V = (jax.random.normal(s, (3, 3)) for s in (kq, kk, kv))
        beta = float(jax.random.uniform(kb, minval=0.1, maxval=5.0))
        for radius in (0.1, 1.0, 10.0):
            dot = P.Attention(Q, K, V, beta)
            ours = np.asarray(R.softmax_bound(dot, ns, radius))
            assert np.all(ours <= np.asarray(R.castin_bound(dot, ns, radius)))
        l2 = P.Attention(Q, Q, V, beta, kernel=P.L2())
        assert np.all(np.asarray(R.l2_bound(l2, ns)) <= np.asarray(R.kim_bound(l2, ns)))


# ---------------------------------------------------------------------------------------
# The adversarial cloud: the logit gap it realises, for both signs of lambda
# ---------------------------------------------------------------------------------------


def _follower_gap(attention, x):
    """Logit of follower 1 towards the leader 0 minus its logit towards itself."""
    s = attention.beta * (x @ attention.Q[0].T) @ (x @ attention.K[0].T).T
    return float(s[1, 0] - s[1, 1])


def _best_gap(n):
    """The gap maximising p (1 + (1 - p) gap), p = 1 / (1 + (n - 1) e^-gap), by scipy."""
    from scipy.optimize import minimize_scalar

    def minus(g):
        p = 1 / (1 + (n - 1) * math.exp(-g))
        return -p * (1 + (1 - p) * g)

    return minimize_scalar(minus, bounds=(1e-9, 50.0), method="bounded", options={"xatol": 1e-10}).x


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_adversarial_cloud_realises_the_gap_it_claims(sign):
    # Q = I, K = sign I, beta = 1, R = 5: lambda = sign. Followers at s u: gap
    # beta lambda s (R - s); for lambda > 0, s = o R gives 25 o (1 - o) <= 6.25, for
    # lambda < 0, s = -o R gives 25 o (1 + o) <= 50. On the pre-fix code the negative case
    # realised 18.75 at o = 1/2 (against a claimed maximum of 6.25) and 5.675 with the
    # default offset (against the 3.857 it targets).
    attention = P.Attention(jnp.eye(3), sign * jnp.eye(3), jnp.eye(3), 1.0)
    for o in (0.25, 0.5, 0.8):
        x = R.adversarial_cloud(attention, 16, 5.0, offset=o)
        expected = 25 * o * (1 - o) if sign > 0 else 25 * o * (1 + o)
        assert _follower_gap(attention, x) == pytest.approx(expected, rel=1e-12)
        assert float(x[1, 0]) == pytest.approx(sign * o * 5.0, rel=1e-12)
    for n in (2, 8, 16, 32, 128):
        x = R.adversarial_cloud(attention, n, 5.0)
        target = _best_gap(n)
        # a maximiser is located to about sqrt(eps): 1e-6 relative
        assert _follower_gap(attention, x) == pytest.approx(target, rel=1e-6), n
    # n = 16: the gap is 3.857; positive and negative cases aim at the same gap
    x = R.adversarial_cloud(attention, 16, 5.0)
    assert _follower_gap(attention, x) == pytest.approx(3.8568, abs=1e-4)


def test_adversarial_cloud_negative_eigenvalue_matches_its_mirror():
    # K = -I against K = I (same |lambda|, same beta, R, n): with the default offset both
    # followers' rows put the same weight p on the leader, and moving the leader by u moves
    # each follower's output by p (1 + (1 - p) gap) u exactly (see adversarial_cloud), so
    # the leader's column of DF has the same norm sqrt(n - 1) p (1 + (1 - p) gap) (+ its own
    # row) in both cases.
    n = 16
    positive = P.Attention(jnp.eye(3), jnp.eye(3), jnp.eye(3), 1.0)
    negative = P.Attention(jnp.eye(3), -jnp.eye(3), jnp.eye(3), 1.0)
    xp = R.adversarial_cloud(positive, n, 5.0)
    xn = R.adversarial_cloud(negative, n, 5.0)
    gap = _follower_gap(positive, xp)
    assert _follower_gap(negative, xn) == pytest.approx(gap, rel=1e-12)
    p = 1 / (1 + (n - 1) * math.exp(-gap))
    for attention, x in ((positive, xp), (negative, xn)):
        A = attention.matrix(x)[0]
        np.testing.assert_allclose(np.asarray(A[1:, 0]), p, rtol=1e-12)
        J = np.asarray(R.jacobian(attention, x)).reshape(n, 3, n, 3)
        # response of follower i to the leader moving along u = e1
        np.testing.assert_allclose(J[1:, 0, 0, 0], p * (1 + (1 - p) * gap), rtol=1e-10)


# ---------------------------------------------------------------------------------------
# Each bound against a configuration whose constant is known in closed form
# ---------------------------------------------------------------------------------------


def test_softmax_bounds_attain_sqrt_n_with_all_weight_on_one_token(key):
    # Weights e_1: every row of the attention matrix is e_1 and stays so under perturbation
    # (dP_i1 = P_i1 (ds_i1 - ds_i1) = 0), so DF = 1 e_1^T (x) V exactly and
    # |DF| = sqrt(n) |V| for any Q, K, beta. On a ball of radius R with
    # c = beta |Q^T K| R^2: softmax_bound / |DF| = (sqrt(n)(1 + c) + c) / sqrt(n) -> 1 as
    # R -> 0 (attained), castin_bound / |DF| -> sqrt(3).
    n, radius, beta = 6, 1e-3, 1.0
    kq, kk = jax.random.split(key)
    Q, K = jax.random.normal(kq, (3, 3)), jax.random.normal(kk, (3, 3))
    attention = P.Attention(Q, K, jnp.diag(jnp.array([2.0, 1.0, 0.5])), beta)
    x = P.clouds.ball_uniform(key, n, 3, radius)
    w = jnp.zeros(n).at[0].set(1.0)
    value = float(R.lipschitz(attention, x, w, tol=1e-12).value)
    assert value == pytest.approx(2 * math.sqrt(n), rel=1e-12)
    c = beta * float(jnp.linalg.norm(Q.T @ K, 2)) * radius**2
    ours = value / float(R.softmax_bound(attention, n, radius))
    assert ours == pytest.approx(math.sqrt(n) / (math.sqrt(n) * (1 + c) + c), rel=1e-12)
    assert ours > 1 - 1e-5
    castin = value / float(R.castin_bound(attention, n, radius))
    expected = math.sqrt(n) / (math.sqrt(3) * math.sqrt(c**2 * (4 * n + 1) + n))
    assert castin == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("radius", [1.0, 3.0])
def test_softmax_bound_covariance_term_on_two_tokens(radius):
    # d = 2, Q^T K = e2 e1^T (|Q^T K| = 1), beta = 1/2, tokens +-R e1: all logits vanish
    # (x_i^T M x_j = x_i2 x_j1 = 0), the weights are 1/2, the covariance is R^2 e1 e1^T, and
    # dF_i = (dx_1 + dx_2) / 2 + c e1 (dx_i)_2 with c = beta R^2. On the mean and difference
    # directions DF is [[1, c], [0, 1]] and [[0, c], [0, 0]], so
    # |DF| = (c + sqrt(c^2 + 4)) / 2: the covariance term c of the bound is attained, and
    # the ratio to sqrt(2)(1 + c) + c is exact.
    Q, K = jnp.array([[0.0, 1.0], [0.0, 0.0]]), jnp.array([[1.0, 0.0], [0.0, 0.0]])
    attention = P.Attention(Q, K, jnp.eye(2), 0.5)
    x = jnp.array([[radius, 0.0], [-radius, 0.0]])
    c = 0.5 * radius**2
    exact = (c + math.sqrt(c * c + 4)) / 2
    assert float(R.lipschitz(attention, x, tol=1e-12).value) == pytest.approx(exact, rel=1e-12)
    bound = float(R.softmax_bound(attention, 2, radius))
    assert bound == pytest.approx(math.sqrt(2) * (1 + c) + c, rel=1e-12)


@pytest.mark.parametrize("n", [1, 5])
def test_unnormalized_bound_is_attained_by_coincident_tokens(n):
    # USA, Q = K = V = I, all tokens at R u: G_ij = e^c / n (c = beta R^2) and moving every
    # token by u moves every output by e^c (1 + 2c) u, so |DF| = e^c (1 + 2c), the bound.
    beta, radius = 0.7, 1.5
    attention = P.Attention.identity(3, beta, normalization=P.Unnormalized())
    x = jnp.broadcast_to(radius * jnp.array([0.0, 0.6, 0.8]), (n, 3))
    c = beta * radius**2
    value = float(R.lipschitz(attention, x, tol=1e-12).value)
    assert value == pytest.approx(math.exp(c) * (1 + 2 * c), rel=1e-12)
    assert float(R.unnormalized_bound(attention, radius)) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("q", [0.5, 2.0, 10.0])
def test_l2_bounds_are_attained_by_one_token(q):
    # n = 1: F(x) = V x exactly (one token attends to itself with weight 1), so the
    # constant is |V|. With Q = K = q I and V = 1.5 q^2 I (W^{V} fixed while W^{Q} = s I
    # scales): |DF| = 1.5 q^2 = l2_bound = kim_bound. A bound linear in |W^Q| would be
    # kim_bound / q: below the constant for q = 2 and 10.
    attention = P.Attention(
        q * jnp.eye(3), q * jnp.eye(3), 1.5 * q**2 * jnp.eye(3), 0.8, kernel=P.L2()
    )
    x = jnp.array([[0.3, -0.2, 0.1]])
    value = float(R.lipschitz(attention, x, tol=1e-12).value)
    assert value == pytest.approx(1.5 * q**2, rel=1e-12)
    assert float(R.l2_bound(attention, 1)) == pytest.approx(value, rel=1e-12)
    assert float(R.kim_bound(attention, 1)) == pytest.approx(value, rel=1e-12)
    assert (float(R.kim_bound(attention, 1)) / q < value) == (q > 1)
    # two identical heads: the constant 2 |V| equals sqrt(H) (sum_h a_h^2)^(1/2) = 2 a
    two = P.Attention(
        jnp.stack([q * jnp.eye(3)] * 2),
        jnp.stack([q * jnp.eye(3)] * 2),
        jnp.stack([1.5 * q**2 * jnp.eye(3)] * 2),
        0.8,
        kernel=P.L2(),
    )
    value = float(R.lipschitz(two, x, tol=1e-12).value)
    assert value == pytest.approx(3 * q**2, rel=1e-12)
    assert float(R.kim_bound(two, 1)) == pytest.approx(value, rel=1e-12)
    assert float(R.l2_bound(two, 1)) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("z", [0.5, 2.0])
def test_l2_constant_of_two_tokens_on_the_line(z):
    # d = 1, Q = K = V = 1, beta = 1, tokens 0 and delta with z = delta^2 / 2: P_12 = p =
    # 1 / (1 + e^z), F_1 = y_1 + h(delta), F_2 = y_2 - h(delta), h = p delta, so
    # DF = [[1 - h', h'], [h', 1 - h']] with h' = p (1 - 2 z (1 - p)): eigenvalues 1 and
    # 1 - 2 h'. At z = 2, |DF| = 1.6015, 0.613 of l2_bound(2) = 2.6113.
    attention = P.Attention(jnp.eye(1), jnp.eye(1), jnp.eye(1), 1.0, kernel=P.L2())
    x = jnp.array([[0.0], [math.sqrt(2 * z)]])
    p = 1 / (1 + math.exp(z))
    slope = p * (1 - 2 * z * (1 - p))
    exact = max(1.0, abs(1 - 2 * slope))
    value = float(R.lipschitz(attention, x, tol=1e-12).value)
    assert value == pytest.approx(exact, rel=1e-12)
    w = float(R.lambert_w0(1 / math.e))
    bound = math.sqrt(2) + 2 * w + 2 * math.sqrt(w / math.e)
    assert float(R.l2_bound(attention, 2)) == pytest.approx(bound, rel=1e-12)
    assert value < bound


def test_kim_constant_and_bound_scale_like_s_squared(key):
    # Kim et al.'s W^Q -> s W^Q with W^V fixed is Q -> s Q, V -> s^2 V here; it maps F(X)
    # to s F(sX), so the constant at X is s^2 times the constant at sX, and kim_bound
    # scales by s^2 exactly (|W^Q| enters squared; see kim_bound). Checked directly,
    # instead of through beta, which cancels out of the bound in this package's variables.
    kq, ku = jax.random.split(key)
    Q = jax.random.normal(kq, (3, 3)) / math.sqrt(3)
    U = jax.random.normal(ku, (3, 3)) / math.sqrt(3)
    base = P.Attention(Q, Q, U @ Q, 1.0, kernel=P.L2())
    x = P.clouds.ball_uniform(key, 5, 3, 2.0)
    for s in (0.5, 3.0):
        scaled = P.Attention(s * Q, s * Q, s**2 * (U @ Q), 1.0, kernel=P.L2())
        value = float(R.lipschitz(scaled, x, tol=1e-12).value)
        assert value == pytest.approx(
            s**2 * float(R.lipschitz(base, s * x, tol=1e-12).value), rel=1e-9
        )
        ratio = float(R.kim_bound(scaled, 5)) / float(R.kim_bound(base, 5))
        assert ratio == pytest.approx(s**2, rel=1e-12)


@pytest.mark.parametrize("beta", [1e-6, 0.5])
def test_sphere_bound_against_one_token(beta):
    # One token on the sphere, V = I: F(x) = x - |x|^2 x as a map of R^d, so
    # DF = -2 x x^T at |x| = 1 and the constant is 2; lipschitz_bound = (1 + 2 beta) + 2.
    flow = P.AttentionFlow(P.Attention.identity(3, beta), P.Sphere())
    x = jnp.array([[0.0, 0.6, 0.8]])
    assert float(R.lipschitz(flow, x, tol=1e-12).value) == pytest.approx(2.0, rel=1e-12)
    assert float(R.lipschitz_bound(flow, 1)) == pytest.approx(3 + 2 * beta, rel=1e-12)


def test_measure_lipschitz_bound_is_attained_by_two_diracs(key):
    # v[delta_a](z) = V a for every z (softmax over one atom), so the field gap between
    # delta_a and delta_b is |V (a - b)| = |V| |a - b| along the top singular vector of V,
    # and W1 = |a - b|: the ratio to L_mu = |V| e^{2c} (1 + 2c) is 1 / (e^{2c}(1 + 2c)).
    kq, kk = jax.random.split(key)
    Q, K = jax.random.normal(kq, (3, 3)), jax.random.normal(kk, (3, 3))
    attention = P.Attention(Q, K, jnp.diag(jnp.array([1.5, 1.0, 0.5])), 1.0)
    radius = 1e-3
    a, b = jnp.array([[radius, 0.0, 0.0]]), jnp.array([[-radius / 2, 0.0, 0.0]])
    gap = float(R.field_gap(attention, a, b))
    assert gap == pytest.approx(1.5 * 1.5 * radius, rel=1e-12)
    w1 = float(W.wasserstein(a, b, p=1))
    c = float(jnp.linalg.norm(Q.T @ K, 2)) * radius**2
    ratio = gap / (float(R.measure_lipschitz_bound(attention, radius)) * w1)
    assert ratio == pytest.approx(1 / (math.exp(2 * c) * (1 + 2 * c)), rel=1e-12)


def test_growth_rate_bound_is_attained_by_two_diracs():
    # Q = K = V = I, one token each: x' = V x, so two Diracs separate exactly like e^t, and
    # they stay in the ball of radius e over t in [0, 1]. With beta = 1e-8 the bound
    # L = beta R^2 + e^{2c}(1 + 2c), c = beta R^2, is 1 + 4e-7: attained to 4e-7.
    attention = P.Attention.identity(3, 1e-8)
    ts = jnp.linspace(0.0, 1.0, 5)
    solve = lambda x0: P.simulate(P.AttentionFlow(attention), x0, ts, rtol=1e-12, atol=1e-12).xs  # noqa: E731
    xa, xb = solve(jnp.array([[0.5, 0.0, 0.0]])), solve(jnp.array([[0.3, 0.2, 0.0]]))
    w1 = np.array([float(W.wasserstein(a, b, p=1)) for a, b in zip(xa, xb, strict=True)])
    assert R.separation_rate(ts, w1) == pytest.approx(1.0, rel=1e-9)
    c = 1e-8 * math.e**2
    L = float(R.growth_rate_bound(attention, math.e))
    assert L == pytest.approx(c + math.exp(2 * c) * (1 + 2 * c), rel=1e-12)
    assert L < 1 + 1e-6


def test_best_gap_solves_its_equation_and_p_stays_well_above_one_half():
    # The maximiser of p (1 + (1 - p) gap) solves (2p - 1) gap = 2, so p* = 1/2 + 1/gap:
    # measured p* = 0.917, 0.800, 0.727, 0.679 at n = 2, 8, 32, 128 (not ~1/2, as once
    # claimed), with gaps 2.399, 3.333, 4.412, 5.593 (not ~log(n - 1) = 0, 1.95, 3.43, 4.84).
    ns = [2, 8, 32, 128]
    gaps = np.array([float(R.best_gap(n)) for n in ns])
    ps = 1 / (1 + (np.array(ns) - 1) * np.exp(-gaps))
    np.testing.assert_allclose(ps, 0.5 + 1 / gaps, rtol=1e-12)
    np.testing.assert_allclose(ps, [0.9168, 0.8001, 0.7267, 0.6788], atol=1e-4)
    np.testing.assert_allclose(gaps, [2.3994, 3.3326, 4.4118, 5.5925], atol=1e-4)
    # capped by the ball: Q = K = V = I, R = 1, beta = 1 allows gaps up to 1/4
    assert float(R.best_gap(16, 0.25)) == 0.25
    x = R.adversarial_cloud(P.Attention.identity(3, 1.0), 16, 1.0)
    assert float(jnp.linalg.norm(x[1])) == pytest.approx(0.5, rel=1e-12)  # offset 1/2
