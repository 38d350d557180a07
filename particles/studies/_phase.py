r"""Phase diagrams of clustering on the sphere: the probability of one cluster against
$\beta$ and $t$.

For $Q = K = V = I$ on $S^{d-1}$, $d \ge 3$, almost every cloud of the attention flow
$\dot x_i = P_{x_i} v[\mu](x_i)$ converges to a single cluster, for softmax (SA) and
unnormalized (USA) attention; for large $\beta$ it first lingers in several clusters
(metastability) before merging (Geshkovski, Letrouit, Polyanskiy, Rigollet, *A mathematical
perspective on Transformers*, 2023, section 5). `phase_diagram` measures
$P(\min_{i \ne j}\langle x_i(t), x_j(t)\rangle > 1 - \varepsilon)$ over random uniform
starts, for every $\beta$ of a grid, in one vmapped diffrax solve.
"""

from __future__ import annotations

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._checks import check_supported, is_concrete
from .._solve import check_solver, solve, stats
from ..attention import AbstractNormalization, Attention, Softmax, Unnormalized
from ..clouds import sphere_uniform
from ..devices import Devices, ensemble
from ..flows import AttentionFlow
from ..metrics import min_inner_product
from ..spaces import Sphere

__all__ = ["PhaseDiagram", "phase_diagram"]


class PhaseDiagram(eqx.Module):
    r"""An ensemble of clouds on the sphere, one batch of random starts per $\beta$.

    Attributes:
        betas: inverse temperatures, shape `(B,)`.
        ts: saved times, shape `(T,)`.
        x0: the starting clouds, shape `(R, n, d)`, shared by every beta.
        final: each member's cloud at `ts[-1]`, shape `(B, R, n, d)`.
        min_inner: $\min_{i \ne j}\langle x_i(t), x_j(t)\rangle$ of each member at each saved
            time, shape `(B, R, T)`: the whole ensemble, compressed to the number that
            decides "one cluster" for every threshold.
        num_steps: solver steps of each member, shape `(B, R)`. A vmapped solve runs as
            many steps as its slowest member; the others stop changing once done.
        result: diffrax result code of each member, shape `(B, R)`.
    """

    betas: Float[Array, " B"]
    ts: Float[Array, " T"]
    x0: Float[Array, "R n d"]
    final: Float[Array, "B R n d"]
    min_inner: Float[Array, "B R T"]
    num_steps: Int[Array, "B R"]
    result: Int[Array, "B R"]

    def probability(self, eps: float = 1e-3) -> Float[Array, "B T"]:
        r"""$P(\text{one cluster at } t)$ for each $\beta$: the fraction of members with
        every $\langle x_i, x_j\rangle > 1 - \varepsilon$."""
        return jnp.mean(self.min_inner > 1 - eps, axis=1)

    def standard_error(self, eps: float = 1e-3) -> Float[Array, "B T"]:
        r"""Binomial standard error $\sqrt{p(1-p)/R}$ of `probability`."""
        p = self.probability(eps)
        return jnp.sqrt(p * (1 - p) / self.min_inner.shape[1])


