r"""Studies of the real network as a particle system: the network beside its continuous flow,
each layer iterated to large depth, and what $V$ and $Q^\top K$ predict.

Clusters are read on the LayerNorm sphere: a token $x$ is represented by
$u = P x / |P x|$ (centred, unit norm; the direction the LayerNorm map keeps), and two tokens
are one cluster when their $u$ are closer than `tol` (`particles.metrics.cluster_count`).

**Theory.** For pure attention with $Q = K = V = I$ on the sphere every cloud collapses to a
single cluster (Geshkovski, Letrouit, Polyanskiy, Rigollet 2023); when $V$ has a simple top
eigenvalue $\lambda_1 > 0$ the tokens gather along its eigenvector, and the sign structure of
$Q^\top K$ decides whether attention contracts (positive definite) or spreads. For each layer
we report the leading eigenvalues of the summed value map $V = \sum_h W^O_h W^V_h$ (on
$\mathbf 1^\perp$, where LayerNorm lives), of the symmetric part of
$\beta \sum_h W^{Q\top}_h W^K_h$, and the alignment of the final clusters with $V$'s leading
eigenvector. The real layer adds the feed-forward block and the LayerNorm gain, which the
theorems do not cover: the comparison is a measurement, not a test of a theorem.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import metrics
from ._flow import flow_network, iterate_layer
from ._model import Encoder, EncoderLayer

__all__ = ["LayerSpectrum", "directions", "layer_spectrum", "pca3", "plateaus", "flow_study"]


def directions(x: Float[Array, "... n d"]) -> Float[Array, "... n d"]:
    """$u = P x / |P x|$: the centred, unit direction of each token (its point on the
    LayerNorm sphere, scaled to radius 1)."""
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    return centred / jnp.linalg.norm(centred, axis=-1, keepdims=True)


class LayerSpectrum(eqx.Module):
    """Leading eigenvalues of a layer's summed value map and of its symmetrised $\\beta Q^\\top K$,
    both restricted to $\\mathbf 1^\\perp$; the leading eigenvector of $V$."""

    value_eigenvalues: Float[Array, " k"]
    qk_eigenvalues: Float[Array, " k"]
    qk_positive: Float[Array, ""]
    value_vector: Float[Array, " d"]


def layer_spectrum(layer: EncoderLayer, top: int = 4) -> LayerSpectrum:
    """The spectrum of `layer` (see the module docstring): `top` eigenvalues of $V$ by real
    part (their real parts), `top` of $\\mathrm{sym}(\\beta \\sum_h Q_h^\\top K_h)$, the
    fraction of its eigenvalues that are positive, and $V$'s leading (real) eigenvector.
    Computed on the host in float64 (NumPy eigensolvers), once per layer: not jittable."""
    d = layer.dim
    P = np.eye(d) - np.ones((d, d)) / d
    V = P @ np.asarray(layer.attention.V[:, :d, :d], np.float64).sum(0) @ P
    Q = np.asarray(layer.attention.Q[:, :, :d], np.float64)
    K = np.asarray(layer.attention.K[:, :, :d], np.float64)
    M = float(layer.attention.beta) * np.einsum("hkd,hke->de", Q, K)
    S = P @ (M + M.T) / 2 @ P
    lam, vecs = np.linalg.eig(V)
    order = np.argsort(-lam.real)
    s = np.linalg.eigvalsh(S)[::-1]
    lead = np.real(vecs[:, order[0]])
    return LayerSpectrum(
        jnp.asarray(lam.real[order[:top]]),
        jnp.asarray(s[:top]),
        jnp.asarray(np.mean(s > 1e-9 * np.abs(s).max())),
        jnp.asarray(lead / np.linalg.norm(lead)),
    )


def pca3(xs: Float[Array, "T n d"]) -> Float[Array, "T n 3"]:
    """A fixed 3-D PCA of a whole trajectory: every frame projected on the three leading
    principal axes of all its points together (so the view never rotates)."""
    points = xs.reshape(-1, xs.shape[-1])
    centre = jnp.mean(points, axis=0)
    _, _, vt = jnp.linalg.svd(points - centre[None], full_matrices=False)
    return jnp.einsum("tnd,kd->tnk", xs - centre[None, None], vt[:3])


def plateaus(counts: np.ndarray, steps: np.ndarray) -> list[dict]:
    """Runs of constant cluster count: `[{"clusters": k, "from": layer, "to": layer}, ...]`
    in order (a metastable plateau is a long one before the last)."""
    counts, steps = np.asarray(counts), np.asarray(steps)
    edges = np.flatnonzero(np.diff(counts)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges - 1, [len(counts) - 1]])
    return [
        {"clusters": int(counts[a]), "from": int(steps[a]), "to": int(steps[b])}
        for a, b in zip(starts, ends, strict=True)
    ]


@eqx.filter_jit
def _iterate_and_measure(layer, x, value_vector, depth, every, tol):
    # one compilation serves every layer: they share shapes
    u = directions(iterate_layer(layer, x, depth, every=every))
    return {
        "iterates": pca3(u),
        "clusters": jax.vmap(lambda v: metrics.cluster_count(v, tol))(u),
        "effective_rank": jax.vmap(metrics.effective_rank)(u),
        "mean_cosine": jax.vmap(metrics.mean_pairwise_cosine)(u),
        "labels": metrics.track_clusters(u, tol),
        "alignment": jnp.mean(jnp.abs(u[-1] @ value_vector.astype(u.dtype))),
    }


def flow_study(
    encoder: Encoder,
    ids,
    *,
    sub_steps: int | None,
    depth: int,
    every: int,
    tol: float,
) -> dict[str, np.ndarray]:
    r"""The real network beside its continuous flow, and every layer iterated to `depth`.

    Returns arrays: `network` and `continuous` `(L+1, n, d)` (hidden states of the network
    and of `flow_network(..., steps=sub_steps)`), `gap` `(L+1,)` (relative distance
    $|x^l_{\mathrm{flow}} - x^l|_F / |x^l|_F$), `embedding_cosine` (cosine of the two
    sentence embeddings), `states` `(2, L+1, n, 3)` (the directions $u$ of both in one
    fixed 3-D PCA), `iterates` `(L, T, n, 3)` (layer $l$ iterated from its real input $x^l$,
    every `every` layers, its directions in a fixed 3-D PCA of that run), `steps` `(T,)`, `clusters`, `effective_rank`,
    `mean_cosine` `(L, T)` of the directions $u$, `labels` `(L, T, n)` (tracked clusters),
    and the spectra `value_eigenvalues`, `qk_eigenvalues` `(L, 4)`, `qk_positive` `(L,)`,
    `alignment` `(L,)` (mean of $|\langle u_i, e_V\rangle|$ over the final directions $u_i$
    $e_V$ the leading eigenvector of $V$).
    """
    network = encoder.hidden_states(ids)
    continuous = eqx.filter_jit(flow_network)(encoder, network[0], steps=sub_steps)
    gap = jnp.linalg.norm(continuous - network, axis=(1, 2)) / jnp.linalg.norm(network, axis=(1, 2))

    def pooled(x):
        m = jnp.mean(x, axis=0)
        return m / jnp.linalg.norm(m)

    cosine = jnp.dot(pooled(network[-1]), pooled(continuous[-1]))
    out = {
        "network": network,
        "continuous": continuous,
        "gap": gap,
        "embedding_cosine": cosine,
        "steps": jnp.arange(0, depth + 1, every),
    }
    rows = {k: [] for k in ("iterates", "clusters", "effective_rank", "mean_cosine", "labels")}
    spectra = {k: [] for k in ("value_eigenvalues", "qk_eigenvalues", "qk_positive", "alignment")}
    for l in range(encoder.num_layers):
        layer = encoder.layer(l)
        spectrum = layer_spectrum(layer)
        measured = _iterate_and_measure(layer, network[l], spectrum.value_vector, depth, every, tol)
        for k in rows:
            rows[k].append(measured[k])
        spectra["value_eigenvalues"].append(spectrum.value_eigenvalues)
        spectra["qk_eigenvalues"].append(spectrum.qk_eigenvalues)
        spectra["qk_positive"].append(spectrum.qk_positive)
        spectra["alignment"].append(measured["alignment"])
    out.update({k: jnp.stack(v) for k, v in rows.items()})
    # the network and its flow in one fixed PCA of both, so the two panels share axes
    both = pca3(directions(jnp.concatenate([network, continuous])))
    out["states"] = jnp.stack([both[: network.shape[0]], both[network.shape[0] :]])
    out.update({k: jnp.stack(v) for k, v in spectra.items()})
    return {k: np.asarray(v) for k, v in out.items()}
