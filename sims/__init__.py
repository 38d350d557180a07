"""sims: named, typed experiments on top of `particles`, and the command line.

    python -m sims                      # the default experiment
    python -m sims list                 # every experiment
    python -m sims run NAME --help      # its parameters

From Python, `sims.run(config)` runs the same experiment as the command line and returns
its run directory; each experiment's `Config` is in its module, e.g.
`from sims.experiments.sphere_clustering import Config`. Runs go under `sims.runs_root()`
(`runs/` of the checkout, or `$PARTICLES_RUNS`).
"""

from ._registry import DEFAULT as DEFAULT
from ._registry import experiment as experiment
from ._registry import get as get
from ._registry import list_experiments as list_experiments
from ._run import RunError as RunError
from ._run import run as run
from ._run import runs_root as runs_root

__all__ = [
    "DEFAULT",
    "RunError",
    "experiment",
    "get",
    "list_experiments",
    "run",
    "runs_root",
]
