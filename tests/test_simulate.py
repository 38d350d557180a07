"""Flows and their integration: closed forms (docs/theory.md#5-clustering), invariants, errors."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import particles as P


def _two_particles(rho0):
    """Two unit vectors in R^3 with <x1, x2> = rho0."""
    theta = np.arccos(rho0)
    return jnp.array([[1.0, 0.0, 0.0], [np.cos(theta), np.sin(theta), 0.0]])


@pytest.mark.parametrize("normalization", [P.Unnormalized(), P.Softmax()], ids=repr)
@pytest.mark.parametrize("beta", [1.0, 5.0])
def test_two_particles_on_sphere_match_closed_form(normalization, beta):
    # USA: rho' = exp(beta rho)(1 - rho^2); SA: rho' = 2(1 - rho^2)/(1 + exp(beta(1 - rho)))
    if isinstance(normalization, P.Unnormalized):

        def rate(t, r):
            return np.exp(beta * r) * (1 - r**2)
    else:

        def rate(t, r):
            return 2 * (1 - r**2) / (1 + np.exp(beta * (1 - r)))

    rho0, t1 = 0.2, 4.0
    ts = np.linspace(0, t1, 31)
    ref = solve_ivp(rate, (0, t1), [rho0], t_eval=ts, rtol=1e-12, atol=1e-14, method="DOP853")
    flow = P.AttentionFlow(P.Attention.identity(3, beta, normalization=normalization), P.Sphere())
    traj = P.simulate(
        flow, _two_particles(rho0), ts, rtol=1e-12, atol=1e-12, solver=diffrax.Dopri8()
    )
    rho = np.asarray(jnp.sum(traj.xs[:, 0] * traj.xs[:, 1], axis=-1))
    np.testing.assert_allclose(rho, ref.y[0], rtol=1e-6)
    assert rho[-1] > rho0 + 0.1  # the two tokens really moved together


@pytest.mark.parametrize("normalization", [P.Unnormalized(), P.Softmax()], ids=repr)
def test_energy_never_decreases(key, normalization):
    # float64 so that the check resolves increments far below float32 rounding of the sum
    beta = 3.0
    x0 = P.clouds.sphere_uniform(key, 32, 3)
    flow = P.AttentionFlow(P.Attention.identity(3, beta, normalization=normalization), P.Sphere())
    traj = P.simulate(flow, x0, jnp.linspace(0, 8, 81), rtol=1e-10, atol=1e-10)
    energy = np.asarray(P.metrics.over_time(P.metrics.interaction_energy, traj.xs, beta))
    assert np.all(np.diff(energy) >= -1e-10 * energy[:-1])
    assert energy[-1] > 1.5 * energy[0]


def test_usa_velocity_is_projected_energy_gradient(key):
    # E = 1/(2 beta) sum_ij w_i w_j exp(beta <x_i, x_j>): the USA field is P grad_i E / w_i
    beta = 2.5
    k1, k2 = jax.random.split(key)
    x = P.clouds.sphere_uniform(k1, 9, 4)
    w = jax.random.uniform(k2, (9,), minval=0.5, maxval=1.0)
    w = w / w.sum()
    flow = P.AttentionFlow(
        P.Attention.identity(4, beta, normalization=P.Unnormalized()), P.Sphere()
    )
    grad = jax.grad(P.metrics.interaction_energy)(x, beta, w)
    expected = P.Sphere().tangent(x, grad / w[:, None])
    np.testing.assert_allclose(flow(0.0, x, w), expected, rtol=1e-12, atol=1e-13)


def test_sphere_trajectory_stays_on_sphere(key):
    x0 = P.clouds.sphere_uniform(key, 64, 3)
    flow = P.AttentionFlow(P.Attention.identity(3, 9.0), P.Sphere())
    traj = P.simulate(flow, x0, jnp.linspace(0, 10, 11), rtol=1e-6, atol=1e-6)
    assert float(P.sphere_drift(traj.xs).max()) < 1e-4
    assert int(P.metrics.cluster_count(traj.final, 1e-2)) < 10  # clustered


def test_trajectory_fields_and_stats(key):
    x0 = P.clouds.sphere_uniform(key, 8, 3)
    flow = P.AttentionFlow(P.Attention.identity(3, 1.0), P.Sphere())
    ts = jnp.linspace(0, 1, 5)
    traj = P.simulate(flow, x0, ts)
    assert traj.xs.shape == (5, 8, 3) and traj.weights.shape == (8,)
    np.testing.assert_allclose(traj.ts, ts)
    np.testing.assert_allclose(traj.xs[0], x0)
    assert int(traj.num_steps) == int(traj.stats.num_accepted) + int(traj.stats.num_rejected) > 0
    assert bool(traj.succeeded)


SOLVERS = [
    diffrax.Euler(),
    diffrax.Heun(),
    diffrax.Midpoint(),
    diffrax.Ralston(),
    diffrax.Bosh3(),
    diffrax.Dopri5(),
    diffrax.Dopri8(),
    diffrax.Tsit5(),
    diffrax.Kvaerno3(),
    diffrax.Kvaerno5(),
]


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
def test_every_solver_converges_to_the_same_answer(key, solver):
    euler = isinstance(solver, diffrax.Euler)
    x0 = P.clouds.sphere_uniform(key, 6, 3)
    flow = P.AttentionFlow(P.Attention.identity(3, 2.0), P.Sphere())
    ts = jnp.array([0.0, 1.0])
    ref = P.simulate(flow, x0, ts, rtol=1e-8, atol=1e-8, solver=diffrax.Dopri8()).final
    dt = 1e-3 if euler else None
    got = P.simulate(flow, x0, ts, solver=solver, dt=dt, rtol=1e-6, atol=1e-6).final
    np.testing.assert_allclose(got, ref, atol=5e-3 if euler else 1e-4)


def test_implicit_solver_takes_far_fewer_steps_on_stiff_unnormalized_attention(key):
    # USA at beta = 8 on S^2: once tokens gather, the cluster contracts at a rate ~ e^8, and
    # explicit steps must stay below ~1/e^8 for stability. The L-stable kvaerno3 is not
    # limited by stability; both agree to the tolerance.
    x0 = P.clouds.sphere_uniform(key, 12, 3)
    attention = P.Attention.identity(3, 8.0, normalization=P.Unnormalized())
    flow = P.AttentionFlow(attention, P.Sphere())
    ts = jnp.array([0.0, 10.0])
    explicit = P.simulate(flow, x0, ts, solver=diffrax.Tsit5(), rtol=1e-7, atol=1e-7)
    implicit = P.simulate(flow, x0, ts, solver=diffrax.Kvaerno3(), rtol=1e-7, atol=1e-7)
    assert int(explicit.num_steps) > 10 * int(implicit.num_steps)
    np.testing.assert_allclose(implicit.final, explicit.final, atol=1e-4)
    # a Newton failure is recovered only by a smaller step: no fixed steps
    with pytest.raises(ValueError, match="Kvaerno5 is implicit and needs adaptive steps"):
        P.simulate(flow, x0, ts, solver=diffrax.Kvaerno5(), dt=0.05)
    # in float32 the Newton iterations stall: refused up front
    with pytest.raises(ValueError, match="Kvaerno3 is implicit and needs float64"):
        P.simulate(flow, x0.astype(jnp.float32), ts, solver=diffrax.Kvaerno3())


def test_fixed_step_count(key):
    x0 = P.clouds.sphere_uniform(key, 6, 3)
    flow = P.AttentionFlow(P.Attention.identity(3, 2.0), P.Sphere())
    traj = P.simulate(flow, x0, jnp.array([0.0, 1.0]), solver=diffrax.Heun(), dt=0.125)
    assert int(traj.num_steps) == 8


def test_ensemble_member_equals_single_run(key):
    keys = jax.random.split(key, 3)
    flow = P.AttentionFlow(P.Attention.identity(3, 4.0), P.Sphere())
    ts = jnp.linspace(0, 2, 3)

    @jax.jit
    def one(k):
        return P.simulate(flow, P.clouds.sphere_uniform(k, 10, 3), ts).xs

    batch = jax.vmap(one)(keys)
    alone = P.simulate(flow, P.clouds.sphere_uniform(keys[1], 10, 3), ts).xs
    np.testing.assert_allclose(batch[1], alone, atol=2e-5)


def test_vmap_over_beta(key):
    x0 = P.clouds.sphere_uniform(key, 10, 3)
    ts = jnp.linspace(0, 2, 3)

    def run(beta):
        flow = P.AttentionFlow(P.Attention.identity(3, beta), P.Sphere())
        return P.simulate(flow, x0, ts).final

    finals = jax.vmap(run)(jnp.array([1.0, 8.0]))
    np.testing.assert_allclose(finals[1], run(8.0), atol=2e-5)
    assert not np.allclose(finals[0], finals[1], atol=1e-3)


def test_float64_when_enabled(key):
    x0 = P.clouds.sphere_uniform(key, 5, 3)
    assert x0.dtype == jnp.float64
    flow = P.AttentionFlow(P.Attention.identity(3, 1.0), P.Sphere())
    assert P.simulate(flow, x0, jnp.array([0.0, 1.0])).xs.dtype == jnp.float64


def test_feedforward_adds_to_velocity(key):
    k1, k2, k3 = jax.random.split(key, 3)
    attn = P.Attention.random(k1, 3)
    ff = P.FeedForward.random(k2, 3, hidden=8)
    x = jax.random.normal(k3, (7, 3))
    flow = P.AttentionFlow(attn, P.Euclidean(), ff)
    np.testing.assert_allclose(flow(0.0, x, None), attn(x) + ff(x), rtol=1e-6)
    np.testing.assert_allclose(ff(x), jax.nn.relu(x @ ff.W1.T + ff.b) @ ff.W2.T, rtol=1e-6)


def test_layered_weights_are_piecewise_constant(key):
    keys = jax.random.split(key, 4)
    layers = eqx.filter_vmap(lambda k: P.Attention.random(k, 3))(keys)
    flow = P.AttentionFlow(P.Layered(layers, horizon=2.0))
    x = jax.random.normal(key, (5, 3))
    for t, layer in ((0.0, 0), (0.49, 0), (0.5, 1), (1.2, 2), (1.99, 3), (2.0, 3)):
        single = P.Attention.random(keys[layer], 3)
        np.testing.assert_allclose(flow(t, x, None), single(x), rtol=1e-12)
    np.testing.assert_allclose(flow.jump_times(), [0.5, 1.0, 1.5])
    # adaptive solve across the jumps agrees with solving each layer on its own interval
    traj = P.simulate(flow, x, jnp.array([0.0, 2.0]), rtol=1e-10, atol=1e-10)
    y = x
    for layer in range(4):
        piece = P.AttentionFlow(P.Attention.random(keys[layer], 3))
        y = P.simulate(
            piece, y, jnp.array([0.5 * layer, 0.5 * (layer + 1)]), rtol=1e-10, atol=1e-10
        ).final
    np.testing.assert_allclose(traj.final, y, rtol=1e-7, atol=1e-8)


def test_max_steps_message(key):
    flow = P.AttentionFlow(P.Attention.identity(3, 2.0), P.Sphere())
    x0 = P.clouds.sphere_uniform(key, 6, 3)
    with pytest.raises(
        RuntimeError, match="took max_steps=3 steps before reaching t1=10.0. Raise max_steps"
    ):
        P.simulate(flow, x0, jnp.array([0.0, 10.0]), max_steps=3)
    traj = P.simulate(flow, x0, jnp.array([0.0, 10.0]), max_steps=3, throw=False)
    assert traj.result == diffrax.RESULTS.max_steps_reached
    with pytest.raises(Exception, match="took max_steps=3 steps"):
        jax.jit(lambda x: P.simulate(flow, x, jnp.array([0.0, 10.0]), max_steps=3).xs)(x0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(x0=jnp.ones((4, 3))), ValueError, "x0 must lie on the unit sphere"),
        (dict(ts=jnp.array([0.0, 1.0, 0.5])), ValueError, "ts must be strictly increasing"),
        (dict(ts=jnp.array([0.0])), ValueError, "ts must be a 1-d array of at least two"),
        (dict(solver="rk4"), TypeError, "solver must be a diffrax solver instance"),
        (dict(solver=diffrax.Euler()), ValueError, "solver Euler has no error estimate: pass dt="),
        (
            dict(stepsize_controller="pid"),
            TypeError,
            "stepsize_controller must be a diffrax step-size controller",
        ),
        (dict(dt=-0.1), ValueError, "dt must be > 0"),
        (dict(max_steps=0), ValueError, "max_steps must be a positive int"),
        (dict(weights=jnp.ones(4)), ValueError, "weights must sum to 1"),
        (dict(x0=jnp.full((4, 3), jnp.nan)), ValueError, "x0 contains NaN or inf"),
        (dict(flow=P.Attention.identity(3)), TypeError, "flow must be an AttentionFlow"),
    ],
)
def test_bad_input(key, kwargs, error, message):
    args = dict(
        flow=P.AttentionFlow(P.Attention.identity(3), P.Sphere()),
        x0=P.clouds.sphere_uniform(key, 4, 3),
        ts=jnp.array([0.0, 1.0]),
    )
    args.update(kwargs)
    with pytest.raises(error, match=message):
        P.simulate(args.pop("flow"), args.pop("x0"), args.pop("ts"), **args)


@pytest.mark.parametrize("horizon, sets, depth", [(3.7, 5, 5), (2.0, 4, 12), (1.3, 3, 3)])
def test_fixed_steps_respect_layer_boundaries(key, horizon, sets, depth):
    # a fixed-step Euler solve of the per-layer flow is the per-layer Euler network exactly:
    # every step sees the layer it starts in, even where k * dt rounds beside a boundary
    keys = jax.random.split(key, sets)
    layers = eqx.filter_vmap(lambda k: P.Attention.random(k, 3))(keys)
    flow = P.AttentionFlow(P.Layered(layers, horizon=horizon))
    x0 = jax.random.normal(key, (6, 3))
    net = P.networks.ResidualNetwork(flow, depth, horizon)(x0)
    dt = horizon / depth
    got = P.simulate(flow, x0, jnp.array([0.0, horizon]), solver=diffrax.Euler(), dt=dt)
    assert int(got.num_steps) == depth
    np.testing.assert_allclose(got.final, net[-1], rtol=1e-12, atol=1e-12)


def test_sphere_distance_is_accurate_at_every_angle():
    sphere = P.Sphere()
    for angle in (1e-12, 1e-6, 0.3, np.pi / 2, np.pi - 1e-9):
        x = jnp.array([1.0, 0.0, 0.0])
        y = jnp.array([np.cos(angle), np.sin(angle), 0.0])
        np.testing.assert_allclose(sphere.distance(x, y), angle, rtol=1e-9)


def test_a_nan_trial_step_is_rejected_not_raised(key):
    # USA at beta = 9: a first trial step of 5 overflows exp(beta <x, y>) to NaN; the
    # controller must reject it and shrink the step, not the vector field raise on NaN input
    x0 = P.clouds.sphere_uniform(jax.random.key(0), 16, 3)
    flow = P.AttentionFlow(P.Attention.identity(3, 9.0, normalization=P.Unnormalized()), P.Sphere())
    traj = P.simulate(flow, x0, jnp.array([0.0, 2.0]), dt0=5.0)
    assert bool(traj.succeeded) and int(traj.stats.num_rejected) > 0
    assert bool(jnp.all(jnp.isfinite(traj.xs)))


def test_progress_bar_counts_simulated_time(key, capsys):
    flow = P.AttentionFlow(P.Attention.identity(3, 1.0), P.Sphere())
    x0 = P.clouds.sphere_uniform(key, 8, 3)
    P.simulate(flow, x0, jnp.linspace(0.0, 2.5, 3), progress=True)
    err = capsys.readouterr().err
    assert "t = 2.5 of 2.5" in err
    assert "%" not in err and "/s" not in err


def test_stepsize_controller_object_is_used(key):
    flow = P.AttentionFlow(P.Attention.identity(3, 1.0), P.Sphere())
    x0 = P.clouds.sphere_uniform(key, 8, 3)
    ts = jnp.linspace(0.0, 1.0, 3)
    fixed = P.simulate(
        flow,
        x0,
        ts,
        solver=diffrax.Heun(),
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=0.05,
    )
    assert int(fixed.num_steps) == 20
    loose = P.simulate(
        flow, x0, ts, stepsize_controller=diffrax.PIDController(rtol=1e-2, atol=1e-2)
    )
    tight = P.simulate(
        flow, x0, ts, stepsize_controller=diffrax.PIDController(rtol=1e-9, atol=1e-9)
    )
    assert int(loose.num_steps) < int(tight.num_steps)
