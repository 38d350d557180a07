"""Deep residual networks converge to the attention flow they discretise, with the order of
their layer map (`particles.networks`)."""

from __future__ import annotations

import functools
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particles as P
from particles import metrics, studies

D, N, T = 3, 6, 1.0


@eqx.filter_jit
def _draw(key, pieces):
    k = jax.random.split(key, 4)
    attention = P.Attention.random(k[0], D)
    feedforward = P.FeedForward.random(k[1], D, 8, "tanh")
    layers = eqx.filter_vmap(lambda kk: P.Attention.random(kk, D))(jax.random.split(k[2], pieces))
    x0 = P.clouds.sphere_uniform(k[3], N, D)
    return attention, feedforward, layers, x0


@functools.cache
def _cached_parts(seed, pieces, x64):
    # x64 is part of the key: the float32 tests draw their own float32 parts
    return _draw(jax.random.key(seed), pieces)


def _parts(seed=0, pieces=3):
    # Cached, and drawn in one compiled call: eager draws compile a dozen small kernels.
    return _cached_parts(seed, pieces, bool(jax.config.jax_enable_x64))


def _gap(a, b):
    return float(jnp.max(jnp.linalg.norm(a - b, axis=-1)))


@pytest.mark.parametrize("prenorm", [False, True], ids=["residual", "pre-norm"])
def test_euler_network_equals_fixed_step_diffrax_euler(prenorm):
    attention, _, _, x0 = _parts()
    x0 = 1.7 * x0  # off the sphere: the pre-norm residual stream keeps its norm
    flow = P.PreNormFlow(attention) if prenorm else P.AttentionFlow(attention)
    L = 16
    net = P.ResidualNetwork(flow, L, T)
    xs = net(x0)
    ref = P.simulate(flow, x0, net.times(x0.dtype), solver=diffrax.Euler(), dt=T / L)
    assert xs.shape == (L + 1, N, D)
    assert np.array_equal(np.asarray(xs[0]), np.asarray(x0))
    assert float(jnp.max(jnp.abs(xs - ref.xs))) < 1e-12


# Depths for each order: errors at T stay well above the 1e-12 reference tolerance and the
# fit sees the asymptotic regime.
_DEPTHS = {1: [16, 32, 64, 128], 2: [8, 16, 32, 64], 4: [4, 8, 16, 32]}
_WINDOW = {1: 0.15, 2: 0.2, 4: 0.3}


def _order_slope(name):
    """The fitted log-log slope of the error at T of the network `name`, its order, errors."""
    attention, feedforward, layers, x0 = _parts()
    flow, scheme = studies.variant(
        name, attention, feedforward=feedforward, layers=layers, horizon=T
    )
    order = P.networks.ORDERS[scheme]
    depths = _DEPTHS[order]
    errors = np.asarray(studies.final_errors(flow, x0, depths, T, scheme=scheme))
    slope, _ = metrics.fit_power_law(depths, errors)
    return slope, order, errors


# every scheme but the per-layer network, whose flow is the layered one (tested below)
@pytest.mark.parametrize("name", [v for v in studies.VARIANTS if v != "per-layer"])
def test_convergence_order_of_each_network(name):
    # Error at T against a dopri8 solve at rtol = atol = 1e-12; the slope of the log-log fit
    # is -order: 1 for Euler layers with or without normalisation and for Lie-Trotter and
    # Macaron (Strang with Euler sub-steps), 2 for Heun and for Strang with Heun sub-steps,
    # 4 for RK4. (The per-layer network: test_per_layer_network_converges_to_layered_flow.)
    slope, order, errors = _order_slope(name)
    assert errors.min() > 1e-9, errors
    assert abs(slope + order) <= _WINDOW[order], (name, slope, errors)