def phase_diagram(
    key: PRNGKeyArray | None,
    betas: Float[Array, " B"],
    ts: Float[Array, " T"],
    *,
    n: int = 32,
    d: int = 3,
    runs: int = 1024,
    normalization: AbstractNormalization = Softmax(),
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float = 1e-5,
    atol: float = 1e-6,
    max_steps: int = 100_000,
    starts: Float[Array, "R n d"] | None = None,
    by_beta: bool = True,
    devices: Devices = None,
) -> PhaseDiagram:
    r"""Simulate `runs` clouds uniform on $S^{d-1}$ for every $\beta$, in one vmapped solve.

    Every member follows $\dot x_i = P_{x_i} v[\mu](x_i)$ with $Q = K = V = I$; the same
    `runs` starting clouds are used for every $\beta$ (common random numbers: differences
    between betas are not sampling noise). The solve is a single `vmap` over betas and
    starts of `simulate`, so the ensemble compiles once and runs as one batched adaptive
    loop (Geshkovski, Letrouit, Polyanskiy, Rigollet, *A mathematical perspective on
    Transformers*, 2023, phase diagram of section 5).

    Args:
        key: PRNG key of the starting clouds (ignored, and may be None, with `starts`).
        betas: inverse temperatures, shape `(B,)`, all > 0.
        ts: increasing save times, shape `(T,)`.
        n, d: tokens per cloud and ambient dimension ($S^{d-1}$).
        runs: random starts per beta.
        normalization: `Softmax()` (SA) or `Unnormalized()` (USA).
        solver, rtol, atol, max_steps: as in `simulate` (adaptive steps).
        starts: given starting clouds `(R, n, d)` on the sphere, used instead of drawing
            them from `key` (then `n`, `d` and `runs` are read from its shape); e.g. the same
            starts in float32 and float64 for a precision study.
        by_beta: one batched solve per beta, in sequence (default), or one batched solve of
            every (beta, start) at once (`False`). Members and results are the same.
        devices: split the starts over devices (`particles.devices`: `"all"`, a count, a
            mesh); `None` is the default of `particles.devices.use` (one device outside it).

    Cost: members keep their own adaptive step sizes (a member equals the same run done
    alone, step count included), but a batched loop runs until its slowest member is done,
    so the work is `R * max(num_steps)` field evaluations' worth per batch. Batching per
    beta (`by_beta=True`) lets a batch of low beta stop early instead of waiting for the
    stiffest beta; the useful fraction is the sum over betas of `mean(num_steps)` over the
    sum of `max(num_steps)` (`benchmarks/bench_phase_diagram.py` reports both, measured).
    Each member saves only its minimum inner products at `ts` and its final cloud.

    Returns:
        A `PhaseDiagram`; `.probability(eps)` is the `(B, T)` heat map.

    Raises:
        ValueError: bad sizes, betas or options, before any work.
        RuntimeError: if a member fails (e.g. reaches `max_steps`).
    """
    check_supported(normalization, (Softmax, Unnormalized), "normalization", "the phase diagram")
    for name, value, low in (("n", n, 2), ("d", d, 2), ("runs", runs, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    betas = jnp.asarray(betas)
    if betas.ndim != 1 or betas.shape[0] < 1:
        raise ValueError(f"betas must be a 1-d array of at least one value; got {betas.shape}")
    if is_concrete(betas) and not bool(jnp.all(betas > 0)):
        raise ValueError(f"betas must all be > 0; got {np.asarray(betas)}")
    ts = jnp.asarray(ts, dtype=jnp.result_type(float))
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-d array of at least two times; got shape {ts.shape}")
    if is_concrete(ts) and not np.all(np.diff(np.asarray(ts)) > 0):
        raise ValueError("ts must be strictly increasing")
    check_solver(solver, fixed_steps=False, dtype=ts.dtype)
    if starts is None:
        if key is None:
            raise ValueError("phase_diagram needs a PRNG key, or the starting clouds as starts=")
        x0 = jax.vmap(lambda k: sphere_uniform(k, n, d))(jax.random.split(key, runs))
    else:
        x0 = jnp.asarray(starts)
        if x0.ndim != 3:
            raise ValueError(f"starts must have shape (runs, n, d); got {x0.shape}")
    x0 = x0.astype(ts.dtype)
    solve = functools.partial(
        _phase_diagram,
        normalization=normalization,
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        by_beta=bool(by_beta),
    )
    # each device solves every beta for its block of starts (axis 1 of the outputs)
    final, min_inner, steps, result = ensemble(solve, devices, in_axes=(None, None, 0), out_axes=1)(
        betas.astype(ts.dtype), ts, x0
    )
    if is_concrete(result) and bool(jnp.any(result != 0)):
        failed = int(jnp.sum(result != 0))
        raise RuntimeError(
            f"phase_diagram: {failed} of {result.size} members failed (max_steps={max_steps} "
            "reached or the solve diverged); raise max_steps or loosen rtol/atol"
        )
    return PhaseDiagram(
        betas=betas,
        ts=ts,
        x0=x0,
        final=final,
        min_inner=min_inner,
        num_steps=steps,
        result=result,
    )


@eqx.filter_jit
def _phase_diagram(betas, ts, x0, *, normalization, solver, rtol, atol, max_steps, by_beta):
    d = x0.shape[-1]
    # Saved per step: the (T,) minimum inner products and the final cloud, not the
    # (T, n, d) trajectory, so a batched step moves and selects T numbers per member where
    # it moved T n d (the dense output is evaluated at the same times either way).
    saveat = diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(ts=ts, fn=lambda t, x, args: min_inner_product(x)),
            diffrax.SubSaveAt(t1=True),
        ]
    )

    def member(beta, x):
        attention = Attention.identity(d, beta, normalization=normalization)
        flow = AttentionFlow(attention, Sphere())
        # the controller and first step of `simulate`: a member is the same run done alone
        sol, (mins, final) = solve(
            diffrax.ODETerm(flow),
            solver,
            ts,
            Sphere().check(x, "x0"),
            controller=diffrax.PIDController(rtol=rtol, atol=atol),
            saveat=saveat,
            max_steps=max_steps,
            throw=False,
            caller="phase_diagram",
        )
        code = jnp.where(sol.result == diffrax.RESULTS.successful, 0, 1)
        return final[-1], mins, stats(sol).num_steps, code

    over_starts = jax.vmap(member, in_axes=(None, 0))
    if by_beta:
        # one batched solve per beta, in sequence: each stops at its own slowest member
        return jax.lax.map(lambda beta: over_starts(beta, x0), betas)
    return jax.vmap(over_starts, in_axes=(0, None))(betas, x0)
