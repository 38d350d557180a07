r"""Mean-field limits: from $n$ particles to the continuity equation.

As $n \to \infty$ the empirical measure $\mu^n_t = \sum_j w_j \delta_{x_j(t)}$ of the attention
flow follows the continuity (Vlasov) equation
$\partial_t \mu + \nabla \cdot (\mu\, v[\mu]) = 0$ (Vuckovic, Baratin, Tachet des Combes 2020;
Geshkovski, Letrouit, Polyanskiy, Rigollet 2023). This module computes with that limit:

- **measures**: moments of weighted clouds, resampling, mixtures, samplers;
- **Gaussian closed form**: for softmax attention in $\mathbb{R}^d$ (dot-product or L2 kernel,
  one or several heads) the field of a Gaussian is affine, so Gaussians stay Gaussian and the
  limit is an ODE for the mean and covariance (`gaussian_flow`), with finite-time blow-up of
  the covariance detected and reported;
- **Eulerian solver on the circle** $S^1$: the density itself, evolved by a conservative
  finite-volume scheme whose velocity is an FFT convolution (`circle_flow`);
- **causal attention**: tokens carry a position $s \in [0, 1]$; the $n$-token causal flow
  converges to a limit profile $X(t, s)$ (`causal_tokens`, `causal_error`);
- **studies**: propagation of chaos (`propagation_of_chaos`) and Wasserstein stability
  (`stability`), with log-log rate fits (`fit_power_law`).

Distances between measures are in `particles.wasserstein`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float, Int, PRNGKeyArray

from . import analysis
from ._checks import check_choice, check_cloud, check_weights, is_concrete, value_check
from ._simulate import SOLVERS, simulate
from .attention import MultiHeadAttention, SelfAttention
from .flows import AttentionFlow
from .spaces import Euclidean

__all__ = [
    "moments",
    "resample",
    "mixture",
    "gaussian_mixture",
    "affine_field",
    "GaussianSolution",
    "gaussian_flow",
    "circle_grid",
    "circle_density",
    "circle_sample",
    "circle_points",
    "circle_angles",
    "circle_velocity",
    "CircleSolution",
    "circle_flow",
    "causal_positions",
    "causal_tokens",
    "causal_error",
    "causal_convergence",
    "fit_power_law",
    "moment_errors",
    "coupling_distance",
    "ChaosStudy",
    "propagation_of_chaos",
    "StabilityStudy",
    "stability",
]


# --------------------------------------------------------------------------------------
# Weighted clouds as empirical measures
# --------------------------------------------------------------------------------------


def _uniform(n, dtype):
    return jnp.full((n,), 1 / n, dtype)


def moments(
    x: Float[Array, "n d"], weights: Float[Array, " n"] | None = None
) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
    r"""Mean and covariance of the empirical measure $\mu = \sum_j w_j \delta_{x_j}$.

    $m = \sum_j w_j x_j$, $S = \sum_j w_j (x_j - m)(x_j - m)^\top$: the moments of the
    measure itself (no Bessel correction), which are what the mean-field limit predicts; the
    $O(1/n)$ bias is far below the $O(n^{-1/2})$ sampling error.

    Returns:
        `(mean (d,), cov (d, d))`.
    """
    x = check_cloud(x, "x")
    weights = check_weights(weights, x.shape[0])
    w = _uniform(x.shape[0], x.dtype) if weights is None else weights.astype(x.dtype)
    mean = w @ x
    centred = x - mean
    return mean, (centred * w[:, None]).T @ centred


def resample(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    weights: Float[Array, " n"] | None,
    n: int,
    *,
    method: str = "systematic",
) -> Float[Array, "n_out d"]:
    r"""Draw `n` equally weighted points whose empirical measure approximates $\mu$.

    Args:
        key: PRNG key.
        x: support points `(m, d)`; weights: their weights (`None` is uniform).
        n: number of points of the new cloud (weights $1/n$).
        method: `"multinomial"` (i.i.d. draws from $\mu$) or `"systematic"` (one uniform
            offset, $n$ evenly spaced quantiles: every atom of mass $w_j$ gets
            $\lfloor n w_j \rfloor$ or $\lceil n w_j \rceil$ copies, so the resampled measure
            is within $1/n$ of $\mu$ in total variation per atom).

    Returns:
        The resampled cloud `(n, d)`; both methods are unbiased: $E[\hat\mu] = \mu$.
    """
    x = check_cloud(x, "x")
    check_choice(method, ("multinomial", "systematic"), "method")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    weights = check_weights(weights, x.shape[0])
    w = _uniform(x.shape[0], x.dtype) if weights is None else weights.astype(x.dtype)
    if method == "multinomial":
        u = jax.random.uniform(key, (n,), dtype=x.dtype)
    else:
        u = (jax.random.uniform(key, (), dtype=x.dtype) + jnp.arange(n, dtype=x.dtype)) / n
    cdf = jnp.cumsum(w)
    index = jnp.searchsorted(cdf / cdf[-1], u, side="right")
    return x[jnp.clip(index, 0, x.shape[0] - 1)]


def mixture(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    p: float = 0.5,
    *,
    x_weights: Float[Array, " n"] | None = None,
    y_weights: Float[Array, " m"] | None = None,
) -> tuple[Float[Array, "n+m d"], Float[Array, " n+m"]]:
    r"""Merge two clouds into the mixture $p\,\mu + (1 - p)\,\nu$.

    Returns:
        `(points (n + m, d), weights (n + m,))`, the weights summing to one; feed both to
        `simulate(..., weights=)` to move the mixture.
    """
    x, y = check_cloud(x, "x"), check_cloud(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension; got {x.shape[1]} and {y.shape[1]}")
    if is_concrete(p) and not 0 <= p <= 1:
        raise ValueError(f"p must lie in [0, 1]; got {p}")
    wx = check_weights(x_weights, x.shape[0], "x_weights")
    wy = check_weights(y_weights, y.shape[0], "y_weights")
    wx = _uniform(x.shape[0], x.dtype) if wx is None else wx.astype(x.dtype)
    wy = _uniform(y.shape[0], x.dtype) if wy is None else wy.astype(x.dtype)
    return jnp.concatenate([x, y]), jnp.concatenate([p * wx, (1 - p) * wy])


def gaussian_mixture(
    key: PRNGKeyArray,
    n: int,
    means: Float[Array, "k d"],
    covs: Float[Array, "k d d"],
    probs: Float[Array, " k"] | None = None,
) -> Float[Array, "n d"]:
    r"""`n` i.i.d. samples of $\sum_k p_k N(m_k, S_k)$ (component by a categorical draw, then a
    Cholesky-free eigen square root of $S_k$, so semidefinite covariances are allowed)."""
    means, covs = jnp.asarray(means), jnp.asarray(covs)
    if means.ndim != 2:
        raise ValueError(f"means must have shape (k, d); got {means.shape}")
    k, d = means.shape
    if covs.shape != (k, d, d):
        raise ValueError(f"covs must have shape ({k}, {d}, {d}); got {covs.shape}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    probs = jnp.full((k,), 1 / k) if probs is None else check_weights(probs, k, "probs")
    kc, kz = jax.random.split(key)
    comp = jax.random.choice(kc, k, (n,), p=probs)
    vals, vecs = jnp.linalg.eigh((covs + jnp.swapaxes(covs, 1, 2)) / 2)
    roots = vecs * jnp.sqrt(jnp.maximum(vals, 0))[:, None, :]
    z = jax.random.normal(kz, (n, d), dtype=means.dtype)
    return means[comp] + jnp.einsum("nij,nj->ni", roots[comp], z)


# --------------------------------------------------------------------------------------
# Gaussian closed form
# --------------------------------------------------------------------------------------


def _heads(attention):
    """(Q, K, V) stacked over heads, after checking that a Gaussian closed form exists."""
    if isinstance(attention, SelfAttention):
        Q, K, V = attention.Q[None], attention.K[None], attention.V[None]
    elif isinstance(attention, MultiHeadAttention):
        Q, K, V = attention.Q, attention.K, attention.V
    else:
        raise TypeError(
            f"attention must be a SelfAttention or MultiHeadAttention; got {type(attention).__name__}"
        )
    if attention.normalization != "softmax":
        raise ValueError(
            "the Gaussian closed form needs normalization='softmax': the field of a Gaussian "
            f"is affine only for softmax attention; got normalization={attention.normalization!r}"
        )
    if attention.causal:
        raise ValueError(
            "the Gaussian closed form has no causal version: a causal mean field depends on "
            "token positions (see causal_tokens)"
        )
    return Q, K, V


def affine_field(
    attention: SelfAttention | MultiHeadAttention,
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
        attention: softmax `SelfAttention` or `MultiHeadAttention`, kernel `"dot"` or `"l2"`.
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
        if attention.kernel == "dot":
            return Vh @ tilt, Vh @ mean
        M = jnp.linalg.inv(jnp.eye(d, dtype=cov.dtype) + beta * cov @ Kh.T @ Kh)
        return Vh @ M @ tilt, Vh @ M @ mean

    Bs, cs = jax.vmap(head)(Q, K, V)
    return jnp.sum(Bs, axis=0), jnp.sum(cs, axis=0)


class GaussianSolution(eqx.Module):
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
    model: SelfAttention | MultiHeadAttention | AttentionFlow,
    mean: Float[Array, " d"],
    cov: Float[Array, "d d"],
    ts: Float[Array, " T"],
    *,
    solver: str = "tsit5",
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
        model: softmax `SelfAttention`/`MultiHeadAttention` (kernel dot or l2), or a
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
    if solver not in SOLVERS or solver == "euler":
        raise ValueError(
            f"solver must be an adaptive solver of {', '.join(SOLVERS)}; got {solver!r}"
        )
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
    ts = jnp.asarray(ts, dtype=dtype)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-d array of at least two times; got shape {ts.shape}")
    if is_concrete(ts) and not np.all(np.diff(np.asarray(ts)) > 0):
        raise ValueError("ts must be strictly increasing")
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
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_gaussian_rhs),
        SOLVERS[solver](),
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(ts=ts, t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, jump_ts=jumps),
        event=event,
        max_steps=max_steps,
        throw=False,
    )
    # A Newton root find that stalls in float32 still located the crossing to within a step:
    # the event fired, which is what is reported.
    fired = jnp.asarray(sol.event_mask)
    ok = (sol.result == diffrax.RESULTS.successful) | fired
    if throw:
        message = (
            f"gaussian_flow: the solve failed ({sol.result}); raise max_steps or loosen rtol/atol"
        )
        if is_concrete(ok):
            if not bool(ok):
                raise RuntimeError(message)
        else:
            fired = eqx.error_if(fired, ~ok, message)
    m, S, Phi = sol.ys
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
        result=sol.result,
    )


# --------------------------------------------------------------------------------------
# Eulerian solver on the circle S^1
# --------------------------------------------------------------------------------------

_TWO_PI = 2 * math.pi
LIMITERS = ("vanleer", "minmod", "upwind")


def _check_cells(cells):
    if not isinstance(cells, (int, np.integer)) or cells < 4:
        raise ValueError(f"cells must be an int >= 4; got {cells!r}")


def circle_grid(cells: int) -> Float[Array, " N"]:
    r"""Centres $\theta_i = (i + \tfrac12) h$, $h = 2\pi / N$, of the uniform grid on the circle.

    Cell $i$ is $[i h, (i + 1) h)$; its left face is at $i h$. Densities on this grid are
    cell averages $\rho_i$ with $\sum_i \rho_i h = 1$.
    """
    _check_cells(cells)
    return (jnp.arange(cells) + 0.5) * (_TWO_PI / cells)


def circle_density(values: Float[Array, " N"]) -> Float[Array, " N"]:
    r"""Normalise nonnegative cell values into a probability density: $\rho_i = v_i / (h \sum_j v_j)$."""
    values = jnp.asarray(values)
    if values.ndim != 1 or values.shape[0] < 4:
        raise ValueError(
            f"values must be a 1-d array of at least 4 cells; got shape {values.shape}"
        )
    bad = jnp.any(values < 0) | ~jnp.all(jnp.isfinite(values)) | ~(jnp.sum(values) > 0)
    values = value_check(values, bad, "values must be finite, nonnegative and not all zero")
    return values / (jnp.sum(values) * (_TWO_PI / values.shape[0]))


def _check_density(density, name="density"):
    density = jnp.asarray(density)
    if density.ndim != 1 or density.shape[0] < 4:
        raise ValueError(
            f"{name} must be a 1-d array of at least 4 cells; got shape {density.shape}"
        )
    if not jnp.issubdtype(density.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array; got dtype {density.dtype}")
    h = _TWO_PI / density.shape[0]
    mass = jnp.sum(density) * h
    bad = jnp.any(density < 0) | ~jnp.all(jnp.isfinite(density)) | (jnp.abs(mass - 1) > 1e-4)
    return value_check(
        density,
        bad,
        f"{name} must be finite, nonnegative, with total mass sum(density) * 2 pi / N = 1 "
        "(normalise it with circle_density)",
    )


def circle_sample(key: PRNGKeyArray, n: int, density: Float[Array, " N"]) -> Float[Array, " n"]:
    r"""`n` i.i.d. angles from the piecewise-constant density $\rho$ (exact inverse CDF: the
    cell by its mass, then uniform inside the cell)."""
    density = _check_density(density)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    cells = density.shape[0]
    h = _TWO_PI / cells
    mass = density * h
    cdf = jnp.cumsum(mass)
    u = jax.random.uniform(key, (n,), dtype=density.dtype) * cdf[-1]
    cell = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, cells - 1)
    below = cdf[cell] - mass[cell]
    inside = jnp.clip((u - below) / jnp.where(mass[cell] > 0, mass[cell], 1), 0, 1)
    return (cell + inside) * h


def circle_points(angles: Float[Array, " n"]) -> Float[Array, "n 2"]:
    """Angles to unit vectors $(\\cos\\theta, \\sin\\theta)$ in $\\mathbb{R}^2$."""
    angles = jnp.asarray(angles)
    return jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def circle_angles(points: Float[Array, "... 2"]) -> Float[Array, "..."]:
    """Unit vectors in $\\mathbb{R}^2$ to angles in $[0, 2\\pi)$."""
    points = jnp.asarray(points)
    return jnp.mod(jnp.arctan2(points[..., 1], points[..., 0]), _TWO_PI)


def circle_velocity(
    density: Float[Array, " N"], beta, normalization: str = "softmax"
) -> Float[Array, " N"]:
    r"""The attention velocity on the circle at the cell faces $\phi_i = i h$.

    For $Q = K = V = I$ on $S^1 \subset \mathbb{R}^2$, a token at angle $\theta$ moves with
    $\dot\theta = \langle v[\mu](x), x^\perp \rangle$. With $\langle x(\theta), x(\varphi)\rangle
    = \cos(\theta - \varphi)$ and $\langle x(\varphi), x(\theta)^\perp \rangle = -\sin(\theta -
    \varphi)$ the velocity is a convolution:

    $$ u(\theta) = -\frac{(g * \rho)(\theta)}{(k * \rho)(\theta)} \ \text{(SA)}, \qquad
       u(\theta) = -(g * \rho)(\theta) \ \text{(USA)}, $$

    $k(u) = e^{\beta \cos u}$, $g(u) = e^{\beta \cos u} \sin u$ (Geshkovski et al. 2023). The
    convolution with the cell averages is the midpoint rule in each cell, evaluated by FFT in
    $O(N \log N)$; for SA both kernels carry a factor $e^{-\beta}$ that cancels and keeps them
    $\le 1$.
    """
    density = jnp.asarray(density)
    check_choice(normalization, ("softmax", "unnormalized"), "normalization")
    cells = density.shape[0]
    h = _TWO_PI / cells
    beta = jnp.asarray(beta, density.dtype)
    # face i minus centre j is (i - j - 1/2) h: a circulant in i - j
    offsets = (jnp.arange(cells, dtype=density.dtype) - 0.5) * h
    shift = beta if normalization == "softmax" else 0.0
    k = jnp.exp(beta * jnp.cos(offsets) - shift)
    g = k * jnp.sin(offsets)
    rho_hat = jnp.fft.rfft(density)

    def conv(kernel):
        return h * jnp.fft.irfft(jnp.fft.rfft(kernel) * rho_hat, n=cells)

    if normalization == "unnormalized":
        return -conv(g)
    return -conv(g) / conv(k)


def _slopes(rho, limiter):
    back = rho - jnp.roll(rho, 1)
    fwd = jnp.roll(rho, -1) - rho
    if limiter == "upwind":
        return jnp.zeros_like(rho)
    if limiter == "minmod":
        return jnp.where(
            back * fwd > 0, jnp.sign(back) * jnp.minimum(jnp.abs(back), jnp.abs(fwd)), 0
        )
    # van Leer: harmonic mean of the one-sided slopes where they agree in sign
    prod = back * fwd
    return jnp.where(prod > 0, 2 * prod / jnp.where(prod > 0, back + fwd, 1), 0)


def _circle_rhs(rho, beta, normalization, limiter):
    cells = rho.shape[0]
    h = _TWO_PI / cells
    u = circle_velocity(rho, beta, normalization)
    s = _slopes(rho, limiter)
    left = jnp.roll(rho + s / 2, 1)  # state at face i reconstructed from cell i - 1
    right = rho - s / 2  # ... and from cell i
    flux = jnp.maximum(u, 0) * left + jnp.minimum(u, 0) * right
    # telescoping differences: sum_i (F_{i+1} - F_i) = 0, so mass is conserved to rounding
    return -(jnp.roll(flux, -1) - flux) / h


def _circle_term(t, rho, args):
    return _circle_rhs(rho, *args)


class CircleSolution(eqx.Module):
    r"""A density on the circle evolved by `circle_flow`.

    Attributes:
        ts: saved times `(T,)`.
        theta: cell centres `(N,)`.
        densities: cell averages $\rho_i(t)$, `(T, N)`.
        num_steps: solver steps taken.
        result: the diffrax result.
    """

    ts: Float[Array, " T"]
    theta: Float[Array, " N"]
    densities: Float[Array, "T N"]
    num_steps: Int[Array, ""]
    result: diffrax.RESULTS

    @property
    def mass(self) -> Float[Array, " T"]:
        r"""Total mass $\sum_i \rho_i h$ at each saved time (1 up to rounding)."""
        return jnp.sum(self.densities, axis=-1) * (_TWO_PI / self.theta.shape[0])


def circle_flow(
    density: Float[Array, " N"],
    ts: Float[Array, " T"],
    *,
    beta=1.0,
    normalization: str = "softmax",
    limiter: str = "vanleer",
    solver: str = "tsit5",
    rtol: float = 1e-6,
    atol: float = 1e-6,
    max_steps: int = 100_000,
    throw: bool = True,
) -> CircleSolution:
    r"""Evolve a density on the circle by the mean-field equation of attention, $Q = K = V = I$.

    $$ \partial_t \rho + \partial_\theta (\rho\, u[\rho]) = 0, \qquad u[\rho] \text{ as in }
       `circle_velocity`, $$

    the continuity equation whose empirical solutions are the particles of
    `AttentionFlow(SelfAttention.identity(2, beta, normalization=...), Sphere())`. Finite
    volumes: MUSCL reconstruction of the cell averages with a slope limiter (second order where
    the density is smooth, no new extrema), the upwind flux at each face, and diffrax for time.
    The update is a difference of face fluxes, so the total mass is conserved to rounding.

    Args:
        density: initial cell averages $\rho_i$ on `circle_grid(N)` with $\sum_i \rho_i h = 1$.
        ts: increasing save times.
        beta: inverse temperature; normalization: `"softmax"` (SA) or `"unnormalized"` (USA).
        limiter: `"vanleer"` (default), `"minmod"`, or `"upwind"` (first order, no slopes).
        solver, rtol, atol, max_steps, throw: diffrax options (adaptive steps).

    Returns:
        A `CircleSolution`. Resolve the density: clusters that narrow below a few cells are
        smeared by the scheme (compare `N` and `2N`).
    """
    density = _check_density(density)
    check_choice(normalization, ("softmax", "unnormalized"), "normalization")
    check_choice(limiter, LIMITERS, "limiter")
    if solver not in SOLVERS or solver == "euler":
        raise ValueError(
            f"solver must be an adaptive solver of {', '.join(SOLVERS)}; got {solver!r}"
        )
    beta = jnp.asarray(beta, density.dtype)
    if beta.ndim != 0:
        raise ValueError(f"beta must be a scalar; got shape {beta.shape}")
    beta = value_check(beta, ~(beta > 0), "beta must be > 0")
    ts = jnp.asarray(ts, dtype=density.dtype)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-d array of at least two times; got shape {ts.shape}")
    if is_concrete(ts) and not np.all(np.diff(np.asarray(ts)) > 0):
        raise ValueError("ts must be strictly increasing")
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_circle_term),
        SOLVERS[solver](),
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=density,
        args=(beta, normalization, limiter),
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )
    densities = sol.ys
    if throw:
        failed = sol.result != diffrax.RESULTS.successful
        message = "circle_flow: the solve failed; raise max_steps or loosen rtol/atol"
        if is_concrete(failed):
            if bool(failed):
                raise RuntimeError(f"{message} ({sol.result})")
        else:
            densities = eqx.error_if(densities, failed, message)
    return CircleSolution(
        ts=ts,
        theta=circle_grid(density.shape[0]).astype(density.dtype),
        densities=densities,
        num_steps=sol.stats["num_steps"],
        result=sol.result,
    )


# --------------------------------------------------------------------------------------
# Causal attention in the mean-field limit
# --------------------------------------------------------------------------------------


def causal_positions(n: int, dtype=None) -> Float[Array, " n"]:
    r"""Positions $s_i = i / n$, $i = 1, \dots, n$, of the tokens of a sequence in $[0, 1]$.

    Token $i$ of a causal flow attends to tokens $j \le i$, i.e. to positions $s \le s_i$:
    with uniform weights its softmax is the average over $[0, s_i]$ of the $n$-point rule.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    return jnp.arange(1, n + 1, dtype=dtype or jnp.zeros(()).dtype) / n