def test_one_layer_of_each_scheme_is_its_formula():
    # One layer of step h, written out by hand: what each scheme computes.
    attention, feedforward, _, x0 = _parts()
    h = 0.25

    def N(x):
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    def tangent(x, u):
        return u - jnp.sum(x * u, axis=-1, keepdims=True) * x

    def heun(g, x, s):
        k = g(x)
        return x + (s / 2) * (k + g(x + s * k))

    def layer(flow, scheme):
        return P.ResidualNetwork(flow, 1, h, scheme=scheme)(x0)[-1]

    sphere = P.AttentionFlow(attention, P.Sphere())
    post = layer(sphere, "post-norm")
    projected = layer(sphere, "euler")
    np.testing.assert_allclose(post, N(x0 + h * attention(x0)), rtol=0, atol=1e-14)
    np.testing.assert_allclose(
        projected, N(x0 + h * tangent(x0, attention(x0))), rtol=0, atol=1e-14
    )
    # Post-LN is not the projected layer: they differ at O(h^2)
    assert 1e-4 < _gap(post, projected) < h**2

    split = P.AttentionFlow(attention, feedforward=feedforward)
    y = x0 + h * attention(x0)
    np.testing.assert_allclose(
        layer(split, "lie-trotter"), y + h * feedforward(y), rtol=0, atol=1e-14
    )
    y = x0 + (h / 2) * feedforward(x0)
    z = y + h * attention(y)
    macaron = z + (h / 2) * feedforward(z)
    np.testing.assert_allclose(layer(split, "strang-euler"), macaron, rtol=0, atol=1e-14)
    strang = heun(feedforward, heun(attention, heun(feedforward, x0, h / 2), h), h / 2)
    np.testing.assert_allclose(layer(split, "strang"), strang, rtol=0, atol=1e-14)


@pytest.mark.parametrize("scheme", ["euler", "post-norm"])
def test_post_normalised_networks_stay_on_sphere(float32, scheme):
    attention, _, _, x0 = _parts()
    xs = P.ResidualNetwork(P.AttentionFlow(attention, P.Sphere()), 64, 3.0, scheme=scheme)(x0)
    assert xs.dtype == jnp.float32
    # float32 rounding of x / |x|: a few ulps (eps = 1.2e-7)
    assert float(jnp.max(P.sphere_drift(xs))) <= 4 * float(jnp.finfo(jnp.float32).eps)


def test_post_normalised_networks_stay_on_sphere_in_float64():
    attention, _, _, x0 = _parts()
    sphere = P.AttentionFlow(attention, P.Sphere())
    for scheme in ("euler", "post-norm"):
        xs = P.ResidualNetwork(sphere, 64, T, scheme=scheme)(x0)
        assert float(jnp.max(P.sphere_drift(xs))) <= 4 * float(jnp.finfo(jnp.float64).eps)


@pytest.mark.parametrize("per_piece", [1, 3])
def test_per_layer_network_equals_euler_solve_of_layered_flow(per_piece):
    # Each weight set used for `per_piece` layers: the Euler scheme of the piecewise-constant
    # flow on the layer grid, which contains the jump times bit for bit.
    _, _, layers, x0 = _parts(pieces=3)
    flow = P.AttentionFlow(P.Layered(layers, T))
    net = P.ResidualNetwork(flow, 3 * per_piece, T)
    ts = net.times(x0.dtype)
    ref = diffrax.diffeqsolve(
        diffrax.ODETerm(flow),
        diffrax.Euler(),
        ts[0],
        ts[-1],
        None,
        x0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.StepTo(ts),
    )
    assert float(jnp.max(jnp.abs(net(x0) - ref.ys))) < 1e-12


def test_per_layer_network_converges_to_layered_flow():
    # Fixed number of weight sets (3), k layers each: error O(1/k) against the adaptive solve,
    # which stops at every jump (jump_ts).
    _, _, layers, x0 = _parts(pieces=3)
    flow = P.AttentionFlow(P.Layered(layers, T))
    depths = [3 * k for k in (8, 16, 32)]
    errors = studies.final_errors(flow, x0, depths, T)
    assert -1.15 <= metrics.fit_power_law(depths, errors)[0] <= -0.85


def test_layered_at_boundaries_picks_the_layer_that_starts_there():
    # floor(t / step) put t = step in layer 0 once XLA rewrote t / step as t * (1 / step).
    layers = eqx.filter_vmap(lambda k: P.Attention.random(k, 2))(
        jax.random.split(jax.random.key(1), 3)
    )
    layered = P.Layered(layers, 0.3)
    jumps = layered.jump_times()
    at = jax.jit(lambda t: layered.at(t).V)
    for i, t in enumerate(jumps):
        t32 = jnp.float32(t)
        assert np.array_equal(at(t32), layers.V[i + 1])
        assert np.array_equal(at(jnp.nextafter(t32, -np.inf)), layers.V[i])
    assert np.array_equal(at(jnp.float32(0.3)), layers.V[2])


