"""Integration of a flow with diffrax."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._checks import check_weights, is_concrete
from .flows import AbstractFlow

SOLVERS = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "ralston": diffrax.Ralston,
    "bosh3": diffrax.Bosh3,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "tsit5": diffrax.Tsit5,
    # L-stable implicit ESDIRK methods (Kvaerno 2004), for stiff runs: unnormalized attention
    # at large beta contracts a formed cluster at a rate ~ e^beta, and explicit steps shrink
    # to match (at beta = 9 on S^2, n = 32: Tsit5 ~10^5 steps, kvaerno3 ~10^3)
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno5": diffrax.Kvaerno5,
}
# Euler has no embedded error estimate, so it cannot drive an adaptive step.
_FIXED_ONLY = ("euler",)
# Implicit solvers take their Newton tolerances from the PID controller, and a Newton
# failure is recovered only by rejecting the step and trying a smaller one; they also need
# float64 (see `simulate`).
_ADAPTIVE_ONLY = ("kvaerno3", "kvaerno5")


class Trajectory(eqx.Module):
    """A solved flow: the cloud at each saved time.

    Attributes:
        ts: saved times, shape `(T,)`.
        xs: clouds, shape `(T, n, d)`.
        weights: token weights, shape `(n,)`.
        num_steps, num_accepted, num_rejected: solver step counts.
        result: diffrax `RESULTS` value; `successful` unless `throw=False` hid a failure.
    """

    ts: Float[Array, " T"]
    xs: Float[Array, "T n d"]
    weights: Float[Array, " n"]
    num_steps: Int[Array, ""]
    num_accepted: Int[Array, ""]
    num_rejected: Int[Array, ""]
    result: diffrax.RESULTS

    @property
    def final(self) -> Float[Array, "n d"]:
        return self.xs[-1]

    @property
    def succeeded(self):
        return self.result == diffrax.RESULTS.successful


def _max_steps_message(max_steps, ts):
    return (
        f"simulate: the solver took max_steps={max_steps} steps before reaching "
        f"t1={float(np.asarray(ts)[-1]) if is_concrete(ts) else 'ts[-1]'}. Raise max_steps, loosen "
        "rtol/atol, shorten ts, or pass dt= for fixed steps."
    )


def _controller(jumps, ts, rtol, atol, dt, dt0):
    r"""The step-size controller and first step: adaptive PID, or fixed steps of `dt`.

    At the layer boundaries of a `Layered` flow the field jumps. Adaptive steps are clipped
    to end just before each jump and restart just after it; fixed steps follow the grid
    $t_0 + k\,dt$ with the jump times added, so no step straddles a boundary and each step
    sees the layer it starts in.
    """
    if dt is None:
        pid = diffrax.PIDController(rtol=rtol, atol=atol)
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
    solver: str = "tsit5",
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
        flow: the vector field, e.g. `AttentionFlow(SelfAttention.identity(3), Sphere())`,
            or any `AbstractFlow` (e.g. `PreNormFlow`).
        x0: initial cloud, shape `(n, d)`; on the sphere it must have unit rows.
        ts: increasing save times; the solve runs from `ts[0]` to `ts[-1]`.
        weights: token weights summing to one (`None` is uniform).
        solver: one of euler, heun, midpoint, ralston, bosh3, dopri5, dopri8, tsit5
            (explicit) or kvaerno3, kvaerno5 (implicit, float64 only, for stiff runs such as
            unnormalized attention at large beta).
        rtol, atol: tolerances of the PID step-size controller (adaptive steps), and of the
            Newton iterations of the implicit solvers (which need adaptive steps).
        dt: fixed step size; when given, steps are not adapted (required for euler).
        dt0: first step of an adaptive solve (`None` lets diffrax choose).
        max_steps: most steps the solver may take.
        progress: show a tqdm progress bar.
        throw: raise if the solve fails; with `False` the failure is in `result`.

    Returns:
        A `Trajectory` with `xs` of shape `(len(ts), n, d)`.

    Works under `jit` and `vmap` (ensembles over seeds or parameters); the dtype follows
    `x0` (enable `jax_enable_x64` for float64).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}; got {solver!r}")
    if dt is None and solver in _FIXED_ONLY:
        raise ValueError(f"solver {solver!r} has no error estimate: pass dt= for fixed steps")
    if dt is not None and solver in _ADAPTIVE_ONLY:
        raise ValueError(
            f"solver {solver!r} is implicit and needs adaptive steps (a failed Newton solve is "
            "retried with a smaller step): omit dt"
        )
    if dt is not None and is_concrete(dt) and not dt > 0:
        raise ValueError(f"dt must be > 0; got {dt}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int; got {max_steps!r}")
    if not isinstance(flow, AbstractFlow):
        raise TypeError(
            f"flow must be an AttentionFlow (or another AbstractFlow, e.g. PreNormFlow); "
            f"got {type(flow).__name__}"
        )
    x0 = flow.space.check(x0, "x0")
    ts = jnp.asarray(ts, dtype=x0.dtype)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-d array of at least two times; got shape {ts.shape}")
    if is_concrete(ts) and not np.all(np.diff(np.asarray(ts)) > 0):
        raise ValueError("ts must be strictly increasing")
    weights = check_weights(weights, x0.shape[0])
    if solver in _ADAPTIVE_ONLY and x0.dtype != jnp.float64:
        # measured: USA at beta = 8 on S^2, float32, rtol 1e-4 to 1e-5: both Kvaerno methods
        # reach max_steps (their Newton iterations stall at float32 resolution)
        raise ValueError(
            f"solver {solver!r} is implicit and needs float64 (jax.config.update("
            f"'jax_enable_x64', True) and a float64 x0); got {x0.dtype}"
        )

    controller, dt0 = _controller(flow.jump_times(), ts, rtol, atol, dt, dt0)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(flow),
        SOLVERS[solver](),
        t0=ts[0],
        t1=ts[-1],
        dt0=dt0,
        y0=x0,
        args=weights,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=controller,
        max_steps=max_steps,
        progress_meter=diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter(),
        throw=False,
    )
    xs = sol.ys
    if throw:
        failed = sol.result != diffrax.RESULTS.successful
        hit_max = sol.result == diffrax.RESULTS.max_steps_reached
        if is_concrete(failed):
            if bool(hit_max):
                raise RuntimeError(_max_steps_message(max_steps, ts))
            if bool(failed):
                raise RuntimeError(f"simulate: the solve failed: {sol.result}")
        else:
            xs = eqx.error_if(xs, hit_max, _max_steps_message(max_steps, ts))
            xs = eqx.error_if(xs, failed, "simulate: the solve failed")
    if weights is None:
        weights = jnp.full((x0.shape[0],), 1 / x0.shape[0], x0.dtype)
    stats = sol.stats
    return Trajectory(
        ts=sol.ts,
        xs=xs,
        weights=weights,
        num_steps=stats["num_steps"],
        num_accepted=stats["num_accepted_steps"],
        num_rejected=stats["num_rejected_steps"],
        result=sol.result,
    )
