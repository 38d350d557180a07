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
def test_matrix_free_norm_equals_dense_spectral_norm(x64, key, variant):
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


def test_power_iteration_agrees_and_lobpcg_needs_far_fewer_iterations(x64):
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


def test_lipschitz_reports_non_convergence_within_max_iters(x64):
    attention = P.Attention.identity(3, 1.0)
    x = R.adversarial_cloud(attention, 8, 5.0, offset=0.5)
    est = R.lipschitz(attention, x, method="power", tol=1e-12, max_iters=5)
    assert int(est.iterations) == 5 and not bool(est.converged)
    assert float(est.residual) > 1e-12


def test_lipschitz_works_under_jit_and_vmap(x64):
    attention = P.Attention.identity(3, 1.0)
    offsets = jnp.array([0.3, 0.5, 0.7])
    clouds = jax.vmap(lambda a: R.adversarial_cloud(attention, 8, 5.0, offset=a))(offsets)
    batched = jax.jit(jax.vmap(lambda x: R.lipschitz(attention, x, tol=1e-10).value))(clouds)
    one = [float(R.lipschitz(attention, x, tol=1e-10).value) for x in clouds]
    np.testing.assert_allclose(np.asarray(batched), one, rtol=1e-8)


def test_zero_map_has_constant_zero(x64):
    zero = P.Attention(jnp.eye(2), jnp.eye(2), jnp.zeros((2, 2)), 1.0)
    est = R.lipschitz(zero, jnp.ones((3, 2)))
    assert float(est.value) == 0.0 and bool(est.converged)


# ---------------------------------------------------------------------------------------
# The sqrt(n) law and the bounds
# ---------------------------------------------------------------------------------------


def test_adversarial_cloud_grows_like_sqrt_n_below_the_bound(x64):
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
    column = float(jnp.sum(attention.matrix(clouds[-1])[1:, 0]))
    assert column > 0.97 * 15


def test_adversarial_cloud_default_offset_and_causal_stay_below_bound(x64):
    attention = P.Attention.identity(3, 1.0)
    causal = P.Attention.identity(3, 1.0, causal=True)
    x = R.adversarial_cloud(attention, 16, 5.0)
    assert float(jnp.max(jnp.linalg.norm(x, axis=-1))) == pytest.approx(5.0)
    bound = float(R.softmax_bound(attention, 16, 5.0))
    best = float(R.lipschitz(attention, x, tol=1e-10).value)
    assert best <= bound and float(R.lipschitz(causal, x).value) <= bound
    # the default offset targets the gap ~log(n - 1) (p ~ 1/2): 6.28 against 4.54 for the
    # maximal gap at n = 16
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


