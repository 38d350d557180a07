r"""Wasserstein stability: how far two nearby clouds drift apart under the same flow.

Attention is Lipschitz in Wasserstein distance on compact sets (Vuckovic, Baratin, Tachet des
Combes 2020; Castin, Ablin, Peyré 2024), so two clouds moved by the same flow obey
$W_2(\mu_t, \nu_t) \le e^{L t} W_2(\mu_0, \nu_0)$. `stability` simulates both clouds and
records the exact $W_2$, the identity-coupling distance and the Grönwall bound from the
logarithmic norm of the particle field's Jacobian along the trajectory (`StabilityStudy`);
see `docs/theory.md`, section 6.4.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import check_cloud
from .._simulate import simulate
from ..devices import Devices, ensemble, resolve
from ..flows import AttentionFlow
from ._chaos import coupling_distance

__all__ = ["StabilityStudy", "stability"]


class StabilityStudy(eqx.Module):
    r"""Two clouds moved by the same flow (`stability`).

    Attributes:
        ts: times `(T,)`.
        w2: exact $W_2(\mu_t, \nu_t)$, `(T,)`.
        coupling: $D(t) = (\frac1n \sum_i |x_i(t) - y_i(t)|^2)^{1/2} \ge W_2$, `(T,)`.
        log_norm: the logarithmic norm $\lambda_{\max}\big((J + J^\top)/2\big)$ of the Jacobian
            $J$ of the particle field $X \mapsto (v[\mu_X](x_i))_i$ along the first trajectory,
            `(T,)`.
        bound: the Grönwall bound $D(0) \exp(\int_0^t \lambda(s) ds)$ (trapezoid rule on `ts`),
            valid for $D$ to first order in the initial distance, `(T,)`.
    """

    ts: Float[Array, " T"]
    w2: Float[Array, " T"]
    coupling: Float[Array, " T"]
    log_norm: Float[Array, " T"]
    bound: Float[Array, " T"]

    @property
    def ratio(self) -> Float[Array, " T"]:
        r"""$W_2(\mu_t, \nu_t) / W_2(\mu_0, \nu_0)$."""
        return self.w2 / self.w2[0]

    @property
    def rate(self) -> Float[Array, ""]:
        r"""The smallest $L$ with $W_2(\mu_t, \nu_t) \le e^{L t} W_2(\mu_0, \nu_0)$ on `ts`."""
        elapsed = self.ts[1:] - self.ts[0]
        return jnp.max(jnp.log(self.ratio[1:]) / elapsed)


def stability(
    flow: AttentionFlow,
    x0: Float[Array, "n d"],
    y0: Float[Array, "n d"],
    ts: Float[Array, " T"],
    *,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float = 1e-8,
    atol: float = 1e-8,
    devices: Devices = None,
) -> StabilityStudy:
    r"""Measure how the Wasserstein distance between two clouds grows along the flow.

    Attention is Lipschitz in $W_2$ on compact sets (Vuckovic et al. 2020; Castin, Ablin,
    Peyré 2024), so $W_2(\mu_t, \nu_t) \le e^{L t} W_2(\mu_0, \nu_0)$. The study reports the
    measured $W_2$ (exact, POT) at each time, the identity-coupling distance $D(t)$, and the
    Grönwall bound from the logarithmic norm of the particle field's Jacobian.

    Args:
        flow: the flow moving both clouds.
        x0, y0: clouds of the same shape `(n, d)` (e.g. `y0 = x0 +` a perturbation of size
            `delta`); a dense $nd \times nd$ Jacobian is formed, so keep $n d \lesssim 2000$.
        ts: save times; solver, rtol, atol: `simulate` options.
        devices: split the Jacobians of the saved times over devices (`particles.devices`);
            `None` is the default of `particles.devices.use` (one device outside it).
    """
    from ..wasserstein import w2

    x0, y0 = check_cloud(x0, "x0"), check_cloud(y0, "y0")
    if x0.shape != y0.shape:
        raise ValueError(f"x0 and y0 must have the same shape; got {x0.shape} and {y0.shape}")
    trajectory = simulate(flow, x0, ts, solver=solver, rtol=rtol, atol=atol)
    ys = simulate(flow, y0, ts, solver=solver, rtol=rtol, atol=atol).xs
    xs, ts = trajectory.xs, trajectory.ts  # the times as simulate checked them
    n, d = x0.shape

    @jax.jit
    def log_norm(t, x):
        def field(flat):
            return flow(t, flat.reshape(n, d), None).reshape(-1)

        J = jax.jacfwd(field)(x.reshape(-1))
        return jnp.linalg.eigvalsh((J + J.T) / 2)[-1]

    if resolve(devices) is None:
        lam = jnp.stack([log_norm(t, x) for t, x in zip(ts, xs, strict=True)])
    else:  # one dense Jacobian per saved time: the times are the ensemble
        lam = ensemble(jax.vmap(log_norm), devices)(ts, xs)
    integral = jnp.concatenate(
        [jnp.zeros(1, lam.dtype), jnp.cumsum(jnp.diff(ts) * (lam[1:] + lam[:-1]) / 2)]
    )
    coupling = coupling_distance(xs, ys)
    distances = jnp.stack([w2(x, y) for x, y in zip(xs, ys, strict=True)])
    return StabilityStudy(
        ts=ts, w2=distances, coupling=coupling, log_norm=lam, bound=coupling[0] * jnp.exp(integral)
    )
