"""Property-based tests of the public API (hypothesis).

Random shapes, dtypes, weights (zeros included), beta over [1e-3, 1e2], NaN and inf in the
inputs. Every call either raises the documented error or returns a finite result that
satisfies the invariants: permutation equivariance, a weight of 2/n equals two copies of a
token, softmax rows sum to one, sphere clouds stay on the sphere.

The default suite runs a small example budget; `-m slow` runs the same properties with a
large one.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import particles as P

SMALL, LARGE = 10, 300

KERNELS = [P.DotProduct(), P.L2()]
NORMALIZATIONS = [P.Softmax(), P.Unnormalized(), P.Sinkhorn(50)]


def _both_budgets(strategy_kwargs, small=SMALL, large=LARGE):
    """Register a property twice: a small budget in the default suite, a large one slow."""

    def wrap(prop):
        common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
        quick = settings(max_examples=small, **common)(given(**strategy_kwargs)(prop))
        many = settings(max_examples=large, **common)(given(**strategy_kwargs)(prop))
        return quick, pytest.mark.slow(many)

    return wrap


@st.composite
def clouds(draw, min_n=1, max_n=10, max_d=4, sphere=False):
    """A cloud `(n, d)`, its dtype, and weights (some zero, at least one positive)."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(2 if sphere else 1, max_d))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    x = np.asarray(
        draw(
            st.lists(
                st.floats(-2.0, 2.0, allow_nan=False, width=32), min_size=n * d, max_size=n * d
            )
        ),
        dtype=np.float64,
    ).reshape(n, d)
    if sphere:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        # rows too short to normalise in float32 become the first basis vector
        x = np.where(norms > 1e-3, x / np.maximum(norms, 1e-3), np.eye(d)[0])
    raw = np.asarray(draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)), np.float64)
    zeros = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    # a weight is zero or at least 1e-6: subnormal weights would be zero in float32
    raw = np.where(zeros | (raw < 1e-6), 0.0, raw)
    if raw.sum() <= 1e-3:
        raw[draw(st.integers(0, n - 1))] = 1.0
    return x.astype(dtype), (raw / raw.sum()).astype(dtype)


betas = st.floats(1e-3, 1e2)


def _tolerance(dtype, beta):
    # float32 logits beta <q, k> carry an absolute error ~ eps beta |x|^2: the relative
    # error of the weights grows with beta
    eps = np.finfo(dtype).eps
    return dict(rtol=2e3 * eps * (1 + beta), atol=2e3 * eps * (1 + beta))


def _attention(d, beta, kernel, normalization, dtype):
    # documented: unnormalized values are O(e^beta) and overflow float32 past beta ~ 88
    assume(not (isinstance(normalization, P.Unnormalized) and dtype == np.float32 and beta > 80))
    eye = jnp.eye(d, dtype=dtype)
    return P.Attention(
        eye, eye, eye, jnp.asarray(beta, dtype), kernel=kernel, normalization=normalization
    )


@_both_budgets(
    dict(
        data=clouds(sphere=True),
        beta=betas,
        kernel=st.sampled_from(KERNELS),
        normalization=st.sampled_from(NORMALIZATIONS),
        seed=st.integers(0, 2**16),
    )
)
def _permutation_equivariance(data, beta, kernel, normalization, seed):
    x, w = data
    attention = _attention(x.shape[1], beta, kernel, normalization, x.dtype)
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    v = np.asarray(attention(jnp.asarray(x), jnp.asarray(w)))
    vp = np.asarray(attention(jnp.asarray(x[perm]), jnp.asarray(w[perm])))
    assert np.all(np.isfinite(v))
    np.testing.assert_allclose(vp, v[perm], **_tolerance(v.dtype, beta))


test_permutation_equivariance, test_permutation_equivariance_many = _permutation_equivariance


@_both_budgets(
    dict(
        data=clouds(max_n=8, sphere=True),
        beta=betas,
        kernel=st.sampled_from(KERNELS),
        normalization=st.sampled_from([P.Softmax(), P.Unnormalized()]),
        index=st.integers(0, 7),
    )
)
def _weight_two_over_n_is_two_copies(data, beta, kernel, normalization, index):
    # n + 1 uniform tokens, one of them twice == n tokens with that one weighted 2/(n + 1)
    x, _ = data
    n = x.shape[0]
    i = index % n
    attention = _attention(x.shape[1], beta, kernel, normalization, x.dtype)
    w = np.full(n, 1.0, np.float64)
    w[i] = 2.0
    w = (w / (n + 1)).astype(x.dtype)
    doubled = np.concatenate([x, x[i : i + 1]])
    v = np.asarray(attention(jnp.asarray(x), jnp.asarray(w)))
    u = np.asarray(attention(jnp.asarray(doubled)))[:n]
    assert np.all(np.isfinite(v))
    np.testing.assert_allclose(v, u, **_tolerance(v.dtype, beta))


