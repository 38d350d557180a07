"""Shared fixtures: explicit PRNG keys and float64 on demand."""

from __future__ import annotations

import os

import jax
import matplotlib
import pytest

# Figures are rendered headless in the tests (CI has no display).
matplotlib.use("Agg")
# Notebooks and experiments read this switch and run at smoke size.
os.environ.setdefault("PARTICLES_SIZE", "small")
# imageio-ffmpeg (reading MP4s back in the tests) starts ffmpeg through a fork with a
# preexec_fn unless told not to; forking a process that runs JAX threads can deadlock, and
# JAX warns on every fork. Without it, subprocess starts ffmpeg by vfork/posix_spawn.
os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Run the test in float64 (convergence orders, closed forms to 1e-8 and below)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
