"""TODO docstring."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float

from .._checks import check_cloud, is_concrete, value_check
from .._solve import AbstractSolution, Stats, check_solver, check_times, solve, stats
from ..attention import L2, Attention, DotProduct, Softmax
from ..flows import AttentionFlow
from ..spaces import Euclidean


def _heads(attention):
    """(Q, K, V) stacked over heads, after checking that a Gaussian closed form exists."""
    if not isinstance(attention, Attention):
        raise TypeError(f"attention must be an Attention; got {type(attention).__name__}")
    if not isinstance(attention.kernel, DotProduct | L2):
        raise NotImplementedError(
            "the Gaussian mean-field closed form is known for the DotProduct and L2 kernels; "
            f"none is implemented for the {type(attention.kernel).__name__} kernel"
        )
    if not isinstance(attention.normalization, Softmax):
        raise NotImplementedError(
            "the Gaussian mean-field closed form needs Softmax normalization (the field of a "
            "Gaussian is affine only for softmax attention); got "
            f"{type(attention.normalization).__name__}"
        )
    Q, K, V = attention.Q, attention.K, attention.V
    if attention.causal:
        raise ValueError(
            "the Gaussian closed form has no causal version: a causal mean field depends on "
            "token positions (see causal_tokens)"
        )
    return Q, K, V


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
    (DESIGN.md 2.1).

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
        attention: softmax `Attention` or `Attention`, kernel `"dot"` or `"l2"`.
        mean, cov: $m$ `(d,)` and $S$ `(d, d)` (symmetric positive semidefinite).

    Returns:
        `(B (d, d), c (d,))`.
    """
    Q, K, V = _heads(attention)
    d = Q.shape[2]
    mean, cov = jnp.asarray(mean), jnp.asarray(cov)
    if mean.shape != (d,):
        raise ValueError(f"mean must have shape ({d},); got {mean.shape}")
    if cov.shape != (d, d):
        raise ValueError(f"cov must have shape ({d}, {d}); got {cov.shape}")
    beta = attention.beta

    def head(Qh, Kh, Vh):
        tilt = beta * cov @ Kh.T @ Qh  # x -> shift of the tilted mean
        if isinstance(attention.kernel, DotProduct):
            return Vh @ tilt, Vh @ mean
        M = jnp.linalg.inv(jnp.eye(d, dtype=cov.dtype) + beta * cov @ Kh.T @ Kh)
        return Vh @ M @ tilt, Vh @ M @ mean

    Bs, cs = jax.vmap(head)(Q, K, V)
    return jnp.sum(Bs, axis=0), jnp.sum(cs, axis=0)


class GaussianSolution(AbstractSolution):
    r"""The mean-field solution $N(m(t), S(t))$ from a Gaussian initial law.

    Attributes:
        ts: the requested times `(T,)`.
        means: $m(t)$, `(T, d)`; covs: $S(t)$, `(T, d, d)`.
        flow_maps: the linear part $\Phi(t)$ of the mean-field flow map
            $X_t(x) = m(t) + \Phi(t)(x - m_0)$, `(T, d, d)` ($\Phi' = B(t)\Phi$, $\Phi(0) = I$).
        blowup_time: the time at which the state crossed `max_norm` (a blow-up was
            detected), or `inf`. Values at requested times after it are NaN.
        blowup_estimate: the blow-up time extrapolated from the crossing point,
            $t_* \approx t + |S|_F^2 / \langle S, S' \rangle$, exact for Riccati growth
            $|S| \propto 1/(t_* - t)$; `inf` when no blow-up was detected.
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
        """True when the covariance (or mean) ran past `max_norm` before `ts[-1]`."""
        return jnp.isfinite(self.blowup_time)

    def characteristics(self, x0: Float[Array, "n d"]) -> Float[Array, "T n d"]:
        r"""Push points through the mean-field flow map $X_t(x) = m(t) + \Phi(t)(x - m_0)$.

        Points sampled from $N(m_0, S_0)$ and pushed this way are exact samples of the
        mean-field law at every time: the coupling of propagation-of-chaos proofs (Sznitman).
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
        _heads(model.attention_at(0.0))
        return model.jump_times()
    _heads(model)
    return None


def _at(model, t):
    return model.attention_at(t) if isinstance(model, AttentionFlow) else model


def _gaussian_rhs(t, state, args):
    model, _ = args
    m, S, Phi = state
    B, c = affine_field(_at(model, t), m, S)
    BS = B @ S
    return B @ m + c, BS + BS.T, B @ Phi


