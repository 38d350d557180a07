"""A new attention kernel is one class, defined here and nowhere in the library.

The cosine-similarity kernel $s_\\beta(q, k) = \\beta \\langle q, k\\rangle / (|q| |k|)$ is a
subclass of `AbstractKernel` with only its pointwise `log_kernel`. It runs through attention
(self and cross, blocked or not, one or several heads), `simulate`, the Lipschitz estimate and
a plot, and every closed form that exists only for the kernels shipped with the library says
so, naming it.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest

import particles as P
from particles import meanfield, metrics, regularity
from particles.attention import AbstractKernel


class Cosine(AbstractKernel):
    """Cosine similarity: $k(x, y) = \\exp(\\beta \\cos\\angle(Qx, Ky))$."""

    def log_kernel(self, beta, q, k):
        return beta * jnp.dot(q, k) / (jnp.linalg.norm(q) * jnp.linalg.norm(k))


N, D, BETA = 7, 3, 2.5


def _softmax_rows(logits, weights):
    """$A_{ij} = w_j e^{s_{ij}} / \\sum_l w_l e^{s_{il}}$, in NumPy."""
    e = weights[None, :] * np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _cosine_logits(beta, queries, keys):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    k = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    return beta * q @ k.T


def _reference(attention, queries, context, weights):
    """Multi-head cosine attention written out in NumPy: (matrices (H, q, n), velocities)."""
    Q, K, V = (np.asarray(a) for a in (attention.Q, attention.K, attention.V))
    queries, context, weights = (np.asarray(a) for a in (queries, context, weights))
    beta = float(attention.beta)
    matrices = np.stack(
        [
            _softmax_rows(_cosine_logits(beta, queries @ Q[h].T, context @ K[h].T), weights)
            for h in range(Q.shape[0])
        ]
    )
    velocity = sum(matrices[h] @ (context @ V[h].T) for h in range(Q.shape[0]))
    return matrices, velocity


@pytest.fixture
def parts(key):
    kx, kw, kq, ka = jax.random.split(key, 4)
    x = jax.random.normal(kx, (N, D))
    weights = jax.random.uniform(kw, (N,), minval=0.5, maxval=1.5)
    weights = weights / jnp.sum(weights)
    queries = jax.random.normal(kq, (4, D))
    return ka, x, weights, queries


@pytest.mark.parametrize("heads", [1, 3])
def test_self_attention_matches_numpy_and_rows_sum_to_one(parts, heads):
    ka, x, weights, _ = parts
    attention = P.Attention.random(ka, D, heads=heads, beta=BETA, kernel=Cosine())
    matrices, velocity = _reference(attention, x, x, weights)
    A = attention.matrix(x, weights)
    assert A.shape == (heads, N, N)
    np.testing.assert_allclose(jnp.sum(A, axis=-1), 1.0, rtol=0, atol=1e-14)
    np.testing.assert_allclose(A, matrices, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(attention(x, weights), velocity, rtol=1e-12, atol=1e-14)
    # the blocked reduction (blocks of 3 queries) evaluates the same pointwise kernel
    blocked = P.Attention(
        attention.Q, attention.K, attention.V, BETA, kernel=Cosine(), block_size=3
    )
    np.testing.assert_allclose(blocked(x, weights), velocity, rtol=1e-12, atol=1e-14)
    # under jit and vmap over clouds
    jitted = eqx.filter_jit(lambda a, y: a(y))(attention, x)
    np.testing.assert_allclose(jitted, attention(x), rtol=1e-14, atol=1e-15)
    batch = jnp.stack([x, 2 * x[::-1]])
    batched = jax.vmap(attention)(batch)
    np.testing.assert_allclose(batched[1], attention(2 * x[::-1]), rtol=1e-13, atol=1e-15)


def test_cross_attention_matches_numpy(parts):
    ka, x, weights, queries = parts
    attention = P.Attention.random(ka, D, heads=2, beta=BETA, kernel=Cosine())
    _, velocity = _reference(attention, queries, x, weights)
    out = attention.cross(queries, x, weights)
    assert out.shape == (4, D)
    np.testing.assert_allclose(out, velocity, rtol=1e-12, atol=1e-14)
    # the kernel sees directions only: scaling a query or a key changes nothing
    np.testing.assert_allclose(
        attention.cross(3.0 * queries, x, weights), out, rtol=1e-12, atol=1e-14
    )


def test_unnormalized_cosine_attention_matches_numpy(parts):
    ka, x, weights, _ = parts
    attention = P.Attention.random(
        ka, D, beta=BETA, kernel=Cosine(), normalization=P.Unnormalized()
    )
    Q, K = np.asarray(attention.Q[0]), np.asarray(attention.K[0])
    expected = np.asarray(weights)[None, :] * np.exp(
        _cosine_logits(BETA, np.asarray(x) @ Q.T, np.asarray(x) @ K.T)
    )
    np.testing.assert_allclose(attention.matrix(x, weights)[0], expected, rtol=1e-12)


def test_simulate_on_the_sphere(key):
    # With Q = K = I and unit tokens, cos(x_i, x_j) = <x_i, x_j>: the cosine flow on the
    # sphere is the dot-product flow, so the two trajectories agree to the solver tolerance.
    x0 = P.clouds.sphere_uniform(key, 12, D)
    ts = jnp.linspace(0.0, 5.0, 11)
    options = dict(solver=diffrax.Dopri5(), rtol=1e-10, atol=1e-10)
    cosine = P.AttentionFlow(P.Attention.identity(D, BETA, kernel=Cosine()), P.Sphere())
    dot = P.AttentionFlow(P.Attention.identity(D, BETA), P.Sphere())
    traj = P.simulate(cosine, x0, ts, **options)
    assert traj.xs.shape == (11, 12, D)
    assert float(jnp.max(P.sphere_drift(traj.xs))) < 1e-9
    np.testing.assert_allclose(traj.xs, P.simulate(dot, x0, ts, **options).xs, atol=1e-8)
    # and the tokens moved: the cloud contracts towards clusters
    assert (
        float(metrics.mean_pairwise_cosine(traj.final))
        > float(metrics.mean_pairwise_cosine(x0)) + 0.1
    )


def test_lipschitz_estimate_agrees_with_the_dense_jacobian(parts):
    ka, x, weights, _ = parts
    attention = P.Attention.random(ka, D, heads=2, beta=BETA, kernel=Cosine())
    dense = float(regularity.lipschitz_dense(attention, x, weights))
    assert dense > 0
    for method in regularity.METHODS:
        estimate = regularity.lipschitz(attention, x, weights, method=method, tol=1e-10)
        assert bool(estimate.converged), method
        np.testing.assert_allclose(float(estimate.value), dense, rtol=1e-8, err_msg=method)


def test_plot_of_a_cosine_trajectory_renders(key, tmp_path):
    x0 = P.clouds.sphere_uniform(key, 10, D)
    flow = P.AttentionFlow(P.Attention.identity(D, BETA, kernel=Cosine()), P.Sphere())
    traj = P.simulate(flow, x0, jnp.linspace(0.0, 2.0, 5))
    from particles import plot

    fig = plot.snapshots(traj.ts, traj.xs, [0, 2, 4])
    try:
        assert len(fig.axes) == 3
        fig.savefig(tmp_path / "cosine.png", dpi=40)
        assert (tmp_path / "cosine.png").stat().st_size > 1000
    finally:
        plt.close(fig)


def test_closed_forms_name_the_kernel_they_do_not_know(parts):
    ka, x, _, _ = parts
    attention = P.Attention.random(ka, D, beta=BETA, kernel=Cosine())
    with pytest.raises(
        NotImplementedError,
        match="the Gaussian mean-field closed form is known for DotProduct, L2; none is "
        "implemented for Cosine",
    ):
        meanfield.affine_field(attention, jnp.zeros(D), jnp.eye(D))
    with pytest.raises(
        NotImplementedError, match="no interaction energy is known for the Cosine kernel"
    ):
        metrics.interaction_energy(x, BETA, kernel=Cosine())
    with pytest.raises(
        NotImplementedError,
        match="lipschitz_bound is known for the kernels DotProduct, L2; none is implemented "
        "for the Cosine kernel",
    ):
        regularity.lipschitz_bound(attention, N, 1.0)
