"""Integration of a flow with diffrax."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._checks import check_weights, is_concrete
from .flows import AttentionFlow

SOLVERS = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "ralston": diffrax.Ralston,
    "bosh3": diffrax.Bosh3,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "tsit5": diffrax.Tsit5,
}
# Euler has no embedded error estimate, so it cannot drive an adaptive step.
_FIXED_ONLY = ("euler",)


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


def simulate(
    flow: AttentionFlow,
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
        flow: the vector field, e.g. `AttentionFlow(SelfAttention.identity(3), Sphere())`.
        x0: initial cloud, shape `(n, d)`; on the sphere it must have unit rows.
        ts: increasing save times; the solve runs from `ts[0]` to `ts[-1]`.
        weights: token weights summing to one (`None` is uniform).
        solver: one of euler, heun, midpoint, ralston, bosh3, dopri5, dopri8, tsit5.
        rtol, atol: tolerances of the PID step-size controller (adaptive steps).
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
    if dt is not None and is_concrete(dt) and not dt > 0:
        raise ValueError(f"dt must be > 0; got {dt}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int; got {max_steps!r}")
    if not isinstance(flow, AttentionFlow):
        raise TypeError(f"flow must be an AttentionFlow; got {type(flow).__name__}")
    x0 = flow.space.check(x0, "x0")
    ts = jnp.asarray(ts, dtype=x0.dtype)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-d array of at least two times; got shape {ts.shape}")
    if is_concrete(ts) and not np.all(np.diff(np.asarray(ts)) > 0):
        raise ValueError("ts must be strictly increasing")
    weights = check_weights(weights, x0.shape[0])

    if dt is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol, jump_ts=flow.jump_times())
    else:
        controller = diffrax.ConstantStepSize()
        dt0 = dt
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
