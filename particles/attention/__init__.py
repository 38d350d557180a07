"""Attention as an operator on weighted point clouds: kernels, normalizations, operators.

- kernels (`AbstractKernel`): `DotProduct`, `L2`, and the variants `Linear`, `Performer`,
  `Additive`, `Rotary` (positional: `AbstractPositionalKernel`); `linear_attention`, the
  $O(n)$ evaluation of kernels with features (`AbstractFeatureKernel`);
- normalizations (`AbstractNormalization`): `Softmax`, `Unnormalized`, `Sinkhorn`;
- operators (`AbstractAttention`): `Attention`, one or several heads, self and cross;
- the blocked row reductions they share: `reduce_rows`, `log_weights`;
- evaluation methods (`AbstractEvaluation`): `Direct`, and the harmonic `Expansion` on the
  circle and the sphere with `Auto` choosing between them.
"""

from ._expansion import AbstractEvaluation as AbstractEvaluation
from ._expansion import Auto as Auto
from ._expansion import Direct as Direct
from ._expansion import Expansion as Expansion
from ._kernels import L2 as L2
from ._kernels import AbstractKernel as AbstractKernel
from ._kernels import DotProduct as DotProduct
from ._normalizations import AbstractNormalization as AbstractNormalization
from ._normalizations import Sinkhorn as Sinkhorn
from ._normalizations import Softmax as Softmax
from ._normalizations import Unnormalized as Unnormalized
from ._operator import AbstractAttention as AbstractAttention
from ._operator import Attention as Attention
from ._positions import AbstractPositionalKernel as AbstractPositionalKernel
from ._reduce import log_weights as log_weights
from ._reduce import reduce_rows as reduce_rows
from ._variants import AbstractFeatureKernel as AbstractFeatureKernel
from ._variants import Additive as Additive
from ._variants import Linear as Linear
from ._variants import Performer as Performer
from ._variants import Rotary as Rotary
from ._variants import feature_rows as feature_rows
from ._variants import linear_attention as linear_attention

__all__ = [
    "AbstractAttention",
    "AbstractFeatureKernel",
    "AbstractEvaluation",
    "AbstractKernel",
    "AbstractNormalization",
    "AbstractPositionalKernel",
    "Additive",
    "Attention",
    "Auto",
    "Direct",
    "DotProduct",
    "Expansion",
    "L2",
    "Linear",
    "Performer",
    "Rotary",
    "Sinkhorn",
    "Softmax",
    "Unnormalized",
    "feature_rows",
    "linear_attention",
    "log_weights",
    "reduce_rows",
]
