"""The one place that calls `diffrax.diffeqsolve`: option checks, the solve, and failures.

`simulate`, the Gaussian mean-field solver and the circle solver all integrate through
`solve`. It checks the solver object's capabilities with `isinstance` (an
`AbstractAdaptiveSolver` can drive adaptive steps; an `AbstractImplicitSolver` needs them,
and float64), runs the solve with `throw=False`, then raises a `RuntimeError` (eagerly) or
attaches an `eqx.error_if` (under `jit`) as `throw` asks, so every solver reports failures
the same way.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._checks import is_concrete

__all__ = ["AbstractSolution", "Stats", "check_times", "solve"]


class Stats(eqx.Module):
    """Step counts of one solve (arrays, so that they batch under `vmap`)."""

    num_steps: Int[Array, "..."]
    num_accepted: Int[Array, "..."]
    num_rejected: Int[Array, "..."]


class AbstractSolution(eqx.Module):
    """What every solver of this package returns: saved times, step counts, the result.

    Attributes:
        ts: the saved times `(T,)`.
        stats: the solver's `Stats`.
        result: diffrax `RESULTS`; `successful` unless `throw=False` hid a failure.
    """

    ts: eqx.AbstractVar[Float[Array, " T"]]
    stats: eqx.AbstractVar[Stats | None]
    result: eqx.AbstractVar[diffrax.RESULTS | None]

    @property
    def num_steps(self):
        """Steps the solver took (`None` for a solution that no solver produced)."""
        return None if self.stats is None else self.stats.num_steps

    @property
    def succeeded(self):
        """Whether the solve succeeded (`True` for a solution that no solver produced)."""
        return True if self.result is None else self.result == diffrax.RESULTS.successful


def check_times(ts, dtype) -> Float[Array, " T"]:
    """Save times: a 1-d array of at least two strictly increasing times, in `dtype`."""
    ts = jnp.asarray(ts, dtype=dtype)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-d array of at least two times; got shape {ts.shape}")
    if is_concrete(ts) and not np.all(np.diff(np.asarray(ts)) > 0):
        raise ValueError("ts must be strictly increasing")
    return ts


def check_solver(solver, *, fixed_steps: bool, dtype) -> None:
    """Raise a `TypeError`/`ValueError` if `solver` cannot run with these steps and dtype."""
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(
            f"solver must be a diffrax solver instance, e.g. diffrax.Tsit5(); got {solver!r}"
        )
    name = type(solver).__name__
    if not fixed_steps and not isinstance(solver, diffrax.AbstractAdaptiveSolver):
        raise ValueError(
            f"solver {name} has no error estimate: pass dt= (or a step-size controller) "
            "for fixed steps"
        )
    if isinstance(solver, diffrax.AbstractImplicitSolver):
        if fixed_steps:
            raise ValueError(
                f"solver {name} is implicit and needs adaptive steps (a failed Newton solve "
                "is retried with a smaller step): omit dt"
            )
        if dtype != jnp.float64:
            # measured: USA at beta = 8 on S^2, float32, rtol 1e-4 to 1e-5: both Kvaerno
            # methods reach max_steps (their Newton iterations stall at float32 resolution)
            raise ValueError(
                f"solver {name} is implicit and needs float64 (jax.config.update("
                f"'jax_enable_x64', True) and float64 inputs); got {dtype}"
            )


class _TimeProgressMeter(diffrax.TqdmProgressMeter):
    """A tqdm bar that counts simulated time $t$, not percent (tqdm.auto: a widget in
    notebooks, text in a terminal)."""

    t0: float = eqx.field(static=True, default=0.0)
    t1: float = eqx.field(static=True, default=1.0)

    def _init_bar(self):
        import tqdm.auto

        return tqdm.auto.tqdm(
            total=self.t1 - self.t0,
            bar_format="t = {n:.4g} of {total:.4g} |{bar}| [{elapsed}<{remaining}]",
        )

    def _step_bar(self, bar, progress):
        bar.n = float(progress) * (self.t1 - self.t0)
        bar.update(n=0)
        bar.refresh()

    def _close_bar(self, bar):
        bar.n = self.t1 - self.t0
        bar.update(n=0)
        bar.close()


def progress_meter(progress: bool, ts) -> diffrax.AbstractProgressMeter:
    """A bar in simulated time when `progress` and the horizon is known, else none."""
    if not progress:
        return diffrax.NoProgressMeter()
    if is_concrete(ts):
        t = np.asarray(ts, dtype=float)
        return _TimeProgressMeter(t0=float(t[0]), t1=float(t[-1]))
    return diffrax.TqdmProgressMeter()


def solve(
    term,
    solver: diffrax.AbstractSolver,
    ts: Float[Array, " T"],
    y0,
    *,
    args=None,
    controller: diffrax.AbstractStepSizeController,
    dt0=None,
    saveat: diffrax.SaveAt | None = None,
    event: diffrax.Event | None = None,
    max_steps: int,
    progress: bool = False,
    throw: bool = True,
    caller: str,
    accept=None,
):
    """Integrate `term` from `ts[0]` to `ts[-1]`; return `(solution, ys)`.

    `ys` is `solution.ys`, wrapped in an `eqx.error_if` under `jit` when `throw`. A failed
    solve raises `RuntimeError` naming `caller` (eagerly). `accept` is an optional boolean
    that also counts as success (e.g. a terminating event that fired).
    """
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int; got {max_steps!r}")
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=dt0,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(ts=ts) if saveat is None else saveat,
        stepsize_controller=controller,
        event=event,
        max_steps=max_steps,
        progress_meter=progress_meter(progress, ts),
        throw=False,
    )
    ys = sol.ys
    if not throw:
        return sol, ys
    ok = sol.result == diffrax.RESULTS.successful
    if accept is not None:
        ok = ok | accept(sol)
    hit_max = sol.result == diffrax.RESULTS.max_steps_reached
    t1 = float(np.asarray(ts)[-1]) if is_concrete(ts) else "ts[-1]"
    max_message = (
        f"{caller}: the solver took max_steps={max_steps} steps before reaching t1={t1}. "
        "Raise max_steps, loosen rtol/atol, shorten ts, or pass dt= for fixed steps."
    )
    if is_concrete(ok):
        if bool(hit_max) and not bool(ok):
            raise RuntimeError(max_message)
        if not bool(ok):
            raise RuntimeError(f"{caller}: the solve failed: {sol.result}")
        return sol, ys
    ys = eqx.error_if(ys, hit_max & ~ok, max_message)
    ys = eqx.error_if(ys, ~ok, f"{caller}: the solve failed")
    return sol, ys


def stats(sol) -> Stats:
    """The step counts of a diffrax solution."""
    s = sol.stats
    return Stats(s["num_steps"], s["num_accepted_steps"], s["num_rejected_steps"])