def test_error_along_depth_halves_with_depth():
    attention, _, _, x0 = _parts()
    flow = P.AttentionFlow(attention)
    fine_net = P.ResidualNetwork(flow, 32, T)
    fine = studies.depth_error(fine_net, x0)
    assert fine.shape == (33,) and float(fine[0]) == 0.0
    # the coarse network at the same times t_l = l h: every other time of the fine grid
    ref = P.simulate(
        flow, x0, fine_net.times(x0.dtype), solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-12
    )
    assert jnp.allclose(fine, jnp.max(jnp.linalg.norm(fine_net(x0) - ref.xs, axis=-1), -1))
    coarse_xs = P.ResidualNetwork(flow, 16, T)(x0)
    coarse = jnp.max(jnp.linalg.norm(coarse_xs - ref.xs[::2], axis=-1), axis=-1)
    ratio = np.asarray(fine[2::2][3:] / coarse[1:][3:])
    assert np.all((ratio > 0.4) & (ratio < 0.6)), ratio


def test_prenorm_flow_reads_only_directions(key):
    attention, feedforward, _, x0 = _parts()
    flow = P.PreNormFlow(attention, feedforward)
    scales = jnp.array([0.5, 1.0, 2.0, 3.0, 7.0, 0.1])[:, None]
    v = flow(0.0, x0, None)
    assert jnp.allclose(flow(0.0, scales * x0, None), v, atol=1e-6)
    # on the sphere the attention term is the plain attention of the cloud
    assert jnp.allclose(P.PreNormFlow(attention)(0.0, x0, None), attention(x0), atol=1e-6)


def test_network_under_jit_and_vmap(key):
    attention, _, _, x0 = _parts()
    net = P.ResidualNetwork(P.AttentionFlow(attention), 8, T)
    batch = jnp.stack([x0, 2 * x0, -x0])
    out = jax.vmap(net)(batch)
    assert out.shape == (3, 9, N, D)
    assert jnp.allclose(out[1], net(2 * x0), atol=1e-6)
    jitted = eqx.filter_jit(lambda m, x: m(x))(net, x0)
    assert jnp.allclose(jitted, net(x0), atol=1e-6)
    finals = jax.vmap(net.final)(batch)
    np.testing.assert_allclose(finals, out[:, -1], rtol=0, atol=1e-14)
    traj = net.trajectory(x0)
    assert traj.xs.shape == (9, N, D) and np.allclose(traj.ts, np.linspace(0, T, 9))


def test_final_is_the_last_layer_for_every_depth():
    # one compilation for every depth: the depth is a loop bound, not a shape
    attention, feedforward, layers, x0 = _parts(pieces=3)
    flows = [
        (P.AttentionFlow(attention, feedforward=feedforward), "strang"),
        (P.AttentionFlow(P.Layered(layers, T), P.Sphere()), "post-norm"),
    ]
    for flow, scheme in flows:
        for depth in (3, 6, 12):
            net = P.ResidualNetwork(flow, depth, T, scheme=scheme)
            np.testing.assert_allclose(net.final(x0), net(x0)[-1], rtol=0, atol=1e-14)


def test_network_trajectory_has_no_solver_statistics_and_round_trips(tmp_path):
    # no solver produced the layers: no invented step counts, and io copes
    attention, _, _, x0 = _parts()
    net = P.ResidualNetwork(P.AttentionFlow(attention), 8, T)
    weights = jnp.linspace(1.0, 2.0, N) / jnp.sum(jnp.linspace(1.0, 2.0, N))
    traj = net.trajectory(x0, weights)
    assert traj.stats is None and traj.result is None
    assert traj.num_steps is None and traj.succeeded is True
    np.testing.assert_array_equal(traj.xs, net(x0, weights))
    np.testing.assert_array_equal(traj.weights, weights)
    P.io.save_trajectory(tmp_path / "network.npz", traj)
    with np.load(tmp_path / "network.npz") as saved:
        assert set(saved.files) == {"ts", "xs", "weights"}
    back = P.io.load_trajectory(tmp_path / "network.npz")
    assert back.stats is None and back.result is None
    for name in ("ts", "xs", "weights"):
        assert np.array_equal(getattr(back, name), getattr(traj, name)), name
    np.testing.assert_array_equal(net.trajectory(x0).weights, np.full(N, 1 / N))


def test_loglog_slope_reads_a_power_law():
    depths = np.array([4, 8, 16, 32, 64])
    slope, constant = metrics.fit_power_law(depths, 3.0 * depths**-2.0)
    assert slope == pytest.approx(-2.0, abs=1e-12) and constant == pytest.approx(3.0, rel=1e-12)
    # points at the floor are left out of the fit
    errors = np.maximum(depths**-4.0, 1e-5)
    slope, constant = metrics.fit_power_law(depths, errors, floor=1.5e-5)
    assert slope == pytest.approx(-4.0, abs=1e-12) and constant == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="at least two points above floor"):
        metrics.fit_power_law(depths, errors, floor=1e-2)


