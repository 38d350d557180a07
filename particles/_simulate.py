"""Integration of a flow with diffrax."""

from __future__ import annotations

import diffrax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import check_weights, is_concrete
from ._solve import AbstractSolution, Stats, check_solver, check_times, solve, stats
from .flows import AbstractFlow

__all__ = ["Trajectory", "simulate"]


class Trajectory(AbstractSolution):
    """A flow's clouds at the saved times.

    Attributes:
        ts: saved times, shape `(T,)`.
        xs: clouds, shape `(T, n, d)`.
        weights: token weights, shape `(n,)`.
        stats: solver step counts (`Stats`), or `None` for the layers of a network.
        result: diffrax `RESULTS` (`None` for the layers of a network).
    """

    ts: Float[Array, " T"]
    xs: Float[Array, "T n d"]
    weights: Float[Array, " n"]
    stats: Stats | None
    result: diffrax.RESULTS | None

    @property
    def final(self) -> Float[Array, "n d"]:
        return self.xs[-1]


def _controller(jumps, ts, rtol, atol, dt, dt0, controller):
    r"""The step-size controller and first step: adaptive PID, or fixed steps of `dt`.

    At the layer boundaries of a `Layered` flow the field jumps. Adaptive steps are clipped
    to end just before each jump and restart just after it; fixed steps follow the grid
    $t_0 + k\,dt$ with the jump times added, so no step straddles a boundary and each step
    sees the layer it starts in.
    """
    if controller is not None and not isinstance(controller, diffrax.PIDController):
        return controller, dt if dt0 is None else dt0
    if dt is None:
        pid = diffrax.PIDController(rtol=rtol, atol=atol) if controller is None else controller
        if jumps is None:
            return pid, dt0
        return diffrax.ClipStepSizeController(pid, jump_ts=jnp.asarray(jumps, ts.dtype)), dt0
    if jumps is None or not (is_concrete(ts) and is_concrete(dt)):
        return diffrax.ConstantStepSize(), dt
    t0, t1 = float(np.asarray(ts)[0]), float(np.asarray(ts)[-1])
    count = int(np.ceil((t1 - t0) / float(dt) * (1 - 1e-12)))
    # t0 + (t1 - t0) k / K, as diffrax's own fixed grid, so boundaries land exactly
    grid = (
        t0 + (t1 - t0) * (np.arange(count + 1) / count)
        if np.isclose(count * float(dt), t1 - t0)
        else np.append(t0 + float(dt) * np.arange(count), t1)
    )
    jumps = np.asarray(jumps, dtype=np.float64)
    jumps = jumps[(jumps > t0) & (jumps < t1)]
    # a grid time within rounding of a jump would leave a step of zero length: keep the jump
    near = np.isclose(grid[:, None], jumps[None, :], rtol=0, atol=1e-9 * (t1 - t0)).any(axis=1)
    grid = np.union1d(grid[~near | (grid == t0) | (grid == t1)], jumps)
    return diffrax.StepTo(ts=jnp.asarray(grid, ts.dtype)), None


def simulate(
    flow: AbstractFlow,
    x0: Float[Array, "n d"],
    ts: Float[Array, " T"],
    *,
    weights: Float[Array, " n"] | None = None,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    dt: float | None = None,
    dt0: float | None = None,
    max_steps: int = 100_000,
    progress: bool = False,
    throw: bool = True,
) -> Trajectory:
    r"""Solve $\dot x = \text{flow}(t, x)$ from `x0` and save the cloud at times `ts`.

    Args:
        flow: the vector field, e.g. `AttentionFlow(Attention.identity(3), Sphere())`,
            or any `AbstractFlow` (e.g. `PreNormFlow`).
        x0: initial cloud, shape `(n, d)`; on the sphere it must have unit rows.
        ts: increasing save times; the solve runs from `ts[0]` to `ts[-1]`.
        weights: token weights summing to one (`None` is uniform).
        solver: a diffrax solver instance (default `diffrax.Tsit5()`). Adaptive steps need
            an `AbstractAdaptiveSolver` (not `Euler`); implicit solvers
            (`AbstractImplicitSolver`, e.g. `Kvaerno3()`, for stiff runs such as unnormalized
            attention at large beta) need adaptive steps and float64.
        stepsize_controller: a diffrax step-size controller; default a `PIDController`
            with `rtol`, `atol` (or fixed steps of `dt`). A `PIDController` is clipped at
            the layer boundaries of a `Layered` flow.
        rtol, atol: tolerances of the default PID controller, and of the Newton iterations
            of the implicit solvers.
        dt: fixed step size; when given, steps are not adapted (required for `Euler`).
        dt0: first step of an adaptive solve (`None` lets diffrax choose).
        max_steps: most steps the solver may take.
        progress: show a progress bar in simulated time (tqdm.auto).
        throw: raise if the solve fails; with `False` the failure is in `result`.

    Returns:
        A `Trajectory` with `xs` of shape `(len(ts), n, d)`.

    Works under `jit` and `vmap` (ensembles over seeds or parameters); the dtype follows
    `x0` (enable `jax_enable_x64` for float64).
    """
    if not isinstance(flow, AbstractFlow):
        raise TypeError(
            f"flow must be an AttentionFlow (or another AbstractFlow, e.g. PreNormFlow); "
            f"got {type(flow).__name__}"
        )
    if stepsize_controller is not None and not isinstance(
        stepsize_controller, diffrax.AbstractStepSizeController
    ):
        raise TypeError(
            "stepsize_controller must be a diffrax step-size controller, e.g. "
            f"diffrax.PIDController(rtol=1e-6, atol=1e-6); got {stepsize_controller!r}"
        )
    if dt is not None and is_concrete(dt) and not dt > 0:
        raise ValueError(f"dt must be > 0; got {dt}")
    x0 = flow.space.check(x0, "x0")
    fixed = dt is not None or isinstance(
        stepsize_controller, diffrax.ConstantStepSize | diffrax.StepTo
    )
    check_solver(solver, fixed_steps=fixed, dtype=x0.dtype)
    ts = check_times(ts, x0.dtype)
    weights = check_weights(weights, x0.shape[0])
    controller, dt0 = _controller(flow.jump_times(), ts, rtol, atol, dt, dt0, stepsize_controller)
    sol, xs = solve(
        diffrax.ODETerm(flow),
        solver,
        ts,
        x0,
        args=weights,
        controller=controller,
        dt0=dt0,
        max_steps=max_steps,
        progress=progress,
        throw=throw,
        caller="simulate",
    )
    if weights is None:
        weights = jnp.full((x0.shape[0],), 1 / x0.shape[0], x0.dtype)
    return Trajectory(ts=sol.ts, xs=xs, weights=weights, stats=stats(sol), result=sol.result)
