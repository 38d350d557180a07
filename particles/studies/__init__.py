"""Studies: the only modules of the library that call `simulate`.

Each combines the layers below it (attention, flows, `simulate`, the mean-field closed forms,
metrics, Wasserstein distances) into one measurement: propagation of chaos and stability
(mean field), phase diagrams (clustering), depth errors (deep networks) and the convergence
of causal sequences.
"""

from ._causal import causal_convergence as causal_convergence
from ._chaos import ChaosStudy as ChaosStudy
from ._chaos import coupling_distance as coupling_distance
from ._chaos import moment_errors as moment_errors
from ._chaos import propagation_of_chaos as propagation_of_chaos
from ._depth import VARIANTS as VARIANTS
from ._depth import depth_error as depth_error
from ._depth import final_errors as final_errors
from ._depth import max_distance as max_distance
from ._depth import variant as variant
from ._phase import PhaseDiagram as PhaseDiagram
from ._phase import phase_diagram as phase_diagram
from ._stability import StabilityStudy as StabilityStudy
from ._stability import stability as stability

__all__ = [
    "ChaosStudy",
    "PhaseDiagram",
    "StabilityStudy",
    "VARIANTS",
    "causal_convergence",
    "coupling_distance",
    "depth_error",
    "final_errors",
    "max_distance",
    "moment_errors",
    "phase_diagram",
    "propagation_of_chaos",
    "stability",
    "variant",
]
