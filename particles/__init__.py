"""particles: self-attention as an interacting particle system, in JAX.

A cloud of tokens is a weighted empirical measure; attention maps it to a velocity field;
a flow puts that field on a space (Euclidean or the sphere); `simulate` integrates it with
diffrax. See the README for a quickstart.
"""

from . import analysis as analysis
from . import clouds as clouds
from . import clustering as clustering
from . import io as io
from . import meanfield as meanfield
from . import networks as networks
from . import regularity as regularity
from . import wasserstein as wasserstein
from ._simulate import SOLVERS as SOLVERS
from ._simulate import Trajectory as Trajectory
from ._simulate import simulate as simulate
from .attention import AbstractAttention as AbstractAttention
from .attention import MultiHeadAttention as MultiHeadAttention
from .attention import SelfAttention as SelfAttention
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

__version__ = "0.1.0"
