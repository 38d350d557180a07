r"""Energies and alignment of a cloud: the interaction energy $E_\beta$ that the flow on
the sphere ascends, and the mean pairwise cosine.

With $Q = K = V = I$ the unnormalized flow on the sphere is the gradient ascent of
$E_\beta(x) = \frac{1}{2\beta} \sum_{i,j} w_i w_j e^{\beta \langle x_i, x_j\rangle}$ and
softmax attention ascends it in another metric (Geshkovski, Letrouit, Polyanskiy, Rigollet
2023), so $E_\beta$ is non-decreasing along every solution: a test of any solver. The energy
exists for the dot-product kernel only; `interaction_energy` dispatches on the kernel and
raises `NotImplementedError` naming any other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..attention import AbstractKernel, DotProduct, log_weights, reduce_rows


def interaction_energy(
    x: Float[Array, "n d"],
    beta,
    weights: Float[Array, " n"] | None = None,
    *,
    kernel: AbstractKernel = DotProduct(),
) -> Float[Array, ""]:
    r"""Interaction energy $E_\beta = \frac{1}{2\beta} \sum_{i,j} w_i w_j e^{\beta\langle x_i, x_j\rangle}$.

    With $Q = K = V = I$ on the sphere, the unnormalized flow (USA) is the gradient ascent
    $\dot x_i = P_{x_i} \nabla_{x_i} E_\beta / w_i$, and softmax attention (SA) ascends it in
    a modified metric, so $E_\beta$ never decreases for either (Geshkovski, Letrouit,
    Polyanskiy, Rigollet 2023, sections 3.1 and 3.3). With uniform weights this is
    $\frac{1}{2\beta n^2}\sum_{i,j} e^{\beta\langle x_i, x_j\rangle}$, the normalisation of
    that paper. Evaluated as a log-sum-exp in blocks, so it is finite whenever the result
    is.

    The energy is known for the `DotProduct` kernel only (the one whose flow is a gradient
    flow); any other `kernel` raises `NotImplementedError` naming it.
    """
    if not isinstance(kernel, DotProduct):
        raise NotImplementedError(
            f"no interaction energy is known for the {type(kernel).__name__} kernel: the "
            "attention flow is a gradient flow of E_beta for the DotProduct kernel"
        )
    n = x.shape[0]
    logw = log_weights(weights, n, x.dtype)
    rows = reduce_rows("lse", kernel, beta, x, x, logw, None, causal=False, block=None)
    return jnp.exp(jax.nn.logsumexp(rows + logw)) / (2 * beta)


def mean_pairwise_cosine(x: Float[Array, "n d"]) -> Float[Array, ""]:
    r"""Mean of $\cos\angle(x_i, x_j)$ over pairs $i \ne j$; 1 when all tokens align.

    Uses $\sum_{i \ne j} \langle u_i, u_j\rangle = |\sum_i u_i|^2 - n$ for unit $u_i$: $O(nd)$.
    """
    n = x.shape[0]
    u = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    total = jnp.sum(jnp.sum(u, axis=0) ** 2)
    return jnp.where(n > 1, (total - n) / jnp.maximum(n * (n - 1), 1), 1.0)
