"""The attention variants (linear / elu + 1, Performer random features, additive scoring,
rotary positions) against naive NumPy implementations, through the blocked reduction, the
flows, the networks, the Lipschitz estimates and the plots; linear attention's O(n) form
against its closed form; the random-feature estimator's bias, variance and m^{-1/2}
convergence; rotary invariance to a common shift of positions.
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
from particles import meanfield, metrics, networks, regularity
from particles.attention import linear_attention

N, D, BETA = 9, 4, 1.5
NAMES = ("linear", "performer", "additive", "rotary")


def make_kernel(name, key, d_k=D):
    if name == "linear":
        return P.Linear()
    if name == "performer":
        return P.Performer.random(key, d_k, 16)
    if name == "additive":
        return P.Additive.random(key, d_k, 5)
    return P.Rotary(base=3.0, start=2.0)


# ---- naive NumPy references: one pair at a time ------------------------------------------


def _elu1(u):
    return np.where(u > 0, u + 1, np.exp(np.minimum(u, 0)))


def _rotation(p, dk, base):
    R = np.eye(dk)
    for r in range(dk // 2):
        a = p * base ** (-2 * r / (2 * (dk // 2)))
        R[2 * r : 2 * r + 2, 2 * r : 2 * r + 2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return R


def naive_logit(kernel, beta, q, k, i, j):
    """$s_\\beta(q_i, k_j)$ from the papers' formulas, one pair, tokens at indices i, j."""
    if isinstance(kernel, P.Linear):
        u, v = np.sqrt(beta) * q, np.sqrt(beta) * k
        return np.log(_elu1(u) @ _elu1(v))
    if isinstance(kernel, P.Performer):
        u, v = np.sqrt(beta) * q, np.sqrt(beta) * k
        om = np.asarray(kernel.omega)
        return np.log(np.mean(np.exp(om @ (u + v) - (u @ u + v @ v) / 2)))
    if isinstance(kernel, P.Additive):
        W1, W2, a = (np.asarray(t) for t in (kernel.W1, kernel.W2, kernel.a))
        return beta * a @ np.tanh(W1 @ q + W2 @ k)
    start = float(kernel.start)
    Ri, Rj = (_rotation(start + t, q.size, kernel.base) for t in (i, j))
    return beta * (Ri @ q) @ (Rj @ k)


def naive_attention(attention, queries, context, weights, *, causal=False, unnormalized=False):
    """(matrices (H, q, n), velocities (q, d)) with every logit from `naive_logit`."""
    Q, K, V = (np.asarray(a) for a in (attention.Q, attention.K, attention.V))
    queries, context, w = (np.asarray(a) for a in (queries, context, weights))
    beta = float(attention.beta)
    mats = []
    for h in range(Q.shape[0]):
        qf, kf = queries @ Q[h].T, context @ K[h].T
        s = np.array(
            [
                [naive_logit(attention.kernel, beta, qf[i], kf[j], i, j) for j in range(len(kf))]
                for i in range(len(qf))
            ]
        )
        a = w[None, :] * np.exp(s)
        if causal:
            a = np.tril(a)
        if not unnormalized:
            a = a / a.sum(axis=1, keepdims=True)
        mats.append(a)
    mats = np.stack(mats)
    return mats, sum(mats[h] @ (context @ V[h].T) for h in range(Q.shape[0]))


