"""Wasserstein distances: exact W_p (POT, coordinate-wise cost), sliced, Gaussian closed form,
circle W1."""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest

import particles as P
from particles import wasserstein as W


def _weights(key, n):
    w = jax.random.uniform(key, (n,), minval=0.1, maxval=1.0)
    return w / w.sum()


def test_w2_matches_pot_and_runs_under_jit_and_vmap(key):
    kx, ky, kw = jax.random.split(key, 3)
    x = jax.random.normal(kx, (60, 3))
    y = jax.random.normal(ky, (40, 3)) + 0.5
    wx = _weights(kw, 60)
    ref = math.sqrt(
        ot.emd2(np.asarray(wx), np.full(40, 1 / 40), ot.dist(np.asarray(x), np.asarray(y)))
    )
    assert abs(float(W.w2(x, y, wx)) - ref) < 1e-12
    assert float(W.wasserstein(x, y, wx)) == float(W.w2(x, y, wx))  # w2 is the p = 2 case
    assert abs(float(jax.jit(W.w2)(x, y, wx)) - ref) < 1e-12
    batched = jax.vmap(W.w2)(jnp.stack([x[:40], y]), jnp.stack([y, y]))
    assert abs(float(batched[0]) - float(W.w2(x[:40], y))) < 1e-12
    assert abs(float(batched[1])) < 1e-7


def test_w2_of_a_translation_is_the_shift(key):
    # W2(mu, mu + a) = |a|: the translation is an optimal map (gradient of a convex function)
    x = jax.random.normal(key, (100, 2))
    shift = jnp.array([0.3, -0.4])
    assert abs(float(W.w2(x, x + shift)) - 0.5) < 1e-10
    assert abs(float(W.wasserstein(x, x + shift, p=1)) - 0.5) < 1e-10


def test_wasserstein_keeps_its_digits_for_nearby_clouds(key):
    # A cloud and its translate by a vector of length ~1e-6: W2 = W1 = |shift| exactly. The
    # cost built coordinate by coordinate keeps the relative precision of each difference;
    # the expansion |x|^2 + |y|^2 - 2 <x, y> (POT's ot.dist, the former
    # regularity.wasserstein) cancels to an absolute error ~1e-16 |x|^2 in W2^2 = 1e-12,
    # a relative error ~1e-4 in W2.
    x = jax.random.normal(key, (50, 3))
    shift = 1e-6 * jnp.array([0.3, -0.4, 0.12])
    exact = float(jnp.linalg.norm(shift))
    assert float(W.wasserstein(x, x + shift)) == pytest.approx(exact, rel=1e-8)
    assert float(W.wasserstein(x, x + shift, p=1)) == pytest.approx(exact, rel=1e-8)
    a = np.full(50, 1 / 50)
    expanded = ot.dist(np.asarray(x), np.asarray(x + shift))  # squared Euclidean, expanded
    old = math.sqrt(max(ot.emd2(a, a, expanded), 0.0))
    assert abs(old / exact - 1) > 1e-6


def test_exact_w2_agrees_with_gaussian_formula_on_large_samples(key):
    # |W2(x, y) - W2(N1, N2)| <= W2(x, N1) + W2(y, N2) (triangle inequality), and W2(x, N1) is
    # dominated in mean square by W2(x, x') for an independent sample x' of the same law
    # (W2^2 is convex in its second argument and E[x'] = N1). So the two same-law distances
    # are a tolerance justified by the sample size itself.
    n = 1024
    m1, S1 = jnp.array([0.0, 0.0]), jnp.array([[1.0, 0.3], [0.3, 0.5]])
    m2, S2 = jnp.array([1.0, -0.5]), jnp.array([[0.4, -0.1], [-0.1, 0.8]])
    k = jax.random.split(key, 4)
    x, x2 = (P.clouds.gaussian(kk, n, m1, S1) for kk in k[:2])
    y, y2 = (P.clouds.gaussian(kk, n, m2, S2) for kk in k[2:])
    exact = float(W.gaussian_w2(m1, S1, m2, S2))
    sampled = float(W.w2(x, y))
    tolerance = float(W.w2(x, x2) + W.w2(y, y2))
    assert abs(sampled - exact) < tolerance
    assert tolerance < 0.3 * exact  # the check is not vacuous


