r"""Invertible residual attention: the layer $x \mapsto x + h\, v[\mu_x](x)$ and its inverse.

A residual layer $F(X) = X + h\,G(X)$, $G(X)_i = v[\mu_X](x_i)$, is invertible when
$h\,\mathrm{Lip}(G) < 1$ (Behrmann, Grathwohl, Chen, Duvenaud, Jacobsen 2019, *Invertible
Residual Networks*): the preimage of $Y$ is the fixed point of the contraction
$T(X) = Y - h\,G(X)$, found by iterating $X_{k+1} = T(X_k)$ from $X_0 = Y$, with

$$ |X_k - X^\ast| \le \frac{q^k}{1 - q}|X_1 - X_0|, \qquad
   |X_k - X^\ast| \le \frac{q}{1 - q}|X_k - X_{k-1}|, \qquad q = h\,\mathrm{Lip}(G), $$

(Banach). Vuckovic, Baratin, Tachet des Combes (*On the Regularity of Attention*, 2021)
point to invertible networks as an application of attention's Lipschitz regularity.

**The certificate** comes from the library's own bounds (`regularity.lipschitz_bound`):
for L2 softmax attention with tied keys ($K = Q$, $V = UQ$, Kim, Papamakarios, Mnih 2021)
the bound holds on all of $\mathbb{R}^{nd}$, so $h_{\max} = 1/\mathrm{Lip}$ is global; for
dot-product softmax attention it holds on the ball $\max_i |x_i| \le R$, and $T$ maps that
ball into itself when $\max_i |y_i| + h\,\sigma R \le R$ ($|v_i| \le \sigma \max_j |x_j|$,
$\sigma = \sum_h \|V_h\|_2$, since a softmax row averages): then the preimage is unique in
the ball. Beyond $h_{\max}$ the layer may fold: two clouds can have the same image
(`tests/test_invertible.py` builds one).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._checks import check_cloud, check_positive, check_weights
from .attention import L2, Attention, DotProduct, Softmax
from .regularity import lipschitz_bound

__all__ = [
    "Certificate",
    "InverseResult",
    "InvertibleNetwork",
    "InvertibleResidual",
]


class Certificate(eqx.Module):
    r"""What the Lipschitz bound guarantees for one layer and one output cloud.

    Attributes:
        lipschitz: the bound $L \ge \mathrm{Lip}(G)$ on the certified set.
        rate: $q = hL$, the geometric rate of the fixed-point iteration.
        step_max: $h_{\max} = 1/L$.
        radius: the radius $R$ of the certified ball (`inf`: all of $\mathbb{R}^{nd}$).
        valid: $q < 1$ and (for a ball) the iteration maps the ball into itself.
    """

    lipschitz: Float[Array, ""]
    rate: Float[Array, ""]
    step_max: Float[Array, ""]
    radius: Float[Array, ""]
    valid: Bool[Array, ""]


class InverseResult(eqx.Module):
    r"""The fixed-point inverse of one layer (or a network) and how far it can be trusted.

    Attributes:
        x: the preimage found.
        iterations: fixed-point iterations taken (per layer for a network).
        step: $|X_k - X_{k-1}|$ of the last iteration (Frobenius norm).
        error_bound: $\frac{q}{1-q}|X_k - X_{k-1}|$, a bound on $|X_k - X^\ast|$ when the
            certificate is valid (`inf` otherwise).
        converged: the last step fell below the tolerance.
        certificate: the `Certificate` (per layer for a network).
    """

    x: Float[Array, "n d"]
    iterations: Int[Array, "..."]
    step: Float[Array, "..."]
    error_bound: Float[Array, "..."]
    converged: Bool[Array, "..."]
    certificate: Certificate


class InvertibleResidual(eqx.Module):
    r"""The residual attention layer $F(X)_i = x_i + h\, v[\mu_X](x_i)$ with a certified
    fixed-point inverse (see the module docstring).

    Args:
        attention: the attention operator $v$ (an `Attention`; the certificate needs
            softmax with the L2 kernel, tied keys, or the dot-product kernel on a ball).
        step: the step $h > 0$.
    """

    attention: Attention
    step: Float[Array, ""]

    def __init__(self, attention: Attention, step):
        if not isinstance(attention, Attention):
            raise TypeError(f"attention must be an Attention; got {type(attention).__name__}")
        self.attention = attention
        self.step = check_positive(step, "step")

    def __call__(self, x: Float[Array, "n d"], weights=None) -> Float[Array, "n d"]:
        """$F(X) = X + h\\,v[\\mu_X](X)$."""
        return x + self.step * self.attention(x, weights)

    def certificate(self, y: Float[Array, "n d"], radius=None) -> Certificate:
        r"""The certificate for inverting at `y`: $L$ from `regularity.lipschitz_bound`.

        L2 kernel: global ($R = \infty$; `inf` bound, hence not valid, unless $K = Q$ and
        $V$ factors through $Q$). Dot-product kernel: on the ball of radius `radius`
        (default: the smallest that $T$ maps into itself, $\max_i|y_i| / (1 - h\sigma)$).
        """
        a = self.attention
        n = y.shape[0]
        if not isinstance(a.normalization, Softmax):
            raise NotImplementedError(
                "the invertibility certificate is known for Softmax; none is implemented for "
                f"{type(a.normalization).__name__}"
            )
        if isinstance(a.kernel, L2):
            lip = lipschitz_bound(a, n)
            radius, inside = jnp.asarray(jnp.inf, lip.dtype), jnp.asarray(True)
        elif isinstance(a.kernel, DotProduct):
            sigma = sum(jnp.linalg.norm(a.V[h], 2) for h in range(a.heads))
            top = jnp.max(jnp.linalg.norm(y, axis=1))
            shrink = 1 - self.step * sigma
            if radius is None:
                radius = jnp.where(shrink > 0, top / jnp.where(shrink > 0, shrink, 1), jnp.inf)
                radius = jnp.maximum(radius, jnp.finfo(top.dtype).tiny)
            radius = jnp.asarray(radius, top.dtype)
            inside = top + self.step * sigma * radius <= radius * (1 + 1e-6)
            lip = lipschitz_bound(a, n, jnp.where(jnp.isfinite(radius), radius, 1.0))
            lip = jnp.where(jnp.isfinite(radius), lip, jnp.inf)
        else:
            # lipschitz_bound names the kernel it has no closed form for
            lip = lipschitz_bound(a, n, 1.0)
        rate = self.step * lip
        return Certificate(lip, rate, 1 / lip, radius, (rate < 1) & inside)

    def iterates(self, y: Float[Array, "n d"], weights=None, *, num: int = 20):
        r"""$X_0 = Y, X_1, \dots, X_{num}$ of $X_{k+1} = Y - h\,v[\mu_{X_k}](X_k)$, shape
        `(num + 1, n, d)`: to measure the rate."""
        y = check_cloud(y, "y")
        weights = check_weights(weights, y.shape[0])

        def step(x, _):
            x = y - self.step * self.attention.unchecked(x, weights)
            return x, x

        _, xs = jax.lax.scan(step, y, None, length=num)
        return jnp.concatenate([y[None], xs])

    def inverse(
        self,
        y: Float[Array, "n d"],
        weights=None,
        *,
        tol: float | None = None,
        max_iters: int = 200,
        radius=None,
    ) -> InverseResult:
        r"""The preimage $X$ of $Y$ by fixed-point iteration, until
        $|X_k - X_{k-1}| \le$ `tol` (default: 4 units of rounding of $|Y|$) or `max_iters`.

        Non-convergence is reported in the result (`converged`), not raised, so this works
        under `jit` and `vmap`.
        """
        y = check_cloud(y, "y")
        weights = check_weights(weights, y.shape[0])
        cert = self.certificate(y, radius)
        eps = jnp.finfo(y.dtype).eps
        scale = jnp.linalg.norm(y) + 1
        tol = 4 * eps * scale if tol is None else jnp.asarray(tol, y.dtype)

        def cond(state):
            _, k, step = state
            return (k < max_iters) & (step > tol)

        def body(state):
            x, k, _ = state
            new = y - self.step * self.attention.unchecked(x, weights)
            return new, k + 1, jnp.linalg.norm(new - x)

        x, k, step = jax.lax.while_loop(
            cond, body, (y, jnp.asarray(0), jnp.asarray(jnp.inf, y.dtype))
        )
        q = cert.rate
        bound = jnp.where(cert.valid, q / jnp.where(cert.valid, 1 - q, 1) * step, jnp.inf)
        return InverseResult(x, k, step, bound, step <= tol, cert)


class InvertibleNetwork(eqx.Module):
    r"""A deep invertible network: invertible residual layers applied in order,
    $X^{l+1} = X^l + h_l\, v_l[\mu_{X^l}](X^l)$; its inverse undoes them in reverse order,
    each by its own certified fixed-point iteration.

    Args:
        layers: a sequence of `InvertibleResidual` layers.
    """

    layers: tuple[InvertibleResidual, ...]

    def __init__(self, layers):
        layers = tuple(layers)
        if not layers or not all(isinstance(a, InvertibleResidual) for a in layers):
            raise TypeError("layers must be a non-empty sequence of InvertibleResidual")
        self.layers = layers

    def _stacked(self):
        """The layers' arrays stacked on a leading axis and their shared static part, or
        `None` when the layers differ in structure (then they are applied one by one)."""
        params, statics = zip(*(eqx.partition(a, eqx.is_array) for a in self.layers), strict=True)
        structures = {jax.tree_util.tree_structure(p) for p in params}
        if len(structures) != 1 or any(s != statics[0] for s in statics[1:]):
            return None
        if any(
            a.shape != b.shape
            for p in params[1:]
            for a, b in zip(
                jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(params[0]), strict=True
            )
        ):
            return None
        return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *params), statics[0]

    def __call__(self, x: Float[Array, "n d"], weights=None) -> Float[Array, "n d"]:
        stacked = self._stacked()
        if stacked is not None:
            # one scan over identical layers: one compilation whatever the depth
            params, static = stacked

            def step(x, p):
                return eqx.combine(p, static)(x, weights), None

            return jax.lax.scan(step, x, params)[0]
        for layer in self.layers:
            x = layer(x, weights)
        return x

    def inverse(self, y: Float[Array, "n d"], weights=None, **options) -> InverseResult:
        """Undo the layers from the last to the first (`options` go to each layer's
        `InvertibleResidual.inverse`); per-layer fields are stacked in layer order."""
        stacked = self._stacked()
        if stacked is not None:
            params, static = stacked

            def step(y, p):
                r = eqx.combine(p, static).inverse(y, weights, **options)
                return r.x, r

            x, results = jax.lax.scan(step, y, params, reverse=True)
            return eqx.tree_at(lambda r: r.x, results, x)
        results = []
        for layer in reversed(self.layers):
            r = layer.inverse(y, weights, **options)
            results.append(r)
            y = r.x
        results = results[::-1]
        stack = lambda *a: jnp.stack(a)  # noqa: E731
        return InverseResult(
            y,
            jnp.stack([r.iterations for r in results]),
            jnp.stack([r.step for r in results]),
            jnp.stack([r.error_bound for r in results]),
            jnp.stack([r.converged for r in results]),
            jax.tree_util.tree_map(stack, *[r.certificate for r in results]),
        )