@pytest.fixture
def parts(key):
    kx, kw, kq, ka, kk = jax.random.split(key, 5)
    x = jax.random.normal(kx, (N, D))
    weights = jax.random.uniform(kw, (N,), minval=0.5, maxval=1.5)
    return kk, ka, x, weights / jnp.sum(weights), jax.random.normal(kq, (5, D))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("heads", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_kernel_matches_the_naive_formula(parts, name, heads):
    kk, ka, x, weights, queries = parts
    kernel = make_kernel(name, kk)
    attention = P.Attention.random(ka, D, heads=heads, beta=BETA, kernel=kernel)
    mats, velocity = naive_attention(attention, x, x, weights)
    A = attention.matrix(x, weights)
    np.testing.assert_allclose(jnp.sum(A, axis=-1), 1.0, atol=1e-14)
    np.testing.assert_allclose(A, mats, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(attention(x, weights), velocity, rtol=1e-11, atol=1e-14)
    # the pointwise log_kernel is the same function as the tiled logits (a positional
    # kernel's features end with the token's position)
    place = P.attention._positions.with_positions
    qf = place(kernel, x @ attention.Q[0].T)
    kf = place(kernel, x @ attention.K[0].T)
    tile = kernel.logits(attention.beta, qf[:3], kf)
    np.testing.assert_allclose(
        kernel.log_kernel(attention.beta, qf[1], kf[4]), tile[1, 4], rtol=1e-13
    )
    # cross-attention: queries at their own positions 0..q-1
    _, cross = naive_attention(attention, queries, x, weights)
    np.testing.assert_allclose(attention.cross(queries, x, weights), cross, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_causal_and_unnormalized_match_the_naive_formula(parts, name):
    kk, ka, x, weights, _ = parts
    kernel = make_kernel(name, kk)
    causal = P.Attention.random(ka, D, beta=BETA, kernel=kernel, causal=True)
    np.testing.assert_allclose(
        causal(x, weights),
        naive_attention(causal, x, x, weights, causal=True)[1],
        rtol=1e-11,
        atol=1e-14,
    )
    usa = P.Attention.random(ka, D, beta=BETA, kernel=kernel, normalization=P.Unnormalized())
    np.testing.assert_allclose(
        usa(x, weights),
        naive_attention(usa, x, x, weights, unnormalized=True)[1],
        rtol=1e-11,
        atol=1e-14,
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "normalization,causal",
    [(P.Softmax(), False), (P.Softmax(), True), (P.Unnormalized(), True), (P.Sinkhorn(10), False)],
)
def test_blocked_equals_direct(parts, name, normalization, causal):
    kk, ka, x, weights, _ = parts
    options = dict(
        beta=BETA, kernel=make_kernel(name, kk), normalization=normalization, causal=causal
    )
    direct = P.Attention.random(ka, D, heads=2, **options)
    blocked = P.Attention.random(ka, D, heads=2, block_size=2, **options)
    np.testing.assert_allclose(blocked(x, weights), direct(x, weights), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_and_grad_over_the_kernel(parts, name):
    kk, ka, x, _, _ = parts
    attention = P.Attention.random(ka, D, beta=BETA, kernel=make_kernel(name, kk))
    out = attention(x)
    np.testing.assert_allclose(eqx.filter_jit(lambda a, y: a(y))(attention, x), out, rtol=1e-13)
    batched = jax.vmap(attention)(jnp.stack([x, 0.5 * x]))
    np.testing.assert_allclose(batched[1], attention(0.5 * x), rtol=1e-12, atol=1e-15)
    # the gradient in beta against a central finite difference
    f = lambda b: jnp.sum(eqx.tree_at(lambda a: a.beta, attention, b)(x) ** 2)  # noqa: E731
    g = jax.grad(f)(jnp.asarray(BETA))
    fd = (f(BETA + 1e-6) - f(BETA - 1e-6)) / 2e-6
    np.testing.assert_allclose(g, fd, rtol=1e-6)


# ---- linear attention: the O(n) evaluation -----------------------------------------------


@pytest.mark.parametrize("name", ["linear", "performer"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalization", [P.Softmax(), P.Unnormalized()])
def test_linear_attention_matches_its_closed_form(parts, name, causal, normalization):
    kk, ka, x, weights, _ = parts
    kernel = make_kernel(name, kk)
    attention = P.Attention.random(
        ka, D, heads=2, beta=BETA, kernel=kernel, normalization=normalization, causal=causal
    )
    # closed form: v_i = phi(q_i)^T S_i / phi(q_i)^T z_i, S_i = sum_{j (<= i)} w_j phi(k_j) (V x_j)^T
    expected = 0.0
    for h in range(2):
        qf, kf = x @ attention.Q[h].T, x @ attention.K[h].T
        fq = np.exp(np.asarray(kernel.log_features(attention.beta, qf)))
        fk = (
            np.exp(np.asarray(kernel.log_features(attention.beta, kf)))
            * np.asarray(weights)[:, None]
        )
        vals = np.asarray(x @ attention.V[h].T)
        rows = []
        for i in range(N):
            j = slice(0, i + 1) if causal else slice(None)
            S, z = fk[j].T @ vals[j], fk[j].sum(axis=0)
            rows.append(
                fq[i] @ S / (1.0 if isinstance(normalization, P.Unnormalized) else fq[i] @ z)
            )
        expected = expected + np.stack(rows)
    np.testing.assert_allclose(
        linear_attention(attention, x, weights), expected, rtol=1e-11, atol=1e-14
    )
    np.testing.assert_allclose(attention(x, weights), expected, rtol=1e-11, atol=1e-14)


def test_linear_attention_never_forms_an_n_by_n_array(key):
    n = 257  # a size no other axis has
    x = jax.random.normal(key, (n, D))
    attention = P.Attention.identity(D, BETA, kernel=P.Linear())
    jaxpr = jax.make_jaxpr(lambda y: linear_attention(attention, y))(x)
    shapes = [v.aval.shape for e in jaxpr.eqns for v in e.outvars]
    assert max(s.count(n) for s in shapes) == 1
    # while the generic evaluation in one tile of every query does form the (n, n) tile
    one_tile = P.Attention.identity(D, BETA, kernel=P.Linear(), block_size=n)
    generic = jax.make_jaxpr(one_tile)(x)
    assert max(v.aval.shape.count(n) for e in generic.eqns for v in e.outvars) == 2


def test_feature_rows_name_what_they_do_not_know(parts):
    kk, ka, x, _, _ = parts
    with pytest.raises(
        NotImplementedError,
        match=r"the O\(n\) evaluation needs a kernel with features \(Linear, Performer\); got Additive",
    ):
        linear_attention(P.Attention.random(ka, D, kernel=make_kernel("additive", kk)), x)
    with pytest.raises(
        NotImplementedError,
        match="the O\\(n\\) evaluation is known for Softmax and Unnormalized; none is "
        "implemented for Sinkhorn",
    ):
        linear_attention(P.Attention.identity(D, kernel=P.Linear(), normalization=P.Sinkhorn()), x)


# ---- Performer: unbiased, variance in closed form, m^{-1/2} --------------------------------


def _estimates(u, v, m, keys, orthogonal):
    def one(k):
        kernel = P.Performer.random(k, u.size, m, orthogonal=orthogonal)
        return jnp.exp(kernel.log_kernel(1.0, u, v))

    return np.asarray(jax.vmap(one)(keys))


@pytest.mark.parametrize("orthogonal", [False, True])
def test_random_features_are_unbiased_with_the_closed_form_variance(key, orthogonal):
    u = jnp.array([0.3, -0.2, 0.4, 0.1])
    v = jnp.array([0.2, 0.3, -0.1, 0.25])
    exact = float(jnp.exp(u @ v))
    m, trials = 4, 40_000
    est = _estimates(u, v, m, jax.random.split(key, trials), orthogonal)
    # Choromanski et al., Lemma 2: Var = e^{2 u.v} (e^{|u + v|^2} - 1) / m for i.i.d. features
    var_iid = float(jnp.exp(2 * u @ v) * (jnp.exp(jnp.sum((u + v) ** 2)) - 1) / m)
    stderr = np.sqrt(est.var() / trials)
    assert abs(est.mean() - exact) < 4 * stderr
    if orthogonal:
        # orthogonal frequencies within a block cut the variance (their Theorem 2); measured
        # 0.925 of the i.i.d. variance here, while the sample variance's own relative error
        # is about sqrt(2 / trials) = 0.7 %
        assert est.var() < 0.97 * var_iid
    else:
        np.testing.assert_allclose(est.var(), var_iid, rtol=0.05)


def test_random_features_converge_like_m_to_the_minus_half(key):
    # RMS error of the estimated kernel matrix e^{beta <x_i, x_j>} over 128 draws of m i.i.d.
    # features, against Lemma 2's exact RMS error sqrt(sum_ij Var_ij / m); and of the
    # softmax attention matrix built from it (no closed form: the slope is measured)
    kx, kk = jax.random.split(key)
    x = P.clouds.sphere_uniform(kx, 8, D)
    beta = 0.5
    u = jnp.sqrt(beta) * x
    exact = jnp.exp(u @ u.T)
    var = exact**2 * (jnp.exp(jnp.sum((u[:, None, :] + u[None, :, :]) ** 2, axis=-1)) - 1)
    target = P.Attention.identity(D, beta).matrix(x)[0]
    ms = np.array([16, 64, 256, 1024])
    kernel_rms, attention_rms = [], []
    for m in ms:

        @jax.vmap
        def errors(k, m=int(m)):
            kernel = P.Performer.random(k, D, m, orthogonal=False)
            K = jnp.exp(kernel.logits(beta, x, x))
            A = K / jnp.sum(K, axis=1, keepdims=True)
            return jnp.sum((K - exact) ** 2), jnp.sum((A - target) ** 2)

        ek, ea = errors(jax.random.split(kk, 128))
        kernel_rms.append(float(jnp.sqrt(jnp.mean(ek))))
        attention_rms.append(float(jnp.sqrt(jnp.mean(ea))))
        # 128 draws: the mean square is within about 25 % of its expectation
        np.testing.assert_allclose(kernel_rms[-1] ** 2, float(jnp.sum(var)) / m, rtol=0.3)
    slope, _ = metrics.fit_power_law(ms, np.array(kernel_rms))
    assert -0.56 < slope < -0.44, (slope, kernel_rms)
    slope, _ = metrics.fit_power_law(ms, np.array(attention_rms))
    assert -0.56 < slope < -0.44, (slope, attention_rms)


# ---- Rotary: positions ------------------------------------------------------------------


def test_rotary_is_invariant_to_a_common_shift_of_positions(parts):
    kk, ka, x, weights, _ = parts
    for base in (P.DotProduct(), P.L2()):
        at = lambda s, base=base: P.Attention.random(  # noqa: E731
            ka, D, heads=2, beta=BETA, kernel=P.Rotary(base, start=s), causal=True
        )
        ref = at(0.0)(x, weights)
        for shift in (1.0, 37.5, 1000.0):
            np.testing.assert_allclose(at(shift)(x, weights), ref, rtol=1e-10, atol=1e-12)
    # and positions matter: rotary is not the plain dot-product kernel, nor
    # equivariant to a permutation of the tokens
    plain = P.Attention.random(ka, D, heads=2, beta=BETA)(x, weights)
    assert float(jnp.max(jnp.abs(ref - plain))) > 1e-2
    rot = P.Attention.random(ka, D, beta=BETA, kernel=P.Rotary())
    perm = jnp.arange(N)[::-1]
    assert float(jnp.max(jnp.abs(rot(x[perm])[perm[::-1]][::-1] - rot(x)))) > 1e-3


def test_rotary_logits_depend_on_the_index_difference_only(key):
    # one query and one key feature repeated at every position: s_ij = f(j - i), Toeplitz
    q, k = jax.random.normal(key, (2, 5))  # odd d_k: the last feature is not rotated
    kernel = P.Rotary()
    n = 7
    feats = lambda f: jnp.concatenate([jnp.tile(f, (n, 1)), jnp.arange(n.__float__())[:, None]], 1)  # noqa: E731
    s = np.asarray(kernel.logits(1.0, feats(q), feats(k)))
    for off in range(-n + 1, n):
        np.testing.assert_allclose(np.diagonal(s, off), np.diagonal(s, off)[0], rtol=1e-13)
    np.testing.assert_allclose(s[0, 0], q @ k, rtol=1e-13)


def test_rotary_shift_invariance_in_float32(float32, key):
    x = jax.random.normal(key, (N, D))
    at = lambda s: P.Attention.identity(D, BETA, kernel=P.Rotary(start=s))  # noqa: E731
    # float32 angles p * theta round to about 1e-7 * p: a shift by 100 moves the field by 1e-5
    np.testing.assert_allclose(at(100.0)(x), at(0.0)(x), atol=5e-5)


# ---- through flows, networks, regularity, plots ------------------------------------------


# one kernel in the default suite, every kernel under -m slow (three solves each)
@pytest.mark.parametrize(
    "name", [pytest.param(k, marks=pytest.mark.slow) if k != "rotary" else k for k in NAMES]
)
def test_flow_on_the_sphere_and_its_euler_network(key, name):
    kx, kk = jax.random.split(key)
    x0 = P.clouds.sphere_uniform(kx, 8, D)
    attention = P.Attention.identity(D, BETA, kernel=make_kernel(name, kk))
    flow = P.AttentionFlow(attention, P.Euclidean())
    ts = jnp.array([0.0, 1.0])
    traj = P.simulate(flow, x0, ts, solver=diffrax.Dopri8(), rtol=1e-11, atol=1e-11)
    sphere = P.simulate(P.AttentionFlow(attention, P.Sphere()), x0, ts, rtol=1e-8, atol=1e-8)
    assert float(jnp.max(P.sphere_drift(sphere.xs))) < 1e-6
    # the residual network is the Euler scheme: its error halves when the depth doubles
    errs = [
        float(jnp.max(jnp.abs(networks.ResidualNetwork(flow, L, 1.0).final(x0) - traj.final)))
        for L in (32, 64, 128)
    ]
    assert 1.8 < errs[0] / errs[1] < 2.2 and 1.9 < errs[1] / errs[2] < 2.1, errs


@pytest.mark.parametrize("name", NAMES)
def test_lipschitz_estimate_works_and_the_bound_names_the_kernel(parts, name):
    kk, ka, x, weights, _ = parts
    kernel = make_kernel(name, kk)
    attention = P.Attention.random(ka, D, beta=BETA, kernel=kernel)
    dense = float(regularity.lipschitz_dense(attention, x, weights))
    estimate = regularity.lipschitz(attention, x, weights, tol=1e-10)
    assert bool(estimate.converged)
    np.testing.assert_allclose(float(estimate.value), dense, rtol=1e-8)
    kname = type(kernel).__name__
    with pytest.raises(
        NotImplementedError,
        match=f"lipschitz_bound is known for the kernels DotProduct, L2; none is implemented for the {kname} kernel",
    ):
        regularity.lipschitz_bound(attention, N, 1.0)
    with pytest.raises(NotImplementedError, match=f"none is implemented for {kname}"):
        meanfield.affine_field(attention, jnp.zeros(D), jnp.eye(D))
    with pytest.raises(
        NotImplementedError, match=f"no interaction energy is known for the {kname} kernel"
    ):
        metrics.interaction_energy(x, BETA, kernel=kernel)


def test_variant_trajectories_plot(key, tmp_path):
    from particles import plot

    x0 = P.clouds.sphere_uniform(key, 10, 3)
    xs = []
    for name in NAMES:
        a = P.Attention.identity(3, 2.0, kernel=make_kernel(name, key, 3))
        xs.append(P.simulate(P.AttentionFlow(a, P.Sphere()), x0, jnp.linspace(0, 2, 3)).xs)
    fig = plot.final_state(np.linspace(0, 2, 3), [np.asarray(v) for v in xs], labels=list(NAMES))
    try:
        fig.savefig(tmp_path / "variants.png", dpi=40)
        assert (tmp_path / "variants.png").stat().st_size > 1000
    finally:
        plt.close(fig)


@pytest.mark.slow
def test_variants_experiment_at_quick(tmp_path):
    import json

    import sims
    from sims._quick import QUICK
    from sims.experiments.variants import Config

    config = Config(**QUICK["variants"])
    out = sims.run(config, tmp_path / "v", animation=False)
    saved = json.loads((out / "metrics.json").read_text())
    n = config.n
    assert saved["runs"] == list(Config().kernels)
    # the energy exists for the dot-product kernel only, and it never decreases
    assert list(saved["energy"]) == ["dot"]
    assert np.all(np.diff(saved["energy"]["dot"]) > -1e-5)
    for name in saved["runs"]:
        entropy = np.array(saved["series"][f"entropy [{name}]"])
        assert np.all((entropy >= 0) & (entropy <= np.log(n) + 1e-5))
        low, high = (np.array(saved["series"][f"entropy_{q} [{name}]"]) for q in ("low", "high"))
        assert np.all(low <= high) and np.all(low >= 0) and np.all(high <= np.log(n) + 1e-5)
        assert saved["series"][f"clusters [{name}]"][0] == n  # distinct starting tokens
    assert (out / "variants.png").stat().st_size > 10_000