def test_gaussian_w2_closed_forms():
    # one dimension: W2^2 = (m1 - m2)^2 + (s1 - s2)^2
    got = W.gaussian_w2(jnp.array([1.0]), jnp.array([[4.0]]), jnp.array([-1.0]), jnp.array([[9.0]]))
    assert abs(float(got) - math.sqrt(4 + 1)) < 1e-12
    S1 = jnp.array([[1.0, 0.3], [0.3, 0.5]])
    S2 = jnp.array([[0.4, -0.1], [-0.1, 0.8]])
    m1, m2 = jnp.array([0.2, 0.1]), jnp.array([-0.3, 0.6])
    ref = ot.gaussian.bures_wasserstein_distance(
        np.asarray(m1), np.asarray(m2), np.asarray(S1), np.asarray(S2)
    )
    assert abs(float(W.gaussian_w2(m1, S1, m2, S2)) - float(ref)) < 1e-10
    assert float(W.gaussian_w2(m1, S1, m1, S1)) < 1e-7


def test_sliced_w2_matches_pot_with_the_same_directions(key):
    kx, ky, kw, kp = jax.random.split(key, 4)
    x = jax.random.normal(kx, (70, 3))
    y = jax.random.normal(ky, (50, 3)) * 1.5
    wx = _weights(kw, 70)
    sw = W.sliced_w2(kp, x, y, wx, projections=32)
    theta = jax.random.normal(kp, (32, 3))
    theta = theta / jnp.linalg.norm(theta, axis=1, keepdims=True)
    ref = ot.sliced_wasserstein_distance(
        np.asarray(x), np.asarray(y), np.asarray(wx), None, projections=np.asarray(theta).T
    )
    assert abs(float(sw) - float(ref)) < 1e-12
    assert float(sw) <= float(W.w2(x, y, wx)) + 1e-12  # each slice is a 1-Lipschitz push-forward
    batched = jax.jit(jax.vmap(lambda a: W.sliced_w2(kp, a, y, projections=8)))(
        jnp.stack([x[:50], y])
    )
    assert float(batched[1]) == 0.0


def test_circle_w1_matches_pot_and_closed_forms(key):
    ka, kb, kw = jax.random.split(key, 3)
    a = jax.random.uniform(ka, (80,)) * 2 * math.pi
    b = jnp.mod(jax.random.normal(kb, (120,)), 2 * math.pi)
    wa = _weights(kw, 80)
    ref = (
        2
        * math.pi
        * ot.wasserstein_circle(
            np.asarray(a) / (2 * math.pi), np.asarray(b) / (2 * math.pi), np.asarray(wa), None, p=1
        )
    )
    assert abs(float(W.circle_w1(a, b, wa)) - float(ref[0])) < 1e-10
    # a rotation by eps < half the gap between points moves all the mass by eps
    grid = jnp.arange(16) * (2 * math.pi / 16)
    assert abs(float(W.circle_w1(grid, grid + 0.05)) - 0.05) < 1e-12
    # the wrap-around: mass at 0.1 and at 2 pi - 0.1 are 0.2 apart
    assert abs(float(W.circle_w1(jnp.array([0.1]), jnp.array([2 * math.pi - 0.1]))) - 0.2) < 1e-12


def test_circle_w1_density_of_cell_centres_against_the_uniform_law():
    # one point at each centre of N cells vs the uniform density: each point carries the mass
    # of its arc of length h at mean distance h / 4, so W1 = h / 4 = pi / (2 N) exactly
    cells = 32
    centres = P.meanfield.circle_grid(cells)
    uniform = jnp.full(cells, 1 / (2 * math.pi))
    got = W.circle_w1_density(centres, uniform, atoms_per_cell=8)
    assert abs(float(got) - math.pi / (2 * cells)) < 1e-12


def test_bad_inputs_raise_clear_errors(key):
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="same dimension"):
        W.w2(x, jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="x_weights must sum to 1"):
        W.w2(x, x, jnp.full(4, 0.3))
    with pytest.raises(ValueError, match="y_weights must have shape \\(4,\\)"):
        W.wasserstein(x, x, None, jnp.full(3, 1 / 3))
    with pytest.raises(ValueError, match="p must be 1 or 2; got 3"):
        W.wasserstein(x, x, p=3)
    with pytest.raises(ValueError, match="projections must be a positive int"):
        W.sliced_w2(key, x, x, projections=0)
    with pytest.raises(ValueError, match="cov2 must have shape"):
        W.gaussian_w2(jnp.zeros(2), jnp.eye(2), jnp.zeros(2), jnp.eye(3))
    with pytest.raises(ValueError, match="theta_x must be a non-empty 1-d array"):
        W.circle_w1(jnp.zeros((2, 2)), jnp.zeros(2))
    with pytest.raises(ValueError, match="atoms_per_cell"):
        W.circle_w1_density(jnp.zeros(3), jnp.ones(8), atoms_per_cell=0)


def test_wasserstein_without_pot_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ot", None)
    with pytest.raises(ImportError, match="pip install pot"):
        W.wasserstein(jnp.zeros((3, 2)), jnp.ones((3, 2)))