@pytest.mark.parametrize("depth", [0, -3, 2.5, 4.0, True, "8", None])
def test_bad_depth_is_an_error_naming_it(depth):
    attention, *_ = _parts()
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        P.ResidualNetwork(P.AttentionFlow(attention), depth, T)


@pytest.mark.parametrize("horizon", [0.0, -1.0, math.nan, math.inf, "T"])
def test_bad_horizon_is_an_error_naming_it(horizon):
    attention, *_ = _parts()
    with pytest.raises(ValueError, match="horizon must be"):
        P.ResidualNetwork(P.AttentionFlow(attention), 8, horizon)


def test_bad_network_options_are_errors():
    attention, feedforward, layers, _ = _parts(pieces=3)
    with pytest.raises(ValueError, match="scheme must be one of"):
        P.ResidualNetwork(P.AttentionFlow(attention), 8, T, scheme="leapfrog")
    for scheme in ("lie-trotter", "strang-euler", "strang"):
        with pytest.raises(ValueError, match=f"scheme '{scheme}' splits attention from the"):
            P.ResidualNetwork(P.AttentionFlow(attention), 8, T, scheme=scheme)
    with pytest.raises(
        ValueError,
        match="scheme 'post-norm' normalises every layer onto the sphere: the flow needs "
        r"space=Sphere\(\); got AttentionFlow on Euclidean",
    ):
        P.ResidualNetwork(P.AttentionFlow(attention), 8, T, scheme="post-norm")
    with pytest.raises(ValueError, match="got PreNormFlow on Euclidean"):
        P.ResidualNetwork(P.PreNormFlow(attention), 8, T, scheme="post-norm")
    layered = P.AttentionFlow(P.Layered(layers, T))
    with pytest.raises(ValueError, match="depth must be a multiple of the 3 layers"):
        P.ResidualNetwork(layered, 8, T)
    with pytest.raises(ValueError, match="horizon must equal the horizon of the Layered flow"):
        P.ResidualNetwork(layered, 6, 2 * T)
    with pytest.raises(TypeError, match="flow must be an AttentionFlow or a PreNormFlow"):
        P.ResidualNetwork(attention, 8, T)
    net = P.ResidualNetwork(P.AttentionFlow(attention, P.Sphere()), 4, T)
    with pytest.raises(ValueError, match="x0 must lie on the unit sphere"):
        net(2 * jnp.ones((N, D)))
    with pytest.raises(ValueError, match="x0 has a zero token"):
        P.ResidualNetwork(P.PreNormFlow(attention), 4, T)(jnp.zeros((N, D)))


def _smoke_config(**overrides):
    import sims

    return sims.list_experiments()["deep-limit"].quick(**overrides)


def test_deep_limit_experiment_writes_errors_slopes_and_figures(tmp_path):
    import sims

    out = sims.run(_smoke_config(), tmp_path / "run", animation=False)
    metrics = P.io.read_json(out / "metrics.json")
    assert metrics["depths"] == [8, 16, 32]
    residual = np.array(metrics["errors"]["residual"])
    assert np.all(np.diff(np.log(residual)) < 0)
    assert -1.2 <= metrics["slopes"]["residual"] <= -0.8
    assert metrics["orders"] == {"residual": 1}
    assert metrics["fitted_depths"] == {"residual": [8, 16, 32]}
    assert len(metrics["ts"]) == 9 and metrics["series"]["network_error"][0] == 0.0
    # the animated network's final error is the study's error at the same depth
    assert metrics["shallow"]["final_error"] == pytest.approx(residual[0], rel=1e-9)
    for name in ("convergence.png", "depth_error.png", "trajectory.npz", "network.npz"):
        assert (out / name).stat().st_size > 0
    with np.load(out / "network.npz") as saved:
        assert saved["xs"].shape == (9, 6, 3) and saved["xs"].dtype == np.float64


@pytest.mark.slow
def test_deep_limit_experiment_animates_network_beside_flow(tmp_path):
    import imageio.v3 as iio

    import sims

    out = sims.run(_smoke_config(), tmp_path / "run", gif=True)
    assert iio.improps(out / "animation.gif").shape[0] == 9


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(min_depth=0), "min_depth must be >= 1"),
        (dict(max_depth=8, min_depth=8), "max_depth must be >= 16"),
        (dict(horizon=0.0), "horizon must be > 0"),
        (dict(variants=("residual", "adam")), "variants must be among"),
        (dict(variants=("per-layer",), min_depth=6), "min_depth must be a multiple of pieces"),
    ],
)
def test_deep_limit_config_errors_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        _smoke_config(**overrides)
