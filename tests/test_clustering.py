"""Clustering: cluster metrics, the equiangular closed form, energies, phase diagrams."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import particles as P
from particles import metrics as M
from particles import studies as S
from particles.closedforms import equiangular_rate

NORMALIZATIONS = [P.Softmax(), P.Unnormalized()]


def _sphere_flow(d, beta, normalization):
    attention = P.Attention.identity(d, beta, normalization=normalization)
    return P.AttentionFlow(attention, P.Sphere())


def _clustered_cloud(rng, sizes, d, spread=1e-3):
    """Tight clusters of the given sizes around random centres on the sphere (numpy: no
    compilation in the tests that only need an input)."""
    centres = rng.standard_normal((len(sizes), d))
    x = np.repeat(centres / np.linalg.norm(centres, axis=1, keepdims=True), sizes, axis=0)
    x = x + spread * rng.standard_normal(x.shape)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rotation(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# --- metrics of one cloud ------------------------------------------------------------------


@jax.jit
def _metrics(x):
    """Every cloud metric at once: one compilation per cloud shape keeps the tests fast."""
    return {
        "count": M.cluster_count(x, 1e-2),
        "sizes": M.cluster_sizes(x, 1e-2),
        "centres": M.cluster_centres(x, 1e-2),
        "effective_rank": M.effective_rank(x),
        "diameter": M.diameter(x),
        "aligned_fraction": M.aligned_fraction(x, 1e-3),
        "min_inner_product": M.min_inner_product(x),
        "is_clustered": M.is_clustered(x, 1e-3),
    }


def test_metrics_of_known_configurations():
    # three clusters of sizes 3, 2, 1 at mutually orthogonal points: every number is exact
    e = jnp.eye(3)
    m = _metrics(jnp.stack([e[0], e[0], e[0], e[1], e[1], e[2]]))
    assert int(m["count"]) == 3
    np.testing.assert_array_equal(m["sizes"], [3, 0, 0, 2, 0, 1])
    centres = np.asarray(m["centres"])
    np.testing.assert_allclose(centres[[0, 3, 5]], e, atol=1e-7)
    np.testing.assert_array_equal(centres[[1, 2, 4]], 0)
    np.testing.assert_allclose(m["diameter"], np.sqrt(2), rtol=1e-6)
    # aligned pairs: 3*2 + 2*1 ordered pairs out of 6*5
    np.testing.assert_allclose(m["aligned_fraction"], 8 / 30, rtol=1e-6)
    assert float(m["min_inner_product"]) == 0.0
    assert not bool(m["is_clustered"])
    # the Gram eigenvalues are the cluster sizes 3, 2, 1
    p = np.array([3, 2, 1]) / 6
    np.testing.assert_allclose(m["effective_rank"], np.exp(-np.sum(p * np.log(p))), rtol=1e-5)


def test_effective_rank_counts_equal_orthogonal_clusters():
    # k clusters of 3 tokens at k orthonormal points, for k = 1..4
    clouds = jnp.stack(
        [jnp.repeat(jnp.eye(4)[jnp.arange(12) % k], 1, axis=0) for k in (1, 2, 3, 4)]
    )
    np.testing.assert_allclose(jax.jit(jax.vmap(M.effective_rank))(clouds), [1, 2, 3, 4], rtol=1e-5)


def test_one_cluster_metrics():
    m = _metrics(jnp.tile(jnp.array([[0.6, 0.8, 0.0]]), (5, 1)))
    assert int(m["count"]) == 1
    np.testing.assert_allclose(m["effective_rank"], 1.0, rtol=1e-6)
    assert float(m["diameter"]) == 0.0
    assert float(m["aligned_fraction"]) == 1.0
    assert bool(m["is_clustered"])


def test_cluster_metrics_invariant_to_permutations_and_rotations():
    rng = np.random.default_rng(0)
    x = _clustered_cloud(rng, [7, 5, 3, 1], 3)
    y = x[rng.permutation(x.shape[0])] @ _rotation(rng, 3).T
    mx, my = _metrics(jnp.asarray(x, jnp.float32)), _metrics(jnp.asarray(y, jnp.float32))
    assert int(mx["count"]) == int(my["count"]) == 4
    np.testing.assert_array_equal(np.sort(mx["sizes"]), np.sort(my["sizes"]))
    for name in ("effective_rank", "diameter", "aligned_fraction", "min_inner_product"):
        np.testing.assert_allclose(my[name], mx[name], rtol=1e-5, err_msg=name)


def test_metrics_jit_and_vmap(key):
    xs = jax.vmap(lambda k: P.clouds.sphere_uniform(k, 16, 3))(jax.random.split(key, 2))
    batched = jax.vmap(_metrics)(xs)
    for i, x in enumerate(xs):
        one = _metrics(x)
        for name, value in one.items():
            np.testing.assert_allclose(batched[name][i], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_time_to_one_cluster_is_the_first_time_it_stays_clustered():
    apart = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    together = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    ts = jnp.arange(5.0)
    # clustered at t = 1, apart again at t = 2, clustered from t = 3 on
    xs = jnp.stack([apart, together, apart, together, together])
    first = jax.jit(M.time_to_one_cluster)
    assert float(first(ts, xs)) == 3.0
    # not one cluster at the end: never
    assert np.isinf(float(first(ts, xs[::-1])))


# --- dynamics ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s2_runs():
    """One random cloud of 16 tokens on S^2 under SA and USA, beta = 1 (float64)."""
    x0 = P.clouds.sphere_uniform(jax.random.key(3), 16, 3)
    ts = jnp.linspace(0.0, 30.0, 121)
    return {
        repr(norm): P.simulate(_sphere_flow(3, 1.0, norm), x0, ts, rtol=1e-10, atol=1e-10)
        for norm in NORMALIZATIONS
    }


@pytest.mark.parametrize("normalization", NORMALIZATIONS, ids=repr)
def test_one_cluster_reached_on_s2(s2_runs, normalization):
    # Geshkovski et al.: on S^2, Q = K = V = I, a random cloud collapses to one point
    traj = s2_runs[repr(normalization)]
    start, final = _metrics(traj.xs[0]), _metrics(traj.final)
    assert int(start["count"]) > 1
    assert int(final["count"]) == 1
    assert float(final["diameter"]) < 1e-3
    assert bool(final["is_clustered"])
    assert float(final["min_inner_product"]) > 1 - 1e-6
    np.testing.assert_allclose(final["effective_rank"], 1.0, atol=1e-5)
    t_one = float(jax.jit(M.time_to_one_cluster)(traj.ts, traj.xs, 1e-3))
    assert 1.0 < t_one < 30.0


@pytest.mark.parametrize("normalization", NORMALIZATIONS, ids=repr)
def test_energy_never_decreases(s2_runs, normalization):
    # USA is the gradient ascent of E_beta; SA ascends it in another metric
    traj, beta = s2_runs[repr(normalization)], 1.0
    energy = np.asarray(P.metrics.over_time(M.interaction_energy, traj.xs, beta))
    # the exact solution is monotone; the numerical one is within rtol = 1e-10 of it
    steps = np.diff(energy)
    assert steps.min() >= -1e-9 * energy.max(), steps.min()
    # and it does move, up to its maximum exp(beta) / (2 beta), reached at one cluster
    assert energy[-1] - energy[0] > 0.1 * energy[0]
    np.testing.assert_allclose(energy[-1], np.exp(beta) / (2 * beta), rtol=1e-6)


@pytest.mark.parametrize(
    ("normalization", "beta"),
    [
        (P.Unnormalized(), 1.0),
        (P.Unnormalized(), 4.0),
        (P.Softmax(), 1.0),
        (P.Softmax(), 0.25),
    ],
    ids=repr,
)
def test_equiangular_cloud_follows_closed_form(normalization, beta):
    n, d, rho0, t1 = 5, 5, -0.2, 5.0
    x0 = P.clouds.equiangular(n, d, rho0, key=jax.random.key(2))
    ts = jnp.linspace(0.0, t1, 11)
    traj = P.simulate(_sphere_flow(d, beta, normalization), x0, ts, rtol=1e-11, atol=1e-12)
    gram = np.asarray(jnp.einsum("tid,tjd->tij", traj.xs, traj.xs))
    pairs = gram[:, ~np.eye(n, dtype=bool)]
    # it stays equiangular ...
    assert np.max(pairs.max(axis=1) - pairs.min(axis=1)) < 1e-10
    # ... and rho follows the ODE, solved independently by scipy
    ref = solve_ivp(
        lambda t, r: np.asarray(equiangular_rate(r, beta, n, normalization=normalization)),
        (0.0, t1),
        [rho0],
        t_eval=np.asarray(ts),
        method="DOP853",
        rtol=1e-13,
        atol=1e-14,
    ).y[0]
    assert np.max(np.abs(pairs - ref[:, None])) < 1e-8
    assert ref[-1] - rho0 > 0.05  # rho actually moved towards 1


def test_equiangular_rate_for_two_tokens_is_the_two_particle_law():
    rho = jnp.linspace(-0.9, 0.9, 7)
    beta = 2.5
    np.testing.assert_allclose(
        equiangular_rate(rho, beta, 2, normalization=P.Unnormalized()),
        jnp.exp(beta * rho) * (1 - rho**2),
        rtol=1e-13,
    )
    np.testing.assert_allclose(
        equiangular_rate(rho, beta, 2, normalization=P.Softmax()),
        2 * (1 - rho**2) / (1 + jnp.exp(beta * (1 - rho))),
        rtol=1e-13,
    )
    # the default is softmax
    np.testing.assert_array_equal(
        equiangular_rate(rho, beta, 5), equiangular_rate(rho, beta, 5, normalization=P.Softmax())
    )
    # fixed points: one cluster and the regular simplex
    for norm in NORMALIZATIONS:
        assert float(equiangular_rate(1.0, beta, 7, normalization=norm)) == 0.0
        assert abs(float(equiangular_rate(-1 / 6, beta, 7, normalization=norm))) < 1e-14


def test_equiangular_rate_under_jit_and_vmap():
    rho = jnp.linspace(-0.2, 0.9, 5)
    betas = jnp.array([0.5, 1.0, 4.0])
    for norm in NORMALIZATIONS:
        batched = jax.jit(
            jax.vmap(lambda b, norm=norm: equiangular_rate(rho, b, 6, normalization=norm))
        )(betas)
        for i, b in enumerate(betas):
            np.testing.assert_allclose(
                batched[i], equiangular_rate(rho, b, 6, normalization=norm), rtol=1e-14
            )


def test_equiangular_rate_rejects_bad_input():
    with pytest.raises(
        NotImplementedError,
        match="the equiangular closed form is known for Softmax, Unnormalized; none is "
        "implemented for Sinkhorn",
    ):
        equiangular_rate(0.1, 1.0, 4, normalization=P.Sinkhorn())
    with pytest.raises(TypeError, match="normalization must be an object such as Softmax"):
        equiangular_rate(0.1, 1.0, 4, normalization="softmax")
    with pytest.raises(ValueError, match="n must be an int >= 2; got 1"):
        equiangular_rate(0.1, 1.0, 1)


# --- phase diagrams ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_diagram():
    """Softmax, n = 8 on S^2, 24 starts, three betas (float64, so that a member and the same
    run done alone agree to rounding)."""
    betas = jnp.array([0.5, 1.0, 16.0])
    ts = jnp.linspace(0.0, 12.0, 13)
    return S.phase_diagram(
        jax.random.key(0),
        betas,
        ts,
        n=8,
        d=3,
        runs=24,
        normalization=P.Softmax(),
        solver=diffrax.Tsit5(),
    )


def test_phase_diagram_probabilities(small_diagram):
    pd = small_diagram
    prob = np.asarray(pd.probability(1e-3))
    assert prob.shape == (3, 13)
    assert np.all((prob >= 0) & (prob <= 1))
    # no random start is one cluster at t = 0; small beta clusters, monotonically in t
    np.testing.assert_array_equal(prob[:, 0], 0)
    for row in prob[:2]:
        assert np.all(np.diff(row) >= 0), row
        assert row[-1] == 1.0
    # large beta: metastable, still several clusters at t = 12
    assert prob[2, -1] < 0.5
    assert np.all(pd.result == 0)
    err = np.asarray(pd.standard_error(1e-3))
    np.testing.assert_allclose(err, np.sqrt(prob * (1 - prob) / 24), rtol=1e-6)


def test_one_batch_per_beta_equals_one_batch_of_everything(small_diagram):
    # by_beta only changes how members are batched, never what each member computes
    pd = small_diagram
    one = S.phase_diagram(
        None, pd.betas, pd.ts, starts=pd.x0[:6], solver=diffrax.Tsit5(), by_beta=False
    )
    np.testing.assert_allclose(one.min_inner, pd.min_inner[:, :6], atol=1e-12)
    np.testing.assert_allclose(one.final, pd.final[:, :6], atol=1e-12)
    np.testing.assert_array_equal(one.num_steps, pd.num_steps[:, :6])


def test_ensemble_member_equals_solo_run(small_diagram):
    pd = small_diagram
    b, r = 1, 5
    x0 = pd.x0[r]
    # the starts are uniform random clouds drawn from the key, one per run
    np.testing.assert_array_equal(
        x0, P.clouds.sphere_uniform(jax.random.split(jax.random.key(0), 24)[r], 8, 3)
    )
    flow = _sphere_flow(3, float(pd.betas[b]), P.Softmax())
    solo = P.simulate(flow, x0, pd.ts, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        pd.min_inner[b, r], P.metrics.over_time(M.min_inner_product, solo.xs), atol=1e-12
    )
    np.testing.assert_allclose(pd.final[b, r], solo.final, atol=1e-12)
    assert int(pd.num_steps[b, r]) == int(solo.num_steps)
    # members stop at their own step counts: the batch is not one lock-stepped solve
    assert len(np.unique(np.asarray(pd.num_steps))) > 1


def test_phase_diagram_rejects_bad_input(key):
    ts = jnp.linspace(0.0, 1.0, 3)
    with pytest.raises(ValueError, match="betas must all be > 0"):
        S.phase_diagram(key, jnp.array([1.0, 0.0]), ts, n=4, runs=2)
    with pytest.raises(ValueError, match="betas must be a 1-d array"):
        S.phase_diagram(key, jnp.array(1.0), ts, n=4, runs=2)
    with pytest.raises(ValueError, match="runs must be an int >= 1"):
        S.phase_diagram(key, jnp.array([1.0]), ts, n=4, runs=0)
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        S.phase_diagram(key, jnp.array([1.0]), ts, n=1, runs=2)
    with pytest.raises(ValueError, match="ts must be strictly increasing"):
        S.phase_diagram(key, jnp.array([1.0]), jnp.array([0.0, 2.0, 1.0]), n=4, runs=2)
    with pytest.raises(
        NotImplementedError,
        match="the phase diagram is known for Softmax, Unnormalized; none is implemented for "
        "Sinkhorn",
    ):
        S.phase_diagram(key, jnp.array([1.0]), ts, n=4, runs=2, normalization=P.Sinkhorn())
    with pytest.raises(TypeError, match="normalization must be an object such as Softmax"):
        S.phase_diagram(key, jnp.array([1.0]), ts, n=4, runs=2, normalization="softmax")
    with pytest.raises(ValueError, match="solver Euler has no error estimate"):
        S.phase_diagram(key, jnp.array([1.0]), ts, n=4, runs=2, solver=diffrax.Euler())


@pytest.mark.slow
def test_phase_diagram_reports_failed_members(key):
    ts = jnp.linspace(0.0, 1.0, 3)
    with pytest.raises(RuntimeError, match="2 of 2 members failed"):
        S.phase_diagram(key, jnp.array([1.0]), ts, n=4, runs=2, max_steps=1)


# --- experiments ---------------------------------------------------------------------------


def _experiment(name):
    import sims

    return sims.get(name).config


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("clustering", {"betas": ()}, "betas must be a non-empty list"),
        ("clustering", {"eps": 0.0}, "eps must be > 0"),
        ("metastability", {"t_first": 5.0, "t1": 1.0}, "t_first must be < t1"),
        ("metastability", {"dims": (1,)}, "dims must be a non-empty list of values >= 2"),
        ("polytope", {"contrast_eigenvalue": 1.0}, "contrast_eigenvalue must be < 1"),
        ("causal", {"n": 1}, "n must be >= 2"),
        ("phase-diagram", {"runs": 0}, "runs must be > 0"),
        ("phase-diagram", {"beta_max_usa": 0.1}, "beta_max_usa must be >= beta_min"),
        ("phase-diagram", {"normalizations": ("sinkhorn",)}, "normalizations must be"),
    ],
)
def test_experiment_configs_reject_bad_values(name, params, message):
    with pytest.raises(ValueError, match=message):
        _experiment(name)(**params)


def test_phase_diagram_experiment_writes_probabilities(tmp_path):
    import sims

    # USA runs the same code path with another static option (and a second compilation):
    # covered by the slow smoke tests
    config = _experiment("phase-diagram")(
        n=6, runs=8, num_betas=2, beta_max=2.0, t1=6.0, frames=4, normalizations=("softmax",)
    )
    out = sims.run(config, tmp_path / "run", animation=False)
    metrics = P.io.read_json(out / "metrics.json")
    for name in ("SA",):
        numbers = metrics["phase_diagram"][name]
        p = np.asarray(numbers["probability"])
        assert p.shape == (2, 4)
        assert np.all((p >= 0) & (p <= 1))
        assert numbers["members"] == 16
        assert numbers["steps_min"] <= numbers["steps_median"] <= numbers["steps_max"]
        assert 0 < numbers["batch_efficiency"] <= 1
    with np.load(out / "phase_diagram.npz") as data:
        assert data["min_inner_SA"].shape == (2, 8, 4)
    assert (out / "phase_diagram.png").stat().st_size > 0
    assert (out / P.io.TRAJECTORY_FILE).exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("clustering", {"n": 8, "betas": (1.0,), "random_qkv": 1, "t1": 20.0, "frames": 11}),
        ("metastability", {"n": 8, "dims": (2,), "betas": (9.0,), "t1": 50.0, "frames": 11}),
        ("polytope", {"n": 8, "t1": 4.0, "frames": 11}),
        ("causal", {"n": 8, "betas": (1.0,), "t1": 20.0, "frames": 11}),
        ("phase-diagram", {"n": 6, "runs": 4, "num_betas": 2, "t1": 20.0, "frames": 11}),
    ],
)
def test_experiments_run_at_smoke_size(tmp_path, name, params):
    import sims

    out = sims.run(_experiment(name)(**params), tmp_path / "run", gif=True)
    metrics = P.io.read_json(out / "metrics.json")
    assert len(metrics["ts"]) == 11
    for values in metrics["series"].values():
        assert len(values) == 11
    assert (out / "animation.gif").stat().st_size > 0
    with np.load(out / "arrays.npz") as data:
        assert {"names"} < set(data.files)
    if name == "causal":
        # the first token sees only itself: it never moves
        assert max(metrics["first_token_displacement"].values()) < 1e-6
    if name == "clustering":
        assert metrics["final"]["clusters"]["SA beta=1"] == 1
    if name == "phase-diagram":
        for numbers in metrics["phase_diagram"].values():
            p = np.asarray(numbers["probability"])
            assert p.shape == (2, 11) and np.all((p >= 0) & (p <= 1))
