"""Initial clouds, metrics and run I/O."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particles as P
from particles import metrics


def test_sphere_uniform_is_on_sphere_and_centred(key):
    x = P.clouds.sphere_uniform(key, 20000, 3)
    np.testing.assert_allclose(jnp.linalg.norm(x, axis=1), 1, rtol=1e-6)
    # uniform on S^2: mean 0 and second moment I/3, each within ~5 standard errors
    assert float(jnp.abs(x.mean(0)).max()) < 5 / np.sqrt(3 * 20000)
    np.testing.assert_allclose(x.T @ x / 20000, np.eye(3) / 3, atol=0.01)
    np.testing.assert_array_equal(x, P.clouds.sphere_uniform(key, 20000, 3))


def test_gaussian_moments(key):
    mean = jnp.array([1.0, -2.0])
    cov = jnp.array([[2.0, 0.6], [0.6, 0.5]])
    x = P.clouds.gaussian(key, 50000, mean, cov)
    np.testing.assert_allclose(x.mean(0), mean, atol=0.03)
    np.testing.assert_allclose(jnp.cov(x.T), cov, atol=0.03)


def test_ball_and_cube(key):
    b = P.clouds.ball_uniform(key, 5000, 3, radius=2.0)
    r = jnp.linalg.norm(b, axis=1)
    assert float(r.max()) <= 2.0
    # P(|x| < r) = (r / R)^3: half the mass inside radius 2 * 0.5^(1/3)
    assert abs(float(jnp.mean(r < 2 * 0.5 ** (1 / 3))) - 0.5) < 0.03
    c = P.clouds.cube_uniform(key, 5000, 2, half_width=0.5)
    assert float(jnp.abs(c).max()) <= 0.5


@pytest.mark.parametrize("n, d, rho", [(5, 5, 0.3), (4, 3, -1 / 3), (6, 3, 1.0), (3, 8, -0.2)])
def test_equiangular_gram(n, d, rho, key):
    x = P.clouds.equiangular(n, d, rho, key=key)
    gram = np.asarray(x @ x.T)
    np.testing.assert_allclose(gram, (1 - rho) * np.eye(n) + rho, atol=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda k: P.clouds.sphere_uniform(k, 0, 3), "n must be a positive int"),
        (lambda k: P.clouds.sphere_uniform(k, 4, 2.5), "d must be a positive int"),
        (lambda k: P.clouds.equiangular(5, 3, 0.3), r"needs d >= 5"),
        (lambda k: P.clouds.equiangular(4, 4, -0.5), r"rho must lie in \[-1/\(n-1\), 1\]"),
        (lambda k: P.clouds.gaussian(k, 4, jnp.zeros(2), -jnp.eye(2)), "positive semidefinite"),
        (lambda k: P.clouds.gaussian(k, 4, jnp.zeros(2), jnp.eye(3)), r"cov must have shape"),
        (lambda k: P.clouds.ball_uniform(k, 4, 2, radius=0.0), "radius must be > 0"),
        (lambda k: P.clouds.from_array(jnp.ones(3)), r"x must have shape \(n, d\)"),
    ],
)
def test_cloud_errors(key, call, message):
    with pytest.raises(ValueError, match=message):
        call(key)


def test_cluster_count_and_labels(key):
    centres = jnp.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    noise = 1e-4 * jax.random.normal(key, (30, 3))
    x = jnp.repeat(centres, 10, axis=0) + noise
    assert int(metrics.cluster_count(x, 1e-2)) == 3
    assert int(metrics.cluster_count(x, 1e-6)) == 30
    labels = metrics.cluster_labels(x, 1e-2)
    np.testing.assert_array_equal(labels, np.repeat([0, 10, 20], 10))
    # a chain of points each within tol of the next is one component
    chain = jnp.stack([jnp.array([0.009 * i, 0.0]) for i in range(50)])
    assert int(metrics.cluster_count(chain, 1e-2)) == 1
    perm = jax.random.permutation(key, 30)
    assert int(metrics.cluster_count(x[perm], 1e-2)) == 3


def test_mean_cosine_and_energy_closed_forms():
    x = P.clouds.equiangular(4, 4, 0.25)
    np.testing.assert_allclose(metrics.mean_pairwise_cosine(x), 0.25, rtol=1e-12)
    np.testing.assert_allclose(metrics.mean_pairwise_cosine(jnp.ones((5, 3))), 1.0)
    beta = 3.0
    # E = 1/(2 beta n^2) (n e^beta + n(n-1) e^{beta rho})
    expected = (4 * np.exp(beta) + 12 * np.exp(beta * 0.25)) / (2 * beta * 16)
    np.testing.assert_allclose(metrics.interaction_energy(x, beta), expected, rtol=1e-12)
    np.testing.assert_allclose(
        metrics.interaction_energy(x, beta, kernel=P.DotProduct()), expected, rtol=1e-12
    )
    # weighted: E = 1/(2 beta) (sum_i w_i^2 e^beta + sum_{i != j} w_i w_j e^{beta rho})
    weights = jnp.array([0.1, 0.2, 0.3, 0.4])
    same = float(jnp.sum(weights**2))
    expected = (same * np.exp(beta) + (1 - same) * np.exp(beta * 0.25)) / (2 * beta)
    np.testing.assert_allclose(
        metrics.interaction_energy(x, beta, weights=weights), expected, rtol=1e-12
    )
    # a zero weight removes the token exactly
    weights = jnp.array([0.5, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(
        metrics.interaction_energy(x, beta, weights),
        metrics.interaction_energy(x[:2], beta),
        rtol=1e-14,
    )


def test_energy_dispatches_on_the_kernel():
    x = P.clouds.equiangular(4, 4, 0.25)
    with pytest.raises(
        NotImplementedError,
        match="no interaction energy is known for the L2 kernel: the attention flow is a "
        "gradient flow of E_beta for the DotProduct kernel",
    ):
        metrics.interaction_energy(x, 1.0, kernel=P.L2())


def test_energy_is_finite_at_large_beta_in_float32(float32):
    x = jnp.ones((4, 3)) / jnp.sqrt(3.0)
    assert x.dtype == jnp.float32
    e = metrics.interaction_energy(x, 80.0)
    assert e.dtype == jnp.float32
    np.testing.assert_allclose(e, np.exp(80.0) / 160, rtol=1e-5)


def test_trajectory_round_trip_is_exact(key, tmp_path):
    flow = P.AttentionFlow(P.Attention.identity(3, 2.0), P.Sphere())
    traj = P.simulate(flow, P.clouds.sphere_uniform(key, 8, 3), jnp.linspace(0, 1, 4))
    path = tmp_path / "t.npz"
    P.io.save_trajectory(path, traj)
    back = P.io.load_trajectory(path)
    for name in ("ts", "xs", "weights"):
        a, b = np.asarray(getattr(traj, name)), np.asarray(getattr(back, name))
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    for name in ("num_steps", "num_accepted", "num_rejected"):
        a, b = np.asarray(getattr(traj.stats, name)), np.asarray(getattr(back.stats, name))
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert back.result == traj.result


def test_run_round_trip_and_exact_json(tmp_path):
    config = {"beta": 0.1 + 0.2, "n": 3, "tiny": 1e-310, "inf": float("inf")}
    metrics = {"series": {"e": np.array([1 / 3, 2 / 3], dtype=np.float64)}}
    P.io.save_run(tmp_path / "run", config=config, metrics=metrics, arrays={"a": np.arange(3)})
    run = P.io.load_run(tmp_path / "run")
    assert run["config"]["beta"] == 0.1 + 0.2 and run["config"]["tiny"] == 1e-310
    assert run["metrics"]["series"]["e"] == [1 / 3, 2 / 3]
    np.testing.assert_array_equal(run["arrays"]["a"], np.arange(3))
    assert run["trajectory"] is None


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        P.io.load_run(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
        P.io.load_run(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text(json.dumps({}))
    (tmp_path / "bad" / "trajectory.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"trajectory.npz: not a readable trajectory file"):
        P.io.load_run(tmp_path / "bad")
