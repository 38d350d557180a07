r"""Propagation of chaos for a Gaussian initial law: $n$ particles against the exact limit.

Particles sampled i.i.d. from $N(m_0, S_0)$ and moved by softmax attention are compared with
the Gaussian closed form of the mean-field equation (`particles.meanfield.gaussian_flow`):
their empirical moments (`moment_errors`), the identity coupling to the exact mean-field
characteristics from the same initial points (`coupling_distance`), and sliced and exact
$W_2$ to a reference sample of the limit law. `propagation_of_chaos` runs this for several $n$
and seeds (`vmap`) and returns a `ChaosStudy` whose rates `particles.metrics.fit_power_law`
fits.

The $n^{-1/2}$ rate it measures is empirical: Sznitman's coupling argument (Sznitman 1991)
proves it for a globally Lipschitz, bounded interaction or compactly supported data, and a
Gaussian law under the exponential kernel is neither (`docs/theory.md`, section 4.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .. import clouds
from .._simulate import simulate
from ..attention import Attention
from ..devices import Devices, ensemble
from ..flows import AttentionFlow
from ..meanfield import GaussianSolution, gaussian_flow, moments

__all__ = ["ChaosStudy", "coupling_distance", "moment_errors", "propagation_of_chaos"]


def moment_errors(
    xs: Float[Array, "T n d"], solution: GaussianSolution, weights=None
) -> tuple[Float[Array, " T"], Float[Array, " T"]]:
    r"""$|\hat m(t) - m(t)|$ and $|\hat S(t) - S(t)|_F$ between a particle trajectory's empirical
    moments and the Gaussian closed form at the same times."""
    m, S = jax.vmap(lambda x: moments(x, weights))(xs)
    return (
        jnp.linalg.norm(m - solution.means, axis=-1),
        jnp.linalg.norm(S - solution.covs, axis=(-2, -1)),
    )


def coupling_distance(
    xs: Float[Array, "... n d"], ys: Float[Array, "... n d"]
) -> Float[Array, "..."]:
    r"""$\big(\frac1n \sum_i |x_i - y_i|^2\big)^{1/2}$: the cost of the identity coupling, an upper
    bound on $W_2$ between the two empirical measures."""
    return jnp.sqrt(jnp.mean(jnp.sum((jnp.asarray(xs) - jnp.asarray(ys)) ** 2, axis=-1), axis=-1))


class ChaosStudy(eqx.Module):
    r"""Propagation of chaos for a Gaussian initial law (`propagation_of_chaos`).

    Attributes:
        ns: particle numbers `(k,)`; ts: times `(T,)`.
        mean_error, cov_error: $|\hat m - m|$, $|\hat S - S|_F$, `(k, seeds, T)`.
        coupling: distance from the particles to the mean-field characteristics started at the
            same points (`GaussianSolution.characteristics`), `(k, seeds, T)`.
        sliced: sliced $W_2$ at the final time to a reference sample of the mean-field law of
            size `reference`, `(k, seeds)`.
        exact: exact $W_2$ (POT) at the final time to the first `exact_reference` points of
            that reference sample, `(k, seeds)`; NaN for $n$ above `exact_max_n`.
        solution: the Gaussian closed form.
    """

    ns: Int[Array, " k"]
    ts: Float[Array, " T"]
    mean_error: Float[Array, "k b T"]
    cov_error: Float[Array, "k b T"]
    coupling: Float[Array, "k b T"]
    sliced: Float[Array, "k b"]
    exact: Float[Array, "k b"]
    solution: GaussianSolution

    def rms(self, name: str) -> Float[Array, "k T"]:
        """Root mean square over seeds of `mean_error`, `cov_error` or `coupling`."""
        return jnp.sqrt(jnp.mean(getattr(self, name) ** 2, axis=1))


def propagation_of_chaos(
    key: PRNGKeyArray,
    attention: Attention,
    mean: Float[Array, " d"],
    cov: Float[Array, "d d"],
    ns: Sequence[int],
    ts: Float[Array, " T"],
    *,
    seeds: int = 8,
    reference: int = 1 << 15,
    projections: int = 128,
    exact_reference: int | None = None,
    exact_max_n: int = 1024,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float = 1e-6,
    atol: float = 1e-6,
    devices: Devices = None,
) -> ChaosStudy:
    r"""Sample $n$ particles from $N(m_0, S_0)$, simulate, and measure the distance to the limit.

    For each $n$ in `ns`, `seeds` independent clouds are simulated at once (`vmap`), and at each
    saved time the study records the moment errors against the closed form (`moment_errors`),
    the coupling distance to the exact mean-field characteristics from the same initial points
    (the synchronous coupling of Sznitman's argument), and at the final time the sliced $W_2$ to
    an independent reference sample of $N(m(t), S(t))$ of size `reference` and, for
    $n \le$ `exact_max_n`, the exact $W_2$ (POT's network simplex, `wasserstein.w2`) to its
    first `exact_reference` points. The exact distance includes the reference's own sampling
    error, so keep `exact_max_n` a few times below `exact_reference`. Fit rates with
    `fit_power_law(ns, study.rms("mean_error")[:, -1])`: about $-1/2$, as measured.

    **The rate is empirical.** Sznitman's coupling argument (Sznitman 1991) proves
    $\mathbb{E}|x_i(t) - X_t(x_i(0))| = O(n^{-1/2})$ on finite time intervals for a globally
    Lipschitz, bounded interaction, or for compactly supported data where a local Lipschitz
    constant serves. A Gaussian law under the exponential kernel $e^{\beta\langle Qx, Ky
    \rangle}$ satisfies neither (unbounded support; an unbounded kernel and a field that is
    only locally Lipschitz), and under the L2 kernel the support is still unbounded, so the
    $n^{-1/2}$ decay this study reports is a measurement in this setting, not a consequence
    of the theorem; at $t = 0$ it is the central-limit rate of
    the sample moments (`docs/theory.md`, section 4.5).

    Args:
        key: PRNG key (initial clouds, reference sample, slicing directions).
        attention: softmax attention with a Gaussian closed form (see `affine_field`).
        mean, cov: the initial law $N(m_0, S_0)$.
        ns: particle numbers; seeds: clouds per $n$.
        ts: save times.
        reference, projections: size of the reference sample and number of slicing directions.
        exact_reference, exact_max_n: size of the reference of the exact $W_2$ (at most
            `reference`; `None` is `min(4096, reference)`: POT takes about 2.5 s for 4096
            points against 4096 on two CPU cores), and the largest $n$ it is computed for
            (0: never).
        solver, rtol, atol: particle solver options (`simulate`).
        devices: split the seeds of each $n$ over devices (`particles.devices`); `None` is
            the default of `particles.devices.use` (one device outside it).

    Returns:
        A `ChaosStudy`.
    """
    from ..wasserstein import sliced_w2, w2

    ns = [int(n) for n in ns]
    if not ns or min(ns) < 2:
        raise ValueError(f"ns must be a non-empty list of ints >= 2; got {ns}")
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int; got {seeds!r}")
    if exact_reference is None:
        exact_reference = min(4096, reference)
    if not isinstance(exact_reference, int) or not 1 <= exact_reference <= reference:
        raise ValueError(
            f"exact_reference must be an int in [1, reference = {reference}]; "
            f"got {exact_reference!r}"
        )
    if not isinstance(exact_max_n, int) or exact_max_n < 0:
        raise ValueError(f"exact_max_n must be an int >= 0; got {exact_max_n!r}")
    solution = gaussian_flow(attention, mean, cov, ts)
    if bool(solution.blew_up):
        raise ValueError(
            f"the Gaussian closed form blows up at t = {float(solution.blowup_time):.6g} before "
            f"ts[-1] = {float(solution.ts[-1]):.6g}: shorten ts"
        )
    flow = AttentionFlow(attention)
    k_ref, k_proj, k_runs = jax.random.split(key, 3)
    x_ref = clouds.gaussian(k_ref, reference, solution.means[0], solution.covs[0])
    ref = solution.characteristics(x_ref)[-1]

    def one(k, n, solution, ref):
        x0 = clouds.gaussian(k, n, solution.means[0], solution.covs[0])
        xs = simulate(flow, x0, solution.ts, solver=solver, rtol=rtol, atol=atol).xs
        me, ce = moment_errors(xs, solution)
        coupling = coupling_distance(xs, solution.characteristics(x0))
        sliced = sliced_w2(k_proj, xs[-1], ref, projections=projections)
        if n <= exact_max_n:
            exact = w2(xs[-1], ref[:exact_reference])
        else:
            exact = jnp.full((), jnp.nan, xs.dtype)
        return me, ce, coupling, sliced, exact

    rows = []
    for i, n in enumerate(ns):
        keys = jax.random.split(jax.random.fold_in(k_runs, i), seeds)
        # the solution and reference are arguments, not closed-over constants, so that
        # nothing concrete is re-traced inside jit
        batch = eqx.filter_jit(eqx.filter_vmap(one, in_axes=(0, None, None, None)))

        def seeds_of(keys, solution, ref, n=n, batch=batch):
            return batch(keys, n, solution, ref)

        rows.append(ensemble(seeds_of, devices, in_axes=(0, None, None))(keys, solution, ref))
    me, ce, cp, sw, ex = (jnp.stack(a) for a in zip(*rows, strict=True))
    return ChaosStudy(
        ns=jnp.asarray(ns),
        ts=solution.ts,
        mean_error=me,
        cov_error=ce,
        coupling=cp,
        sliced=sw,
        exact=ex,
        solution=solution,
    )
