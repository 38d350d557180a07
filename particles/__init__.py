"""particles: self-attention as an interacting particle system, in JAX.

A cloud of tokens is a weighted empirical measure; attention maps it to a velocity field
(`particles.attention`); a flow puts that field on a space (Euclidean or the sphere);
`simulate` integrates it with diffrax; `networks` are its Euler schemes; `meanfield` holds
the limit equation; `regularity` and `metrics` measure; `studies` combine them. The theory
is in `docs/theory.md`; the README has a quickstart.
"""

from . import attention as attention
from . import closedforms as closedforms
from . import clouds as clouds
from . import devices as devices
from . import invertible as invertible
from . import io as io
from . import meanfield as meanfield
from . import metrics as metrics
from . import networks as networks
from . import regularity as regularity
from . import studies as studies
from . import wasserstein as wasserstein
from ._simulate import Trajectory as Trajectory
from ._simulate import simulate as simulate
from ._solve import AbstractSolution as AbstractSolution
from ._solve import Stats as Stats
from .attention import L2 as L2
from .attention import AbstractAttention as AbstractAttention
from .attention import AbstractEvaluation as AbstractEvaluation
from .attention import AbstractFeatureKernel as AbstractFeatureKernel
from .attention import AbstractKernel as AbstractKernel
from .attention import AbstractNormalization as AbstractNormalization
from .attention import AbstractPositionalKernel as AbstractPositionalKernel
from .attention import Additive as Additive
from .attention import Attention as Attention
from .attention import Auto as Auto
from .attention import Direct as Direct
from .attention import DotProduct as DotProduct
from .attention import Expansion as Expansion
from .attention import Linear as Linear
from .attention import Performer as Performer
from .attention import Rotary as Rotary
from .attention import Sinkhorn as Sinkhorn
from .attention import Softmax as Softmax
from .attention import Unnormalized as Unnormalized
from .flows import AbstractFlow as AbstractFlow
from .flows import AttentionFlow as AttentionFlow
from .flows import FeedForward as FeedForward
from .flows import Layered as Layered
from .flows import PreNormFlow as PreNormFlow
from .networks import ResidualNetwork as ResidualNetwork
from .spaces import AbstractSpace as AbstractSpace
from .spaces import Euclidean as Euclidean
from .spaces import Sphere as Sphere
from .spaces import sphere_drift as sphere_drift

__version__ = "0.2.0"