def causal_tokens(
    profile: Callable[[Float[Array, ""]], Float[Array, " d"]], n: int
) -> tuple[Float[Array, " n"], Float[Array, "n d"]]:
    r"""A sequence of `n` tokens sampled from a profile: $x_i(0) = X_0(s_i)$, $s_i = i / n$.

    As $n \to \infty$ the causal flow of these tokens converges to the profile $X(t, s)$ solving

    $$ \partial_t X(t, s) = \frac{\int_0^s k(X(t, s), X(t, r))\, V X(t, r)\, dr}
                                 {\int_0^s k(X(t, s), X(t, r))\, dr}, $$

    the mean field of causal attention, whose measure is the law of $(s, X(t, s))$ for
    $s \sim U[0, 1]$. The $n$-token flow is a Riemann sum of this equation at the nodes $s_i$:
    its error is $O(1/n)$ for a smooth profile (measured by `causal_error`).

    Args:
        profile: $X_0$, a function from $s \in [0, 1]$ to $\mathbb{R}^d$ (vmapped).
        n: number of tokens.

    Returns:
        `(positions (n,), tokens (n, d))`.
    """
    s = causal_positions(n)
    x = jax.vmap(profile)(s)
    if x.ndim != 2:
        raise ValueError(
            f"profile must map a scalar s to a vector of shape (d,); got {x.shape[1:]}"
        )
    return s, x


