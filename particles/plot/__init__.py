"""Figures and animations of clouds and trajectories (matplotlib).

Importing `particles` never imports matplotlib; importing `particles.plot` does. Plotting
reads saved arrays (trajectories, metric time series, attention matrices, velocity fields)
and never recomputes dynamics.

Animations go through one pipeline: a scene (`CloudScene` for particle clouds,
`GaussianScene` for particles over mean-field Gaussians, `CircleScene` for densities on the
circle) is drawn frame by frame by a `Renderer` and encoded by one writer (`write`: MP4 or
GIF, atomically) or shown inline in a notebook.
"""

from ._animate import InlineAnimation as InlineAnimation
from ._animate import Renderer as Renderer
from ._animate import animate as animate
from ._animate import ffmpeg_path as ffmpeg_path
from ._animate import inline as inline
from ._animate import write as write
from ._clustering import convex_hull as convex_hull
from ._clustering import phase_figure as phase_figure
from ._clustering import phase_heatmap as phase_heatmap
from ._clustering import polytope as polytope
from ._clustering import run_curves as run_curves
from ._clustering import step_counts as step_counts
from ._deep import depth_convergence_figure as depth_convergence_figure
from ._deep import depth_error_figure as depth_error_figure
from ._figures import VIEW as VIEW
from ._figures import CloudScene as CloudScene
from ._figures import Geometry as Geometry
from ._figures import camera as camera
from ._figures import cluster_colors as cluster_colors
from ._figures import draw_cloud as draw_cloud
from ._figures import final_state as final_state
from ._figures import frame as frame
from ._figures import geometry as geometry
from ._figures import metric_curves as metric_curves
from ._figures import snapshots as snapshots
from ._figures import summary_figure as summary_figure
from ._figures import velocity_field as velocity_field
from ._labels import METRIC_LABELS as METRIC_LABELS
from ._labels import MetricLabel as MetricLabel
from ._labels import fit_title as fit_title
from ._labels import metric_label as metric_label
from ._meanfield import CircleScene as CircleScene
from ._meanfield import GaussianScene as GaussianScene
from ._meanfield import circle_animation as circle_animation
from ._meanfield import density_snapshots as density_snapshots
from ._meanfield import gaussian_animation as gaussian_animation
from ._meanfield import gaussian_snapshots as gaussian_snapshots
from ._meanfield import sample_convergence_figure as sample_convergence_figure
from ._meanfield import stability_figure as stability_figure
from ._regularity import field_vs_wasserstein as field_vs_wasserstein
from ._regularity import lipschitz_vs_n as lipschitz_vs_n
from ._regularity import lipschitz_vs_radius as lipschitz_vs_radius
from ._regularity import wasserstein_separation as wasserstein_separation
from ._scene import AbstractScene as AbstractScene

__all__ = [
    "AbstractScene",
    "CircleScene",
    "CloudScene",
    "GaussianScene",
    "Geometry",
    "InlineAnimation",
    "METRIC_LABELS",
    "MetricLabel",
    "Renderer",
    "VIEW",
    "animate",
    "camera",
    "circle_animation",
    "cluster_colors",
    "convex_hull",
    "density_snapshots",
    "depth_convergence_figure",
    "depth_error_figure",
    "draw_cloud",
    "ffmpeg_path",
    "field_vs_wasserstein",
    "final_state",
    "fit_title",
    "frame",
    "gaussian_animation",
    "gaussian_snapshots",
    "geometry",
    "inline",
    "lipschitz_vs_n",
    "lipschitz_vs_radius",
    "metric_curves",
    "metric_label",
    "phase_figure",
    "phase_heatmap",
    "polytope",
    "run_curves",
    "sample_convergence_figure",
    "snapshots",
    "stability_figure",
    "step_counts",
    "summary_figure",
    "velocity_field",
    "wasserstein_separation",
    "write",
]
