r"""Mean-field limits: from $n$ particles to the continuity equation.

As $n \to \infty$ the empirical measure $\mu^n_t = \sum_j w_j \delta_{x_j(t)}$ of the attention
flow follows the continuity (Vlasov) equation
$\partial_t \mu + \nabla \cdot (\mu\, v[\mu]) = 0$ (Vuckovic, Baratin, Tachet des Combes 2020;
Geshkovski, Letrouit, Polyanskiy, Rigollet 2023). This module computes with that limit:

- **measures**: moments of weighted clouds, resampling, mixtures, samplers;
- **Gaussian closed form**: for softmax attention in $\mathbb{R}^d$ (dot-product or L2 kernel,
  one or several heads) the field of a Gaussian is affine, so Gaussians stay Gaussian and the
  limit is an ODE for the mean and covariance (`gaussian_flow`), with finite-time blow-up of
  the covariance detected against its Riccati trend and reported; other kernels and
  normalizations raise `NotImplementedError` naming them;
- **Eulerian solver on the circle** $S^1$: the density itself, evolved by a conservative
  finite-volume scheme (mass conserved to rounding) whose velocity is an FFT convolution
  (`circle_flow`);
- **causal attention**: tokens carry a position $s \in [0, 1]$; the $n$-token causal flow
  converges to a limit profile $X(t, s)$ (`causal_tokens`, `causal_error`).

The measurements that simulate particles against these limits (propagation of chaos,
Wasserstein stability, causal convergence) are in `particles.studies`, rate fits in
`particles.metrics`, distances between measures in `particles.wasserstein`. The equations and
the exact facts the tests check are in `docs/theory.md`, section 4.
"""

from . import _causal, _circle, _gaussian, _sampling
from ._causal import causal_error as causal_error
from ._causal import causal_positions as causal_positions
from ._causal import causal_tokens as causal_tokens
from ._circle import LIMITERS as LIMITERS
from ._circle import CircleSolution as CircleSolution
from ._circle import circle_angles as circle_angles
from ._circle import circle_density as circle_density
from ._circle import circle_flow as circle_flow
from ._circle import circle_grid as circle_grid
from ._circle import circle_points as circle_points
from ._circle import circle_sample as circle_sample
from ._circle import circle_velocity as circle_velocity
from ._gaussian import GaussianSolution as GaussianSolution
from ._gaussian import affine_field as affine_field
from ._gaussian import gaussian_flow as gaussian_flow
from ._sampling import gaussian_mixture as gaussian_mixture
from ._sampling import mixture as mixture
from ._sampling import moments as moments
from ._sampling import resample as resample

__all__ = sorted([*_causal.__all__, *_circle.__all__, *_gaussian.__all__, *_sampling.__all__])
