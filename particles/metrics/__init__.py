"""Metrics: functions of clouds and trajectories, never of solvers.

Clusters (`cluster_labels`, `cluster_count`, `track_clusters`, `cluster_sizes`, ...),
energies (`interaction_energy`, `mean_pairwise_cosine`), the maximum-entropy view of
attention (`row_entropy`, `attention_entropy`, `expected_score`, `maxent_beta`,
`maxent_value`), time series (`over_time`,
`cluster_series`) and log-log fits (`fit_power_law`). All are pure and `jit`/`vmap`-compatible
except `fit_power_law`, which works on measured results on the host.

A metric reads clouds, never the model: closed forms of the dynamics (what a cloud *should*
do) are in `particles.closedforms` and `particles.meanfield`, simulations in
`particles.studies`.
"""

from ._clusters import aligned_fraction as aligned_fraction
from ._clusters import alignment_to as alignment_to
from ._clusters import cluster_centres as cluster_centres
from ._clusters import cluster_count as cluster_count
from ._clusters import cluster_labels as cluster_labels
from ._clusters import cluster_series as cluster_series
from ._clusters import cluster_sizes as cluster_sizes
from ._clusters import diameter as diameter
from ._clusters import effective_rank as effective_rank
from ._clusters import is_clustered as is_clustered
from ._clusters import min_inner_product as min_inner_product
from ._clusters import rescaled as rescaled
from ._clusters import time_to_one_cluster as time_to_one_cluster
from ._clusters import track_clusters as track_clusters
from ._energy import interaction_energy as interaction_energy
from ._energy import mean_pairwise_cosine as mean_pairwise_cosine
from ._entropy import attention_entropy as attention_entropy
from ._entropy import attention_scores as attention_scores
from ._entropy import expected_score as expected_score
from ._entropy import maxent_beta as maxent_beta
from ._entropy import maxent_value as maxent_value
from ._entropy import row_entropy as row_entropy
from ._fits import fit_power_law as fit_power_law
from ._series import over_time as over_time

__all__ = [
    "aligned_fraction",
    "alignment_to",
    "attention_entropy",
    "attention_scores",
    "cluster_centres",
    "cluster_count",
    "cluster_labels",
    "cluster_series",
    "cluster_sizes",
    "diameter",
    "effective_rank",
    "expected_score",
    "fit_power_law",
    "interaction_energy",
    "is_clustered",
    "maxent_beta",
    "maxent_value",
    "mean_pairwise_cosine",
    "min_inner_product",
    "over_time",
    "rescaled",
    "row_entropy",
    "time_to_one_cluster",
    "track_clusters",
]