def _size(state):
    m, S, _ = state
    return jnp.maximum(jnp.linalg.norm(S), jnp.sum(m**2))


def _crossed(t, y, args, **kwargs):
    return _size(y) / args[1] - 1


def gaussian_flow(
    model: Attention | AttentionFlow,
    mean: Float[Array, " d"],
    cov: Float[Array, "d d"],
    ts: Float[Array, " T"],
    *,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float | None = None,
    atol: float | None = None,
    max_norm: float | None = None,
    max_steps: int = 100_000,
    throw: bool = True,
) -> GaussianSolution:
    r"""Solve the mean-field equation from $N(m_0, S_0)$: a Gaussian at every time.

    With $v[N(m, S)](x) = B x + c$ (`affine_field`), the Gaussian family is invariant and

    $$ m' = B m + c, \qquad S' = B S + S B^\top, \qquad \Phi' = B \Phi, $$

    for dot-product softmax $m' = V(m + \beta S K^\top Q m)$, $S' = A S + S A^\top$,
    $A = \beta V S K^\top Q$ (DESIGN.md 2.1). Since $B$ grows with $S$, $S$ obeys a Riccati-type
    equation that can blow up in finite time (e.g. $Q = K = V = I$: $S' = 2\beta S^2$,
    $t_* = 1 / (2 \beta \lambda_{\max}(S_0))$). A diffrax event stops the solve when
    $\max(|S|_F, |m|^2)$ crosses `max_norm`; the solution reports `blowup_time` and NaN after
    it, never `inf`.

    Args:
        model: softmax `Attention`/`Attention` (kernel dot or l2), or a
            Euclidean `AttentionFlow` of one (time-dependent `Layered` weights allowed).
        mean, cov: initial $m_0$ `(d,)`, $S_0$ `(d, d)` symmetric positive semidefinite.
        ts: increasing save times; the solve starts at `ts[0]`.
        solver, rtol, atol, max_steps: diffrax options (adaptive steps); `None` tolerances
            are 1e-10 in float64 and 1e-6 in float32.
        max_norm: blow-up threshold on $\max(|S|_F, |m|^2)$; default $\epsilon^{-1/2}$ times
            its initial value (at least 1), $\epsilon$ the dtype's machine epsilon: about
            $3 \cdot 10^3$ in float32 and $7 \cdot 10^7$ in float64, the largest growth whose
            crossing time the dtype still resolves. A solution that merely grows
            exponentially at rate $r$ (possible with L2 attention) also crosses it, after
            about $\log(\text{max\_norm}) / r$: read `blowup_time` against the horizon.
        throw: raise if the solver fails (other than by a detected blow-up).

    Returns:
        A `GaussianSolution`.
    """
    jumps = _check_model(model)
    mean, cov = jnp.asarray(mean), jnp.asarray(cov)
    d = _at(model, 0.0).Q.shape[-1]
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
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"max_norm must be > 0; got {max_norm}")

    y0 = (mean, cov, jnp.eye(d, dtype=dtype))
    eps = float(jnp.finfo(dtype).eps)
    # Near a Riccati blow-up |S| ~ 1/(t* - t): a crossing at |S| = H happens ~1/H before t*,
    # which the dtype resolves only while 1/H >> eps t*. Hence the default H = eps^(-1/2).
    threshold = eps**-0.5 * jnp.maximum(1, _size(y0)) if max_norm is None else max_norm
    threshold = jnp.asarray(threshold, dtype)
    # float32 cannot honour 1e-10; its default tolerances sit a decade above its rounding.
    default_tol = 1e-10 if dtype == jnp.float64 else 1e-6
    rtol = default_tol if rtol is None else rtol
    atol = default_tol if atol is None else atol
    # Root-find the crossing time to a tolerance the dtype can reach. The field and the event
    # are module-level functions and the model travels in `args`, so repeated solves reuse
    # one compilation.
    event = diffrax.Event(_crossed, root_finder=optx.Newton(rtol=eps**0.5, atol=eps**0.5))
    args = (model, threshold)
    # A Newton root find that stalls in float32 still located the crossing to within a step:
    # the event fired, which is what is reported.
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
    end = (m[last], S[last], Phi[last])
    _, dS, _ = _gaussian_rhs(t_end, end, args)
    growth = jnp.sum(end[1] * dS)
    estimate = t_end + jnp.sum(end[1] ** 2) / jnp.where(growth > 0, growth, jnp.nan)
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
