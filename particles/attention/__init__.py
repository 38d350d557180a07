"""Attention as an operator on weighted point clouds: kernels, normalizations, operators.

- kernels (`AbstractKernel`): `DotProduct`, `L2`;
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
from ._reduce import log_weights as log_weights
from ._reduce import reduce_rows as reduce_rows

__all__ = [
    "AbstractAttention",
    "AbstractEvaluation",
    "AbstractKernel",
    "AbstractNormalization",
    "Attention",
    "Auto",
    "Direct",
    "DotProduct",
    "Expansion",
    "L2",
    "Sinkhorn",
    "Softmax",
    "Unnormalized",
    "log_weights",
    "reduce_rows",
]
