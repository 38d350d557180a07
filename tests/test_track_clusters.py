"""`metrics.track_clusters`: labels that follow clusters through merges and splits."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import particles as P
from particles.metrics import track_clusters


def _merging_trajectory():
    """Tokens 0, 1 form a small cluster S; 2..6 a large cluster L; 7..9 a cluster M.
    Frame 2: S merges into L (the larger parent L must keep its label).
    Frame 4: M splits into {7, 8} and {9} (the larger part keeps M's label, 9 gets a new one).
    Frame 5: the tokens are shuffled in space but keep their clusters."""
    xs = np.zeros((6, 10, 2), np.float32)
    xs[:, 0:2] = [3.0, 0.0]
    xs[:, 2:7] = [0.0, 0.0]
    xs[:, 7:10] = [0.0, 3.0]
    xs[2:, 0:2] = [0.0, 0.0]
    xs[4:, 9] = [-3.0, -3.0]
    xs[5] += 1.0
    return xs


def test_labels_follow_merges_and_splits():
    labels = np.asarray(track_clusters(_merging_trajectory(), 0.5))
    L, M, S = 0, 1, 2  # first frame: lexicographic order of (0, 0), (0, 3), (3, 0)
    expected = np.array(
        [
            [S, S, L, L, L, L, L, M, M, M],
            [S, S, L, L, L, L, L, M, M, M],
            [L, L, L, L, L, L, L, M, M, M],
            [L, L, L, L, L, L, L, M, M, M],
            [L, L, L, L, L, L, L, M, M, 3],
            [L, L, L, L, L, L, L, M, M, 3],
        ]
    )
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int32


def test_equal_parents_keep_the_older_label_and_labels_are_never_reused():
    xs = np.zeros((4, 4, 1), np.float32)
    xs[:, :2] = 0.0
    xs[:2, 2:] = 5.0  # two clusters of 2, merging at frame 2
    xs[3, 3] = 9.0  # then token 3 leaves: a fresh label, not the freed label 1
    labels = np.asarray(track_clusters(xs, 0.5))
    np.testing.assert_array_equal(labels[1], [0, 0, 1, 1])
    np.testing.assert_array_equal(labels[2], [0, 0, 0, 0])
    np.testing.assert_array_equal(labels[3], [0, 0, 0, 2])


def _same_up_to_renaming(a, b):
    """True when one bijection of label values maps `a` to `b` in every frame."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist(), strict=True))
    return len({p for p, _ in pairs}) == len(pairs) == len({q for _, q in pairs})


def _clustering_on_the_circle(n=48, frames=25, beta=4.0, seed=0):
    """Softmax attention (Q = K = V = I) on the circle, small projected Euler steps in
    NumPy: test data with many merges, cheaper than compiling a solver."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, 2 * np.pi, n)
    x = np.stack([np.cos(theta), np.sin(theta)], 1)
    out = []
    for _ in range(frames):
        out.append(x)
        for _ in range(20):
            w = np.exp(beta * (x @ x.T - 1))
            v = (w / w.sum(1, keepdims=True)) @ x
            v -= np.sum(v * x, 1, keepdims=True) * x
            x = x + 0.05 * v
            x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.stack(out).astype(np.float32)


def test_permuting_tokens_permutes_labels():
    xs = _clustering_on_the_circle()
    labels = np.asarray(track_clusters(xs, 0.05))
    perm = np.asarray(jax.random.permutation(jax.random.key(1), 48))
    permuted = np.asarray(track_clusters(xs[:, perm], 0.05))
    assert len(np.unique(labels[0])) > len(np.unique(labels[-1])) > 0  # merges happened
    np.testing.assert_array_equal(permuted, labels[:, perm])
    # each frame's partition is exactly the one of cluster_labels
    for t in (0, 12, 24):
        comp = np.asarray(P.metrics.cluster_labels(xs[t], 0.05))
        assert _same_up_to_renaming(comp, labels[t])


def test_jit_and_vmap_agree_with_eager():
    xs = _merging_trajectory()
    eager = np.asarray(track_clusters(xs, 0.5))
    jitted = np.asarray(jax.jit(track_clusters, static_argnums=1)(xs, 0.5))
    batched = np.asarray(jax.vmap(lambda x: track_clusters(x, 0.5))(np.stack([xs, xs[:, ::-1]])))
    np.testing.assert_array_equal(jitted, eager)
    np.testing.assert_array_equal(batched[0], eager)
    np.testing.assert_array_equal(batched[1][:, ::-1], eager)


def test_rejects_a_single_cloud():
    with pytest.raises(ValueError, match=r"xs must be a trajectory \(T, n, d\)"):
        track_clusters(np.zeros((5, 2)), 0.1)