def test_dot_product_constant_grows_without_bound_with_the_radius(x64):
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
    assert float(W.wasserstein(x, x + shift)) == pytest.approx(0.5, rel=1e-6)
    assert float(W.wasserstein(x, x)) == pytest.approx(0.0, abs=1e-7)
    # two Diracs of masses (1/2, 1/2) against (1/4, 3/4) at distance 2: move 1/4 by 2
    a, b = jnp.array([[0.0, 0.0]]), jnp.array([[2.0, 0.0]])
    both = jnp.concatenate([a, b])
    w = W.wasserstein(both, both, jnp.array([0.5, 0.5]), jnp.array([0.25, 0.75]))
    assert float(w) == pytest.approx(0.5, rel=1e-6)
    assert float(W.wasserstein(a, b, p=2)) == pytest.approx(2.0, rel=1e-6)
    ys = jax.vmap(lambda s: x + s)(jnp.array([[0.1, 0, 0], [0, 0.2, 0]]))
    np.testing.assert_allclose(
        jax.jit(jax.vmap(lambda y: W.wasserstein(x, y)))(ys), [0.1, 0.2], rtol=1e-5
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
        w1 = float(W.wasserstein(x, y, None, w))
        assert 0 < gap <= lip_mu * w1, kind


@pytest.mark.slow
def test_wasserstein_separation_along_the_flow_obeys_gronwall(key):
    # Both flows on the sphere (radius 1): W1(mu_t, nu_t) <= exp(L t) W1(mu_0, nu_0)
    # with L = growth_rate_bound; the measured rate is far smaller than the bound. (The
    # default suite checks the same inequality through the misspecified experiment.)
    flow = P.AttentionFlow(P.Attention.identity(3, 1.0), P.Sphere())
    x0 = P.clouds.sphere_uniform(key, 24, 3)
    y0, w = R.misspecify(jax.random.key(5), x0, "drop", 0.25)
    ts = jnp.linspace(0.0, 1.0, 6)
    uniform = jnp.full((24,), 1 / 24)
    xs = P.simulate(flow, x0, ts, weights=uniform).xs
    ys = P.simulate(flow, y0, ts, weights=w).xs
    w1 = np.array([float(W.wasserstein(a, b, None, w)) for a, b in zip(xs, ys, strict=True)])
    rate = float(R.growth_rate_bound(flow))
    assert rate == pytest.approx(1 + 2 + 3 * math.e**2, rel=1e-6)
    assert np.all(w1 <= w1[0] * np.exp(rate * np.asarray(ts)) * (1 + 1e-5))
    assert R.separation_rate(ts, w1) < rate


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
    with pytest.raises(ValueError, match="needs kernel='dot'"):
        R.adversarial_cloud(P.Attention.identity(3, kernel=P.L2()), 4, 5.0)
    with pytest.raises(TypeError, match="single-head Attention"):
        R.adversarial_cloud(P.Attention.random(key, 3, heads=2), 4, 5.0)
    with pytest.raises(ValueError, match="offset must lie in"):
        R.adversarial_cloud(attention, 4, 5.0, offset=1.5)
    with pytest.raises(ValueError, match="radius must be > 0"):
        R.softmax_bound(attention, 4, -1.0)
    with pytest.raises(ValueError, match="softmax_bound covers kernel"):
        R.softmax_bound(P.Attention.identity(3, kernel=P.L2()), 4, 1.0)
    with pytest.raises(ValueError, match="l2_bound covers kernel"):
        R.l2_bound(attention, 4)
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


def test_misspecified_experiment_writes_trajectories_and_obeys_the_bounds(tmp_path):
    import sims
    from particles.io import load_trajectory, read_json
    from sims.experiments.misspecified import Config

    config = Config(n=12, frames=5, t1=0.5, sweep_points=2)
    out = sims.run(config, tmp_path / "run", animation=False)
    m = read_json(out / "metrics.json")
    assert len(m["ts"]) == 5
    for kind in ("noise", "drop", "duplicate", "resampled"):
        w1 = np.array(m["series"][f"W1 {kind}"])
        assert w1[0] > 0 and np.all(
            w1 <= w1[0] * np.exp(m["growth_rate_bound"] * np.array(m["ts"]))
        )
        assert m["measured_rate"][kind] < m["growth_rate_bound"]
        assert (out / f"trajectory_{kind}.npz").is_file()
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


def test_paper_bounds_are_the_published_formulas(x64):
    from scipy.special import lambertw

    # Castin, Ablin, Peyre (2024), Theorem 3.3: sqrt(3) |V| (|A|^2 R^4 (4n + 1) + n)^(1/2),
    # with A = beta Q^T K. Q = K = I, V = 2I, beta = 0.5, R = 3: |A| = 0.5, |V| = 2.
    dot = P.Attention(jnp.eye(3), jnp.eye(3), 2 * jnp.eye(3), 0.5)
    ns = np.array([1.0, 4.0, 100.0])
    expected = math.sqrt(3) * 2 * np.sqrt(0.25 * 81 * (4 * ns + 1) + ns)
    np.testing.assert_allclose(np.asarray(R.castin_bound(dot, ns, 3.0)), expected, rtol=1e-13)
    # Kim, Papamakarios, Mnih (2021), Theorem 3.2 with Q = K = I, V = 3I, one head:
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


def test_kim_bound_holds_at_every_temperature(x64):
    # Coincident tokens: the attention matrix is uniform and its derivative vanishes, so
    # DF = (1/n) 11^T (x) V and the constant is exactly |V| = 1 at every beta. A bound linear
    # in |W^Q| (which scales like beta^(1/2)) would fall below 1 at large beta.
    x = jnp.ones((4, 3))
    for beta in (1e-2, 1.0, 1e2):
        l2 = P.Attention.identity(3, beta, kernel=P.L2())
        value = float(R.lipschitz(l2, x, tol=1e-12).value)
        assert value == pytest.approx(1.0, rel=1e-9)
        assert value <= float(R.l2_bound(l2, 4)) <= float(R.kim_bound(l2, 4))


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
