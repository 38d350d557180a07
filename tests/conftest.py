"""Shared test configuration: float64 and strict rank promotion for the whole suite, PRNG keys.

As in diffrax's own suite, the configuration is set once here rather than toggled per test:
every test runs in float64 (closed forms to 1e-8 and below, convergence orders), and
`jax_numpy_rank_promotion="raise"` turns an implicit broadcast between arrays of different
ranks (a `(n,)` against an `(n, d)`, usually a missing axis) into an error. A test that
checks float32 behaviour on purpose requests the `float32` fixture.
"""

from __future__ import annotations

import os

import jax
import matplotlib
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

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
def float32():
    """Run the test in float32 (JAX's default precision), e.g. to check rounding at 1e-7 or
    overflow at large beta; the suite's float64 is restored afterwards."""
    with jax.enable_x64(False):
        yield
