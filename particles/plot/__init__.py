"""Figures and animations of clouds and trajectories (matplotlib).

Importing `particles` never imports matplotlib; importing `particles.plot` does. Plotting
reads saved arrays (trajectories, metric time series) and never recomputes dynamics.
"""

from ._animate import animate as animate
from ._animate import ffmpeg_path as ffmpeg_path
from ._figures import cluster_colors as cluster_colors
from ._figures import draw_cloud as draw_cloud
from ._figures import metric_curves as metric_curves
from ._figures import snapshots as snapshots
from ._figures import summary_figure as summary_figure
from ._regularity import field_vs_wasserstein as field_vs_wasserstein
from ._regularity import lipschitz_vs_n as lipschitz_vs_n
from ._regularity import lipschitz_vs_radius as lipschitz_vs_radius
from ._regularity import wasserstein_separation as wasserstein_separation
