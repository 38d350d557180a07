"""Metrics along a trajectory: a per-cloud metric applied to every saved frame."""

from __future__ import annotations

import jax
from jaxtyping import Array, Float


def over_time(metric, xs: Float[Array, "T n d"], *args, **kwargs) -> Array:
    """Apply a per-cloud metric to every frame of a trajectory: `metric(xs[t], *args)`."""
    return jax.vmap(lambda x: metric(x, *args, **kwargs))(xs)