def causal_error(
    x: Float[Array, "... n d"], reference: Float[Array, "... N d"]
) -> Float[Array, "..."]:
    r"""RMS distance in $s$ between an $n$-token sequence and a finer reference of $N$ tokens.

    $\big(\frac1n \sum_i |x_i - X_{i N / n}|^2\big)^{1/2}$: token $i$ of both sequences sits at
    the same position $s = i / n$, so `N` must be a multiple of `n`. Leading axes (time,
    batch) broadcast.
    """
    x, reference = jnp.asarray(x), jnp.asarray(reference)
    n, big = x.shape[-2], reference.shape[-2]
    if big % n:
        raise ValueError(f"the reference length {big} must be a multiple of n = {n}")
    matched = reference[..., big // n - 1 :: big // n, :]
    return jnp.sqrt(jnp.mean(jnp.sum((x - matched) ** 2, axis=-1), axis=-1))


# --------------------------------------------------------------------------------------
# Studies: propagation of chaos and stability
# --------------------------------------------------------------------------------------


def fit_power_law(x, y) -> tuple[float, float]:
    r"""Least-squares fit of $y = C x^p$ in log-log coordinates: returns `(p, C)`
    (`particles.analysis.fit_power_law`)."""
    return analysis.fit_power_law(x, y)


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
    attention: SelfAttention | MultiHeadAttention,
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
    solver: str = "tsit5",
    rtol: float = 1e-6,
    atol: float = 1e-6,
) -> ChaosStudy:
    r"""Sample $n$ particles from $N(m_0, S_0)$, simulate, and measure the distance to the limit.

    For each $n$ in `ns`, `seeds` independent clouds are simulated at once (`vmap`), and at each
    saved time the study records the moment errors against the closed form (`moment_errors`),
    the coupling distance to the exact mean-field characteristics from the same initial points
    (Sznitman's coupling, $O(n^{-1/2})$), and at the final time the sliced $W_2$ to an
    independent reference sample of $N(m(t), S(t))$ of size `reference` and, for
    $n \le$ `exact_max_n`, the exact $W_2$ (POT's network simplex, `wasserstein.w2`) to its
    first `exact_reference` points. The exact distance includes the reference's own sampling
    error, so keep `exact_max_n` a few times below `exact_reference`. Fit rates with
    `fit_power_law(ns, study.rms("mean_error")[:, -1])`: about $-1/2$
    (DESIGN.md 2.1; Vuckovic et al. 2020).

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

    Returns:
        A `ChaosStudy`.
    """
    from . import clouds
    from .wasserstein import sliced_w2, w2

    ns = [int(n) for n in ns]
    if not ns or min(ns) < 2:
        raise ValueError(f"ns must be a non-empty list of ints >= 2; got {ns}")
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int; got {seeds!r}")
    if exact_reference is None:
        exact_reference = min(4096, reference)
    if not isinstance(exact_reference, int) or not 1 <= exact_reference <= reference:
        raise ValueError(
            f"exact_reference must be an int in [1, reference = {reference}]; got {exact_reference!r}"
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
        rows.append(batch(keys, n, solution, ref))
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
    solver: str = "tsit5",
    rtol: float = 1e-8,
    atol: float = 1e-8,
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
    """
    from .wasserstein import w2

    x0, y0 = check_cloud(x0, "x0"), check_cloud(y0, "y0")
    if x0.shape != y0.shape:
        raise ValueError(f"x0 and y0 must have the same shape; got {x0.shape} and {y0.shape}")
    xs = simulate(flow, x0, ts, solver=solver, rtol=rtol, atol=atol).xs
    ys = simulate(flow, y0, ts, solver=solver, rtol=rtol, atol=atol).xs
    ts = jnp.asarray(ts, x0.dtype)
    n, d = x0.shape

    @jax.jit
    def log_norm(t, x):
        def field(flat):
            return flow(t, flat.reshape(n, d), None).reshape(-1)

        J = jax.jacfwd(field)(x.reshape(-1))
        return jnp.linalg.eigvalsh((J + J.T) / 2)[-1]

    lam = jnp.stack([log_norm(t, x) for t, x in zip(ts, xs, strict=True)])
    integral = jnp.concatenate(
        [jnp.zeros(1, lam.dtype), jnp.cumsum(jnp.diff(ts) * (lam[1:] + lam[:-1]) / 2)]
    )
    coupling = coupling_distance(xs, ys)
    distances = jnp.stack([w2(x, y) for x, y in zip(xs, ys, strict=True)])
    return StabilityStudy(
        ts=ts, w2=distances, coupling=coupling, log_norm=lam, bound=coupling[0] * jnp.exp(integral)
    )


def causal_convergence(
    attention: SelfAttention | MultiHeadAttention,
    profile: Callable[[Float[Array, ""]], Float[Array, " d"]],
    ns: Sequence[int],
    reference: int,
    ts: Float[Array, " T"],
    *,
    solver: str = "tsit5",
    rtol: float = 1e-8,
    atol: float = 1e-8,
) -> Float[Array, "k T"]:
    r"""`causal_error` over time between $n$-token causal flows from `profile` and a reference
    flow of `reference` tokens, for each $n$ in `ns` (each must divide `reference`).

    Returns:
        Errors `(len(ns), T)`; `fit_power_law(ns, errors[:, -1])` gives the rate (about $-1$
        for a smooth profile: the $n$-token flow is a Riemann sum of the limit).
    """
    if not attention.causal:
        raise ValueError("attention must be causal (causal=True) for the causal mean-field limit")
    for n in ns:
        if reference % int(n):
            raise ValueError(f"reference = {reference} must be a multiple of every n; got n = {n}")
    flow = AttentionFlow(attention)

    def run(n):
        return simulate(
            flow, causal_tokens(profile, n)[1], ts, solver=solver, rtol=rtol, atol=atol
        ).xs

    ref = run(reference)
    return jnp.stack([causal_error(run(int(n)), ref) for n in ns])
