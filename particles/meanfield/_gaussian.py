r"""The Gaussian closed form of the mean-field equation (softmax attention in $\mathbb{R}^d$).

For softmax attention the field of a Gaussian $N(m, S)$ is affine, $v(x) = B x + c$
(`affine_field`): tilting a Gaussian by the dot-product or the L2 kernel gives another
Gaussian, whose mean is what softmax averages. An affine field maps Gaussians to Gaussians, so
the continuity equation $\partial_t \mu + \nabla \cdot (\mu\, v[\mu]) = 0$ started at
$N(m_0, S_0)$ stays Gaussian and reduces to ordinary differential equations for the mean, the
covariance and the linear part of the flow map,

$$ m' = B m + c, \qquad S' = B S + S B^\top, \qquad \Phi' = B \Phi, $$

solved by `gaussian_flow`. With the dot-product kernel $B$ grows with $S$ and the covariance
can blow up in finite time (a Riccati equation); the solver detects that on the covariance
alone, against its own Riccati trend, and reports it. Only the kernels and normalizations
with a closed form are accepted; any other raises `NotImplementedError` naming it.

The derivation and the exact solutions the tests check are in `docs/theory.md`, section 4.2
(Vuckovic, Baratin, Tachet des Combes 2020; Geshkovski, Letrouit, Polyanskiy, Rigollet 2023;
Kim, Papamakarios, Mnih 2021 for the L2 kernel).
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float

from .._checks import check_cloud, check_supported, is_concrete, value_check
from .._solve import AbstractSolution, Stats, check_solver, check_times, solve, stats
from ..attention import L2, Attention, DotProduct, Softmax
from ..flows import AttentionFlow
from ..spaces import Euclidean

__all__ = ["GaussianSolution", "affine_field", "gaussian_flow"]

_WHAT = "the Gaussian mean-field closed form"


def _check_closed_form(attention) -> None:
    """Raise unless `attention` has a Gaussian closed form: softmax, a kernel with a tilt
    formula (`_tilted_field`), no causal mask."""
    if not isinstance(attention, Attention):
        raise TypeError(f"attention must be an Attention; got {type(attention).__name__}")
    check_supported(attention.kernel, (DotProduct, L2), "kernel", _WHAT)
    # unnormalized attention multiplies the softmax field by a partition function Z(x) that
    # depends on x, so its field of a Gaussian is not affine
    check_supported(attention.normalization, (Softmax,), "normalization", _WHAT)
    if attention.causal:
        raise ValueError(
            "the Gaussian closed form has no causal version: a causal mean field depends on "
            "token positions (see causal_tokens)"
        )


def _tilted_field(kernel, beta, mean, cov, Q, K, V):
    """One head's affine field `(B, c)`, by the kernel's tilt formula (see `affine_field`)."""
    tilt = beta * cov @ K.T @ Q  # x -> shift of the tilted mean
    if isinstance(kernel, DotProduct):
        return V @ tilt, V @ mean
    if isinstance(kernel, L2):
        d = cov.shape[0]
        M = jnp.linalg.inv(jnp.eye(d, dtype=cov.dtype) + beta * cov @ K.T @ K)
        return V @ M @ tilt, V @ M @ mean
    # `_check_closed_form` admits only the kernels above; a kernel added there without a
    # formula here must fail loudly, never fall through to another kernel's formula
    raise NotImplementedError(f"{_WHAT}: no tilt formula for {type(kernel).__name__}")


def affine_field(
    attention: Attention,
    mean: Float[Array, " d"],
    cov: Float[Array, "d d"],
) -> tuple[Float[Array, "d d"], Float[Array, " d"]]:
    r"""The attention field of a Gaussian, $v[N(m, S)](x) = B x + c$: it is affine.

    **Dot-product kernel.** Tilting $N(m, S)$ by $e^{\beta \langle Qx, Ky \rangle}$ in $y$
    multiplies its density by $e^{\langle \beta K^\top Q x,\, y\rangle}$, which shifts the mean:
    the tilted law is $N(m + \beta S K^\top Q x,\ S)$. Softmax attention is $V$ times the mean of
    the tilted law, so $v(x) = V(m + \beta S K^\top Q x)$: $B = \beta V S K^\top Q$, $c = V m$
    (docs/theory.md 4.2).

    **L2 kernel** $e^{-\beta |Qx - Ky|^2 / 2}$ (Kim, Papamakarios, Mnih 2021). In $y$ the
    log-density of the tilted law is, up to constants,
    $-\tfrac12 (y - m)^\top S^{-1} (y - m) - \tfrac{\beta}{2} y^\top K^\top K y
    + \beta\, y^\top K^\top Q x$ (the $|Qx|^2$ term cancels in the softmax). It is Gaussian with
    precision $S^{-1} + \beta K^\top K$ and mean
    $(S^{-1} + \beta K^\top K)^{-1}(S^{-1} m + \beta K^\top Q x) = M (m + \beta S K^\top Q x)$,
    $M = (I + \beta S K^\top K)^{-1}$, using $(S^{-1} + \beta K^\top K)^{-1} = M S$. The last
    form needs no inverse of $S$ and holds for degenerate $S$ by continuity ($I + \beta S
    K^\top K$ is invertible: its eigenvalues are those of $I + \beta S^{1/2} K^\top K S^{1/2}$,
    at least 1). So $v(x) = V M (m + \beta S K^\top Q x)$: $B = \beta V M S K^\top Q$,
    $c = V M m$. The tilted covariance $M S \preceq (\beta K^\top K)^{-1}$ stays bounded, which
    is why L2 attention (with $K$ of full rank) has no finite-time blow-up.

    **Several heads** add their fields: $B = \sum_h B_h$, $c = \sum_h c_h$.

    Args:
        attention: a softmax `Attention` (one or several heads, not causal) with a
            `DotProduct` or `L2` kernel; any other kernel or normalization raises
            `NotImplementedError` naming it.
        mean, cov: $m$ `(d,)` and $S$ `(d, d)` (symmetric positive semidefinite).

    Returns:
        `(B (d, d), c (d,))`.
    """
    _check_closed_form(attention)
    d = attention.dim
    mean, cov = jnp.asarray(mean), jnp.asarray(cov)
    if mean.shape != (d,):
        raise ValueError(f"mean must have shape ({d},); got {mean.shape}")
    if cov.shape != (d, d):
        raise ValueError(f"cov must have shape ({d}, {d}); got {cov.shape}")
    beta = attention.beta

    def head(Q, K, V):
        return _tilted_field(attention.kernel, beta, mean, cov, Q, K, V)

    Bs, cs = jax.vmap(head)(attention.Q, attention.K, attention.V)
    return jnp.sum(Bs, axis=0), jnp.sum(cs, axis=0)


class GaussianSolution(AbstractSolution):
    r"""The mean-field solution $N(m(t), S(t))$ from a Gaussian initial law (`gaussian_flow`).

    Attributes:
        ts: the requested times `(T,)`.
        means: $m(t)$, `(T, d)`; covs: $S(t)$, `(T, d, d)`.
        flow_maps: the linear part $\Phi(t)$ of the mean-field flow map
            $X_t(x) = m(t) + \Phi(t)(x - m_0)$, `(T, d, d)` ($\Phi' = B(t)\Phi$, $\Phi(0) = I$).
        blowup_time: the time at which the solve stopped because the covariance was about to
            blow up before `ts[-1]`, or `inf`. Values at requested times after it are NaN.
        blowup_estimate: the blow-up time extrapolated from that point along the Riccati
            trend, $t_* \approx t + |S|_F^2 / \langle S, S' \rangle$ (exact for
            $|S| \propto 1/(t_* - t)$); `inf` when no blow-up was detected.
        stats: the solver's step counts.
        result: the diffrax result (`successful`, or `event_occurred` on blow-up).
    """

    ts: Float[Array, " T"]
    means: Float[Array, "T d"]
    covs: Float[Array, "T d d"]
    flow_maps: Float[Array, "T d d"]
    blowup_time: Float[Array, ""]
    blowup_estimate: Float[Array, ""]
    stats: Stats
    result: diffrax.RESULTS

    @property
    def blew_up(self):
        """True when the covariance blows up before `ts[-1]` (see `gaussian_flow`)."""
        return jnp.isfinite(self.blowup_time)

    def characteristics(self, x0: Float[Array, "n d"]) -> Float[Array, "T n d"]:
        r"""Push points through the mean-field flow map $X_t(x) = m(t) + \Phi(t)(x - m_0)$.

        Points sampled from $N(m_0, S_0)$ and pushed this way are exact samples of the
        mean-field law at every time (an affine image of a Gaussian). Pairing each of $n$
        particles with the characteristic from its own initial point is the synchronous
        coupling of Sznitman's propagation-of-chaos argument (Sznitman 1991). That argument
        proves an $O(n^{-1/2})$ distance only for a globally Lipschitz, bounded interaction or
        for compactly supported data; neither holds for a Gaussian law under the exponential
        kernel (unbounded support, a field that is only locally Lipschitz), so the rate that
        `particles.studies.propagation_of_chaos` measures with this coupling is empirical, not
        a theorem (docs/theory.md 4.5).
        """
        x0 = check_cloud(x0, "x0")
        return self.means[:, None, :] + jnp.einsum(
            "tij,nj->tni", self.flow_maps, x0 - self.means[0]
        )


def _check_model(model):
    """Check that `model` has a Gaussian closed form; return its jump times (or None)."""
    if isinstance(model, AttentionFlow):
        if not isinstance(model.space, Euclidean):
            raise ValueError(
                "the Gaussian closed form lives in R^d: the flow's space must be Euclidean()"
            )
        if model.feedforward is not None:
            raise ValueError(
                "the Gaussian closed form has no feed-forward term: a nonlinear f(x) does not "
                "keep Gaussians Gaussian"
            )
        _check_closed_form(model.attention_at(0.0))
        return model.jump_times()
    _check_closed_form(model)
    return None


def _at(model, t):
    return model.attention_at(t) if isinstance(model, AttentionFlow) else model


def _gaussian_rhs(t, state, args):
    model = args[0]
    m, S, Phi = state
    B, c = affine_field(_at(model, t), m, S)
    BS = B @ S
    return B @ m + c, BS + BS.T, B @ Phi


def _rate(t, state, args):
    r"""$\langle S, S' \rangle / |S|_F^2 = \tfrac{d}{dt} \log |S|_F$: for Riccati growth
    $|S| \propto 1/(t_* - t)$ it is $1/(t_* - t)$, the inverse of the time left (0 for $S = 0$)."""
    S = state[1]
    _, dS, _ = _gaussian_rhs(t, state, args)
    square = jnp.sum(S**2)
    return jnp.sum(S * dS) / jnp.where(square > 0, square, 1)


def _blowing_up(t, y, args, **kwargs):
    r"""Positive once the covariance is about to blow up before the horizon $t_1$.

    With $\tau = 1/\text{rate}$ the time left on the Riccati trend and $t_* = t + \tau$, both
    terms are positive exactly when $\tau < \delta\,(t_* - t_0)$ (the blow-up is closer than
    the resolution $\delta$ of the time elapsed since $t_0$: the covariance has grown by about
    $1/\delta$ along that trend) and $t_* < t_1$. Growth like $e^{rt}$ has $\tau = 1/r$ for
    ever and meets the first condition only after $t - t_0 \approx 1/(\delta r)$; a covariance at
    rest or shrinking has rate $\le 0$ and meets neither. Written without dividing by the
    rate, so the function is continuous for the root finder.
    """
    _, t0, t1, resolution = args
    rate = _rate(t, y, args)
    near = resolution * (t - t0) * rate - (1 - resolution)
    before = (t1 - t) * rate - 1
    return jnp.minimum(near, before)


def gaussian_flow(
    model: Attention | AttentionFlow,
    mean: Float[Array, " d"],
    cov: Float[Array, "d d"],
    ts: Float[Array, " T"],
    *,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float | None = None,
    atol: float | None = None,
    resolution: float | None = None,
    max_steps: int = 100_000,
    throw: bool = True,
) -> GaussianSolution:
    r"""Solve the mean-field equation from $N(m_0, S_0)$: a Gaussian at every time.

    With $v[N(m, S)](x) = B x + c$ (`affine_field`), the Gaussian family is invariant and

    $$ m' = B m + c, \qquad S' = B S + S B^\top, \qquad \Phi' = B \Phi, $$

    for dot-product softmax $m' = V(m + \beta S K^\top Q m)$, $S' = A S + S A^\top$,
    $A = \beta V S K^\top Q$ (docs/theory.md 4.2). Given $S$, the equations for $m$ and
    $\Phi$ are linear, so only the covariance can blow up. Since $B$ grows with $S$, $S$ obeys
    a Riccati-type equation that can blow up in finite time (e.g. $Q = K = V = I$:
    $S' = 2\beta S^2$, $t_* = 1 / (2 \beta \lambda_{\max}(S_0))$), while the mean may grow
    like $e^t$ without any blow-up (for a Dirac, $S_0 = 0$, $m(t) = e^t m_0$ for ever).

    **Blow-up detection.** A diffrax event watches the covariance alone, against its own
    Riccati trend: with $\tau = |S|_F^2 / \langle S, S' \rangle$ the time left if $|S|$ grew
    like $1/(t_* - t)$, the solve stops when $\tau < \delta\,(t + \tau - t_0)$ and the
    estimate $t_* = t + \tau$ lies before `ts[-1]`. The solution then reports `blowup_time`
    (where it stopped), `blowup_estimate` ($t_*$) and NaN after them, never `inf`. A blow-up
    estimated after the horizon is not reported: the solve runs on to `ts[-1]`, where the
    solution is finite. Exponential growth (possible with the L2 kernel) has a constant
    $\tau$ and is not a blow-up.

    Args:
        model: softmax `Attention` (kernel `DotProduct` or `L2`, one or several heads), or a
            Euclidean `AttentionFlow` of one (time-dependent `Layered` weights allowed).
        mean, cov: initial $m_0$ `(d,)`, $S_0$ `(d, d)` symmetric positive semidefinite.
        ts: increasing save times; the solve starts at `ts[0]`.
        solver, rtol, atol, max_steps: diffrax options (adaptive steps); `None` tolerances
            are 1e-10 in float64 and 1e-6 in float32.
        resolution: $\delta \in (0, 1)$ above; default $\epsilon^{1/2}$, $\epsilon$ the
            dtype's machine epsilon ($1.5 \cdot 10^{-8}$ in float64, $3.5 \cdot 10^{-4}$ in
            float32): the solve stops when $t_* - t$ is $\delta$ times $t_* - t_0$, i.e. the
            covariance has grown by about $1/\delta$ along a Riccati trend; the dtype still
            resolves $t_* - t \gg \epsilon\, t_*$ there.
        throw: raise if the solver fails (other than by a detected blow-up).

    Returns:
        A `GaussianSolution`.
    """
    jumps = _check_model(model)
    mean, cov = jnp.asarray(mean), jnp.asarray(cov)
    d = _at(model, 0.0).dim
    if mean.shape != (d,):
        raise ValueError(f"mean must have shape ({d},); got {mean.shape}")
    if cov.shape != (d, d):
        raise ValueError(f"cov must have shape ({d}, {d}); got {cov.shape}")
    dtype = jnp.result_type(mean.dtype, cov.dtype, jnp.zeros(()).dtype)
    mean, cov = mean.astype(dtype), cov.astype(dtype)
    if is_concrete(cov):
        c = np.asarray(cov, dtype=float)
        if not np.all(np.isfinite(c)) or not np.allclose(c, c.T, atol=1e-6):
            raise ValueError("cov must be a finite symmetric matrix")
        if np.linalg.eigvalsh(c).min() < -1e-6 * max(1.0, np.abs(c).max()):
            raise ValueError("cov must be positive semidefinite")
    mean = value_check(mean, ~jnp.all(jnp.isfinite(mean)), "mean contains NaN or inf")
    ts = check_times(ts, dtype)
    check_solver(solver, fixed_steps=False, dtype=dtype)
    eps = float(jnp.finfo(dtype).eps)
    if resolution is None:
        resolution = eps**0.5
    elif not 0 < resolution < 1:
        raise ValueError(f"resolution must lie in (0, 1); got {resolution}")

    y0 = (mean, cov, jnp.eye(d, dtype=dtype))
    # float32 cannot honour 1e-10; its default tolerances sit a decade above its rounding.
    default_tol = 1e-10 if dtype == jnp.float64 else 1e-6
    rtol = default_tol if rtol is None else rtol
    atol = default_tol if atol is None else atol
    # Root-find the stopping time to a tolerance the dtype can reach. The field and the event
    # are module-level functions and the model travels in `args`, so repeated solves reuse
    # one compilation.
    event = diffrax.Event(
        _blowing_up, root_finder=optx.Newton(rtol=eps**0.5, atol=eps**0.5), direction=True
    )
    args = (model, ts[0], ts[-1], jnp.asarray(resolution, dtype))
    # A Newton root find that stalls in float32 still located the stopping time to within a
    # step: the event fired, which is what is reported.
    sol, (m, S, Phi) = solve(
        diffrax.ODETerm(_gaussian_rhs),
        solver,
        ts,
        y0,
        args=args,
        controller=diffrax.PIDController(rtol=rtol, atol=atol, jump_ts=jumps),
        saveat=diffrax.SaveAt(ts=ts, t1=True),
        event=event,
        max_steps=max_steps,
        throw=throw,
        caller="gaussian_flow",
        accept=lambda sol: jnp.asarray(sol.event_mask),
    )
    fired = jnp.asarray(sol.event_mask)
    # diffrax writes the state at the event into the first save slot after the last requested
    # time it reached, and inf into the slots after it; without an event that slot is t1.
    last = jnp.sum(jnp.isfinite(sol.ts)) - 1
    t_end = sol.ts[last]
    rate = _rate(t_end, (m[last], S[last], Phi[last]), args)
    estimate = t_end + 1 / jnp.where(rate > 0, rate, jnp.nan)
    inf = jnp.asarray(jnp.inf, dtype)
    after = (jnp.arange(ts.shape[0]) >= last) & fired

    def mask(a):
        return jnp.where(after.reshape((-1,) + (1,) * (a.ndim - 1)), jnp.nan, a[:-1])

    return GaussianSolution(
        ts=ts,
        means=mask(m),
        covs=mask(S),
        flow_maps=mask(Phi),
        blowup_time=jnp.where(fired, t_end, inf),
        blowup_estimate=jnp.where(fired, jnp.where(jnp.isfinite(estimate), estimate, t_end), inf),
        stats=stats(sol),
        result=sol.result,
    )