test_weight_two_over_n_is_two_copies, test_weight_two_over_n_is_two_copies_many = (
    _weight_two_over_n_is_two_copies
)


@_both_budgets(
    dict(
        data=clouds(),
        beta=betas,
        kernel=st.sampled_from(KERNELS),
        normalization=st.sampled_from([P.Softmax(), P.Sinkhorn(50)]),
        causal=st.booleans(),
    )
)
def _rows_sum_to_one(data, beta, kernel, normalization, causal):
    x, w = data
    if causal and not normalization.supports_causal:
        with pytest.raises(ValueError, match="has no causal form"):
            P.Attention.identity(x.shape[1], beta, normalization=normalization, causal=True)
        return
    attention = P.Attention.identity(
        x.shape[1], beta, kernel=kernel, normalization=normalization, causal=causal
    )
    A = np.asarray(attention.matrix(jnp.asarray(x), jnp.asarray(w)))[0]
    assert np.all(np.isfinite(A)) and np.all(A >= 0)
    sums = A.sum(axis=1)
    if causal:
        # a row that sees no positive weight (all earlier tokens have w = 0) moves with
        # velocity zero: its row is zero, every other row sums to one
        sees = np.cumsum(w) > 0
        np.testing.assert_allclose(sums[sees], 1.0, rtol=1e-4)
        np.testing.assert_array_equal(sums[~sees], 0.0)
        assert np.all(np.triu(A, 1) == 0)
    else:
        np.testing.assert_allclose(sums, 1.0, rtol=1e-4)


test_rows_sum_to_one, test_rows_sum_to_one_many = _rows_sum_to_one


@jax.jit
def _sphere_solve(x0, beta):
    flow = P.AttentionFlow(P.Attention.identity(3, beta), P.Sphere())
    return P.simulate(flow, x0, jnp.linspace(0.0, 2.0, 5), solver=diffrax.Tsit5()).xs


@_both_budgets(dict(seed=st.integers(0, 2**31 - 1), beta=st.floats(1e-3, 30.0)), small=5, large=60)
def _sphere_clouds_stay_on_sphere(seed, beta):
    # one shape, so one compilation; beta is a traced leaf of the operator
    x0 = P.clouds.sphere_uniform(jax.random.key(seed), 16, 3)
    xs = np.asarray(_sphere_solve(x0, beta))
    assert np.all(np.isfinite(xs))
    np.testing.assert_allclose(np.linalg.norm(xs, axis=-1), 1.0, atol=1e-4)


test_sphere_clouds_stay_on_sphere, test_sphere_clouds_stay_on_sphere_many = (
    _sphere_clouds_stay_on_sphere
)


@_both_budgets(
    dict(
        data=clouds(),
        bad=st.sampled_from([np.nan, np.inf, -np.inf]),
        where=st.sampled_from(["x", "weights"]),
        index=st.integers(0, 40),
    )
)
def _nan_and_inf_are_refused(data, bad, where, index):
    x, w = data
    attention = P.Attention.identity(x.shape[1])
    if where == "x":
        x = x.copy()
        x.flat[index % x.size] = bad
        with pytest.raises(ValueError, match="x contains NaN or inf"):
            attention(jnp.asarray(x), jnp.asarray(w))
    else:
        w = w.copy()
        w[index % w.size] = bad
        with pytest.raises(ValueError, match="weights must be finite and nonnegative"):
            attention(jnp.asarray(x), jnp.asarray(w))


test_nan_and_inf_are_refused, test_nan_and_inf_are_refused_many = _nan_and_inf_are_refused


@_both_budgets(dict(beta=st.one_of(st.floats(max_value=0.0), st.just(float("nan")))))
def _nonpositive_beta_is_refused(beta):
    with pytest.raises(ValueError, match="beta must be > 0"):
        P.Attention.identity(2, beta)


test_nonpositive_beta_is_refused, test_nonpositive_beta_is_refused_many = (
    _nonpositive_beta_is_refused
)
