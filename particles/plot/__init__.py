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
from ._meanfield import circle_animation as circle_animation
from ._meanfield import convergence_figure as convergence_figure
from ._meanfield import density_snapshots as density_snapshots
from ._meanfield import gaussian_animation as gaussian_animation
from ._meanfield import gaussian_snapshots as gaussian_snapshots
from ._meanfield import stability_figure as stability_figure
