"""Invertible residual attention: the certified fixed-point inverse, its geometric rate
h * Lip, a fold beyond h_max, and a deep float32 network round trip."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq

import particles as P
from particles import regularity
from particles.invertible import InvertibleNetwork, InvertibleResidual


def l2_attention(key, d, scale=1.0):
    """L2 softmax attention with tied keys K = Q and values V = U Q: the bound is global."""
    kq, ku = jax.random.split(key)
    Q = jax.random.normal(kq, (d, d)) / np.sqrt(d)
    U = scale * jax.random.normal(ku, (d, d)) / np.sqrt(d)
    return P.Attention(Q, Q, U @ Q, 1.0, kernel=P.L2())


def test_l2_layer_round_trip_within_the_certified_error(key):
    ka, kx = jax.random.split(key)
    attention, x = l2_attention(ka, 3), jax.random.normal(kx, (8, 3))
    lip = float(regularity.lipschitz_bound(attention, 8))
    layer = InvertibleResidual(attention, 0.9 / lip)
    y = layer(x)
    assert float(jnp.max(jnp.abs(y - x))) > 1e-2  # the layer moves the tokens
    result = layer.inverse(y, tol=1e-13)
    cert = result.certificate
    assert bool(cert.valid) and float(cert.radius) == np.inf
    np.testing.assert_allclose(float(cert.lipschitz), lip, rtol=1e-14)
    np.testing.assert_allclose(float(cert.rate), 0.9, rtol=1e-14)
    assert bool(result.converged)
    error = float(jnp.linalg.norm(result.x - x))
    assert error < 1e-12 and error <= float(result.error_bound)


def test_the_rate_is_h_lip_exactly_for_one_token():
    # One token: v(x) = V x, so X_{k+1} - X* = -h V (X_k - X*). With Q orthogonal and V = c Q
    # the library's bound is exactly c (W_0(0) = 0), the true constant: every step divides
    # the error by exactly h c.
    Q = jnp.linalg.qr(jax.random.normal(jax.random.key(1), (3, 3)))[0]
    c = 2.0
    attention = P.Attention(Q, Q, c * Q, 1.0, kernel=P.L2())
    np.testing.assert_allclose(float(regularity.lipschitz_bound(attention, 1)), c, rtol=1e-12)
    layer = InvertibleResidual(attention, 0.3)  # rate h c = 0.6
    x = jnp.array([[0.4, -1.0, 0.7]])
    errors = jnp.linalg.norm(layer.iterates(layer(x), num=30) - x[None], axis=(1, 2))
    np.testing.assert_allclose(errors[1:21] / errors[:20], 0.6, rtol=1e-9)


def test_rate_below_the_bound_and_at_the_jacobians_spectral_radius(key):
    ka, kx = jax.random.split(key)
    attention, x = l2_attention(ka, 3), jax.random.normal(kx, (8, 3))
    cert_rate = 0.9
    layer = InvertibleResidual(attention, cert_rate / regularity.lipschitz_bound(attention, 8))
    xs = layer.iterates(layer(x), num=12)
    errors = np.asarray(jnp.linalg.norm(xs - x[None], axis=(1, 2)))
    first = float(jnp.linalg.norm(xs[1] - xs[0]))
    k = np.arange(13)
    # Banach: |X_k - X*| <= q^k / (1 - q) |X_1 - X_0|, and each step contracts by <= q
    assert np.all(errors <= cert_rate**k / (1 - cert_rate) * first * (1 + 1e-12))
    assert np.all(errors[1:] <= cert_rate * errors[:-1])
    # the asymptotic rate is the spectral radius of h DF(X*), far below the bound here
    rho = float(
        jnp.max(jnp.abs(jnp.linalg.eigvals(layer.step * regularity.jacobian(attention, x))))
    )
    measured = (errors[10] / errors[1]) ** (1 / 9)
    assert rho < 0.1 and abs(measured / rho - 1) < 0.15, (measured, rho)


def test_dot_product_certificate_on_a_ball(key):
    ka, kx = jax.random.split(key)
    attention = P.Attention.random(ka, 3, beta=1.0)
    x = 0.5 * jax.random.normal(kx, (6, 3))
    radius = 2.0
    lip = float(regularity.lipschitz_bound(attention, 6, radius))
    layer = InvertibleResidual(attention, 0.5 / lip)
    y = layer(x)
    result = layer.inverse(y, radius=radius, tol=1e-13)
    assert bool(result.certificate.valid)
    np.testing.assert_allclose(float(result.certificate.rate), 0.5, rtol=1e-12)
    assert float(jnp.max(jnp.linalg.norm(result.x, axis=1))) <= radius
    assert float(jnp.linalg.norm(result.x - x)) < 1e-12
    # a ball the iteration may leave is no certificate: |y_i| + h sigma R > R
    assert not bool(
        layer.certificate(y, radius=0.5 * float(jnp.max(jnp.linalg.norm(y, axis=1)))).valid
    )
    # the default radius is the smallest ball mapped into itself
    sigma = float(jnp.linalg.norm(attention.V[0], 2))
    top = float(jnp.max(jnp.linalg.norm(y, axis=1)))
    np.testing.assert_allclose(float(layer.certificate(y).radius), top / (1 - layer.step * sigma))


def test_beyond_h_max_two_clouds_collide_and_the_iteration_fails():
    # d = 1, Q = K = 1, V = -1, two tokens (s, -s): the layer is s -> s (1 - h tanh(beta s^2)),
    # which folds once h > 1, so two different clouds share one image.
    beta, h = 1.0, 2.0
    attention = P.Attention(jnp.eye(1), jnp.eye(1), -jnp.eye(1), beta)
    g = lambda s: s * (1 - h * np.tanh(beta * s * s))  # noqa: E731
    s1 = 0.3
    s2 = brentq(lambda s: g(s) - g(s1), 0.5, 0.6)
    x1, x2 = jnp.array([[s1], [-s1]]), jnp.array([[s2], [-s2]])
    layer = InvertibleResidual(attention, h)
    np.testing.assert_allclose(layer(x1), layer(x2), rtol=0, atol=1e-14)
    assert s2 - s1 > 0.2
    # the certificate on the ball R = 1 holding both: h is beyond h_max
    cert = layer.certificate(layer(x1), radius=1.0)
    assert float(cert.step_max) < h and not bool(cert.valid)
    # the fixed-point iteration from the common image does not converge
    result = layer.inverse(layer(x1), max_iters=100)
    assert not bool(result.converged) and float(result.error_bound) == np.inf
    # below h_max the same clouds stay apart and each is recovered
    small = InvertibleResidual(attention, 0.9 * float(cert.step_max))
    assert float(jnp.max(jnp.abs(small(x1) - small(x2)))) > 0.1
    for x in (x1, x2):
        np.testing.assert_allclose(small.inverse(small(x), radius=1.0).x, x, atol=1e-13)


def test_deep_invertible_network_round_trip_in_float32(float32):
    d, n, depth = 4, 16, 24
    x = jax.random.normal(jax.random.key(7), (n, d), jnp.float32)
    layers = []
    for k in jax.random.split(jax.random.key(3), depth):
        attention = l2_attention(k, d)
        # each layer at 90 % of its certified step
        layers.append(InvertibleResidual(attention, 0.9 / regularity.lipschitz_bound(attention, n)))
    network = InvertibleNetwork(layers)
    y = network(x)
    assert y.dtype == jnp.float32 and float(jnp.max(jnp.abs(y - x))) > 0.2
    result = network.inverse(y)
    assert result.x.dtype == jnp.float32
    assert bool(jnp.all(result.converged)) and bool(jnp.all(result.certificate.valid))
    assert result.iterations.shape == (depth,)
    assert float(jnp.max(jnp.abs(result.x - x))) < 1e-6


def test_inverse_under_jit_and_vmap(key):
    ka, kx = jax.random.split(key)
    attention = l2_attention(ka, 3)
    layer = InvertibleResidual(attention, 0.5 / regularity.lipschitz_bound(attention, 5))
    xs = jax.random.normal(kx, (3, 5, 3))
    ys = jax.vmap(layer)(xs)
    back = eqx.filter_jit(jax.vmap(lambda y: layer.inverse(y, tol=1e-13).x))(ys)
    np.testing.assert_allclose(back, xs, atol=1e-12)


def test_certificate_names_what_it_does_not_know(key):
    x = jax.random.normal(key, (4, 3))
    usa = P.Attention.identity(3, normalization=P.Unnormalized())
    with pytest.raises(
        NotImplementedError,
        match="the invertibility certificate is known for Softmax; none is implemented for "
        "Unnormalized",
    ):
        InvertibleResidual(usa, 0.1).inverse(x)
    with pytest.raises(
        NotImplementedError,
        match="lipschitz_bound is known for the kernels DotProduct, L2; none is implemented "
        "for the Linear kernel",
    ):
        InvertibleResidual(P.Attention.identity(3, kernel=P.Linear()), 0.1).certificate(x)
    with pytest.raises(ValueError, match="step must be > 0; got -0.1"):
        InvertibleResidual(P.Attention.identity(3), -0.1)
    with pytest.raises(
        TypeError, match="layers must be a non-empty sequence of InvertibleResidual"
    ):
        InvertibleNetwork([])


def test_network_of_different_layers_is_applied_one_by_one(key):
    # a dot-product layer after an L2 one: no common structure, so no scan; same results
    ka, kb, kx = jax.random.split(key, 3)
    l2 = l2_attention(ka, 3)
    dot = P.Attention.random(kb, 3, beta=0.5)
    x = 0.5 * jax.random.normal(kx, (5, 3))
    layers = [
        InvertibleResidual(l2, 0.5 / regularity.lipschitz_bound(l2, 5)),
        InvertibleResidual(dot, 0.2 / regularity.lipschitz_bound(dot, 5, 2.0)),
    ]
    network = InvertibleNetwork(layers)
    assert network._stacked() is None
    y = network(x)
    np.testing.assert_allclose(y, layers[1](layers[0](x)), rtol=1e-14)
    result = network.inverse(y, tol=1e-13)
    assert result.iterations.shape == (2,) and bool(jnp.all(result.converged))
    np.testing.assert_allclose(result.x, x, atol=1e-12)
