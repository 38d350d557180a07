"""The maximum-entropy view of softmax attention: the dual (temperature <-> expected score)
against the attention matrix, and the entropy of attention rows along the flow."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particles as P
from particles import metrics


@pytest.fixture
def setup(key):
    ka, kx, kw, kk = jax.random.split(key, 4)
    x = jax.random.normal(kx, (10, 3))
    w = jax.random.uniform(kw, (10,), minval=0.2, maxval=1.0)
    return ka, kk, x, w / jnp.sum(w)


@pytest.mark.parametrize("kernel", ["dot", "l2", "additive", "rotary"])
def test_the_dual_recovers_beta_from_the_attention_matrix(setup, kernel):
    ka, kk, x, w = setup
    kernel = {
        "dot": P.DotProduct(),
        "l2": P.L2(),
        "additive": P.Additive.random(kk, 3),
        "rotary": P.Rotary(base=5.0),
    }[kernel]
    beta = 2.3
    attention = P.Attention.random(ka, 3, heads=2, beta=beta, kernel=kernel)
    A = attention.matrix(x, w)
    s = metrics.attention_scores(attention, x)
    # the attention rows are the Gibbs rows of the scores at beta
    logits = beta * s + jnp.log(w)[None, None, :]
    np.testing.assert_allclose(A, jax.nn.softmax(logits, axis=-1), rtol=1e-12, atol=1e-15)
    # temperature -> expected score, read off the matrix
    E = jnp.sum(A * s, axis=-1)
    np.testing.assert_allclose(metrics.expected_score(s, beta, w), E, rtol=1e-12)
    # expected score -> temperature: every row gives back beta
    recovered = jax.vmap(jax.vmap(lambda r, e: metrics.maxent_beta(r, e, w)))(s, E)
    np.testing.assert_allclose(recovered, beta, rtol=1e-9)
    # the dual's optimal value is the relative entropy -KL(A_i || w) of each row
    kl = jnp.sum(A * (jnp.log(A) - jnp.log(w)[None, None, :]), axis=-1)
    np.testing.assert_allclose(metrics.maxent_value(s, beta, w), -kl, rtol=1e-10, atol=1e-13)


def test_attention_rows_have_maximal_entropy_under_the_constraint(setup):
    ka, _, x, w = setup
    attention = P.Attention.random(ka, 3, beta=1.7)
    A = np.asarray(attention.matrix(x, w)[0])
    s = np.asarray(metrics.attention_scores(attention, x)[0])
    rng = np.random.default_rng(0)
    for i in range(A.shape[0]):
        # perturbations keeping sum p = 1 and sum p s = E: orthogonal to 1 and s_i
        basis = np.linalg.qr(np.stack([np.ones(10), s[i]], axis=1), mode="complete")[0][:, 2:]
        best = -np.sum(A[i] * np.log(A[i] / np.asarray(w)))
        for _ in range(20):
            delta = basis @ rng.normal(size=8)
            delta *= 0.5 * A[i].min() / np.abs(delta).max()
            p = A[i] + delta
            np.testing.assert_allclose([p.sum(), p @ s[i]], [1.0, A[i] @ s[i]], rtol=1e-12)
            assert -np.sum(p * np.log(p / np.asarray(w))) < best


def test_expected_score_increases_with_beta_at_the_rate_of_the_variance(setup):
    ka, _, x, w = setup
    s = metrics.attention_scores(P.Attention.random(ka, 3), x)[0, 0]
    betas = jnp.linspace(-3.0, 3.0, 13)
    E = jax.vmap(lambda b: metrics.expected_score(s, b, w))(betas)
    assert bool(jnp.all(jnp.diff(E) > 0))
    # dE/dbeta = Var_beta(s), the dual's second derivative
    p = jax.nn.softmax(1.2 * s + jnp.log(w))
    var = jnp.sum(p * s**2) - jnp.sum(p * s) ** 2
    np.testing.assert_allclose(jax.grad(metrics.expected_score, 1)(s, 1.2, w), var, rtol=1e-12)
    # beta = 0 is the prior's mean; the extremes of the scores are unreachable
    np.testing.assert_allclose(metrics.expected_score(s, 0.0, w), jnp.sum(w * s), rtol=1e-13)
    assert float(metrics.maxent_beta(s, jnp.sum(w * s), w)) == pytest.approx(0.0, abs=1e-12)
    assert float(metrics.maxent_beta(s, jnp.max(s), w)) == np.inf
    assert float(metrics.maxent_beta(s, jnp.min(s), w)) == -np.inf
    np.testing.assert_allclose(
        metrics.maxent_beta(s, metrics.expected_score(s, -2.0, w), w), -2.0, rtol=1e-9
    )


def test_row_entropy_of_exact_clusters():
    # k tight clusters of sizes m at orthogonal directions: at large beta a row spreads
    # evenly over its own cluster, H = log m; one cluster: every score equal, H = log n
    e = jnp.eye(3)
    sizes = [2, 3, 5]
    x = jnp.concatenate([jnp.tile(e[c], (m, 1)) for c, m in enumerate(sizes)])
    H = metrics.attention_entropy(P.Attention.identity(3, 40.0), x)[0]
    np.testing.assert_allclose(H, np.repeat(np.log(sizes), sizes), atol=1e-12)
    H = metrics.attention_entropy(P.Attention.identity(3, 40.0), jnp.tile(e[0], (7, 1)))
    np.testing.assert_allclose(H, np.log(7), rtol=1e-14)
    np.testing.assert_allclose(metrics.row_entropy(jnp.array([0.5, 0.5, 0.0])), np.log(2))


def test_row_entropy_along_the_flow_as_clusters_form(key):
    # beta = 9 on S^2: the cloud settles into metastable clusters; each row's entropy
    # approaches log(size of its cluster), up to the weight leaking to other clusters
    x0 = P.clouds.sphere_uniform(key, 24, 3)
    attention = P.Attention.identity(3, 9.0)
    ts = jnp.linspace(0.0, 30.0, 7)
    traj = P.simulate(P.AttentionFlow(attention, P.Sphere()), x0, ts)
    H = metrics.over_time(lambda x: metrics.attention_entropy(attention, x)[0], traj.xs)
    assert H.shape == (7, 24)
    H = np.asarray(H)
    labels = metrics.cluster_labels(traj.final, 1e-2)
    m = np.asarray(metrics.cluster_sizes(traj.final, 1e-2)[labels])
    assert int(metrics.cluster_count(traj.final, 1e-2)) > 1
    # grouping the row into its own cluster (mass 1 - eps) and the rest (mass eps):
    # H = h(eps) + (1 - eps) H_in + eps H_out, with H_in <= log m, H_out <= log(n - m), and
    # H_in = log m up to the cluster's width (tol 1e-2: scores equal to 1e-4)
    A = np.asarray(attention.matrix(traj.final)[0])
    own = np.asarray(labels)[:, None] == np.asarray(labels)[None, :]
    eps = np.sum(np.where(own, 0, A), axis=1)
    assert eps.max() < 0.05  # the clusters have separated
    h = -eps * np.log(eps) - (1 - eps) * np.log1p(-eps)
    upper = h + (1 - eps) * np.log(m) + eps * np.log(24 - m)
    H = H[-1]
    assert np.all(H <= upper + 1e-12) and np.all(H >= (1 - eps) * np.log(m) - 1e-3)
    # the mean entropy fell while the clusters formed
    assert float(jnp.mean(H)) < np.log(24) - 1
    # at beta = 1 the cloud merges into one cluster: every row becomes uniform, H = log n
    one = P.Attention.identity(3, 1.0)
    final = P.simulate(P.AttentionFlow(one, P.Sphere()), x0, jnp.array([0.0, 40.0])).final
    np.testing.assert_allclose(metrics.attention_entropy(one, final), np.log(24), atol=1e-4)


def test_entropy_and_scores_name_what_they_do_not_know(setup):
    ka, _, x, _ = setup
    with pytest.raises(
        NotImplementedError,
        match="the maximum-entropy scores need logits linear in beta .*; the Linear kernel's "
        "are not",
    ):
        metrics.attention_scores(P.Attention.identity(3, kernel=P.Linear()), x)
    with pytest.raises(
        ValueError, match="Unnormalized rows do not sum to one: their entropy is not defined"
    ):
        metrics.attention_entropy(P.Attention.identity(3, normalization=P.Unnormalized()), x)


def test_entropy_panel_draws_the_saved_series():
    import matplotlib.pyplot as plt

    from particles import plot

    ts = np.linspace(0.0, 1.0, 5)
    mean = np.array([[2.0, 1.8, 1.5, 1.4, 1.4], [2.0, 2.1, 2.2, 2.3, 2.4]])
    ax = plot.entropy_panel(ts, mean, low=mean - 0.1, high=mean + 0.1, n=12, labels=["a", "b"])
    try:
        np.testing.assert_array_equal(ax.lines[0].get_ydata(), mean[0])
        np.testing.assert_array_equal(ax.lines[1].get_ydata(), mean[1])
        # the dashed reference is the uniform row's entropy log n
        np.testing.assert_allclose(ax.lines[2].get_ydata(), np.log(12))
        assert len(ax.collections) == 2  # one band per run
        fig = plot.variants_figure(
            ts,
            {"clusters": np.array([[5, 4, 3, 2, 2], [5, 5, 5, 5, 5]]), "entropy": mean},
            labels=["a", "b"],
            n=12,
            energy={"a": np.linspace(1, 2, 5)},
        )
        assert len(fig.axes) == 3
        np.testing.assert_array_equal(fig.axes[2].lines[0].get_ydata(), np.linspace(1, 2, 5))
    finally:
        plt.close("all")
