r"""Closed forms of the particle dynamics: exact reductions of the $n$-token flow.

Some clouds keep a symmetry along the attention flow, and then the flow reduces to an ODE in
a few numbers that can be solved independently (by SciPy, say) and compared with `simulate`
to the solver's tolerance. Here: an equiangular cloud on the sphere with $Q = K = V = I$
(every $\langle x_i, x_j\rangle = \rho$) stays equiangular, and $\rho$ obeys a scalar
ODE (`equiangular_rate`); for two tokens it is the two-particle law of Geshkovski, Letrouit,
Polyanskiy, Rigollet (*The emergence of clusters in self-attention dynamics*, 2023).

These are functions of the model's parameters ($\rho$, $\beta$, $n$, the normalization), not
of clouds: they are facts about the dynamics, not metrics. Closed forms of the mean-field
limit are in `particles.meanfield`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import check_supported
from .attention import AbstractNormalization, Softmax, Unnormalized

__all__ = ["equiangular_rate"]


def equiangular_rate(
    rho: Float[Array, "..."],
    beta,
    n: int,
    *,
    normalization: AbstractNormalization = Softmax(),
) -> Float[Array, "..."]:
    r"""$\dot\rho$ for an equiangular cloud on the sphere, $Q = K = V = I$, uniform weights.

    If $n$ unit vectors have all pairwise inner products $\langle x_i, x_j\rangle = \rho$,
    they keep that property along the flow, and

    $$ \text{USA: } \dot\rho = \frac{2}{n} e^{\beta\rho} (1 - \rho)(1 + (n - 1)\rho), \qquad
       \text{SA: } \dot\rho = \frac{2 (1 - \rho)(1 + (n - 1)\rho)}{e^{\beta(1 - \rho)} + n - 1}. $$

    Derivation. Let $S = \sum_j x_j$, so $\langle x_i, S\rangle = 1 + (n - 1)\rho$ for every
    $i$. With $w_j = 1/n$ the unnormalized field is
    $v_i = \frac1n \sum_j e^{\beta\langle x_i, x_j\rangle} x_j
         = \frac1n\big[(e^\beta - e^{\beta\rho}) x_i + e^{\beta\rho} S\big]$, and the tangent
    projection $P_{x_i} = I - x_i x_i^\top$ removes the $x_i$ term:
    $\dot x_i = \frac{e^{\beta\rho}}{n} (S - \langle x_i, S\rangle x_i)$. Softmax divides
    $v_i$ by $Z = \frac1n\big[e^\beta + (n - 1) e^{\beta\rho}\big]$, the same for every $i$,
    so $\dot x_i = c\,(S - \langle x_i, S\rangle x_i)$ with
    $c_{USA} = e^{\beta\rho}/n$ and $c_{SA} = e^{\beta\rho}/(e^\beta + (n - 1)e^{\beta\rho})$.
    For $i \ne k$, $\langle \dot x_i, x_k\rangle = c\,(\langle S, x_k\rangle -
    \langle x_i, S\rangle \rho) = c\,(1 + (n - 1)\rho)(1 - \rho)$, the same for every pair;
    hence every $\frac{d}{dt}\langle x_i, x_k\rangle = \langle \dot x_i, x_k\rangle +
    \langle x_i, \dot x_k\rangle$ equals $2c(1 - \rho)(1 + (n - 1)\rho)$: the Gram matrix
    stays of the form $(1 - \rho) I + \rho \mathbf 1 \mathbf 1^\top$ and $\rho$ obeys the
    equations above. For $n = 2$ they are the two-particle laws
    $\dot\rho = e^{\beta\rho}(1 - \rho^2)$ and $\dot\rho = 2(1 - \rho^2)/(1 + e^{\beta(1-\rho)})$.
    The fixed points are $\rho = 1$ (one cluster, attracting) and $\rho = -1/(n - 1)$ (the
    regular simplex, repelling): from any $\rho_0 > -1/(n-1)$, $\rho \to 1$.

    Args:
        rho: the common inner product, any shape.
        beta: inverse temperature.
        n: number of tokens (an int >= 2).
        normalization: `Softmax()` (SA) or `Unnormalized()` (USA).

    Returns:
        $\dot\rho$, the shape of `rho`.
    """
    check_supported(
        normalization, (Softmax, Unnormalized), "normalization", "the equiangular closed form"
    )
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an int >= 2; got {n!r}")
    rho = jnp.asarray(rho)
    growth = (1 - rho) * (1 + (n - 1) * rho)
    if isinstance(normalization, Unnormalized):
        return 2 / n * jnp.exp(beta * rho) * growth
    return 2 * growth / (jnp.exp(beta * (1 - rho)) + n - 1)
