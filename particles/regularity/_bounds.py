r"""Upper bounds on the local Lipschitz constant of attention and on its Wasserstein
regularity, as closed forms in $\beta$, $n$, the radius $R$ and the weight norms.

- `castin_bound`: Castin, Ablin, Peyré (*How Smooth Is Attention?*, ICML 2024), Theorem 3.3,
  $\sqrt{3}\|V\|(\|A\|^2R^4(4n+1) + n)^{1/2}$ for softmax dot-product attention on the ball.
- `kim_bound`: Kim, Papamakarios, Mnih (*The Lipschitz Constant of Self-Attention*, ICML
  2021), Theorem 3.2, for L2 attention with tied keys, global in $X$ (its docstring says
  what of the published statement we could check).
- `softmax_bound`, `unnormalized_bound`, `l2_bound`: our own derivations (proofs in the
  docstrings), sharper than the papers' where both apply.
- `lipschitz_bound` dispatches on the kernel and normalization types (and the sphere);
  `measure_lipschitz_bound` and `growth_rate_bound` give the constants of the Wasserstein
  stability of Vuckovic, Baratin, Tachet des Combes (2020).

Each bound exists only for some kernels and normalizations: asked for another, it raises
`NotImplementedError` naming the kernel or normalization. Multi-head attention sums the
heads (triangle inequality). The tests check each bound against configurations where the
constant is known in closed form and the ratio to the bound is exact.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import check_positive, is_concrete
from ..attention import L2, AbstractAttention, Attention, DotProduct, Softmax, Unnormalized
from ..flows import AttentionFlow
from ..spaces import Euclidean, Sphere

__all__ = [
    "castin_bound",
    "growth_rate_bound",
    "kim_bound",
    "l2_bound",
    "lambert_w0",
    "lipschitz_bound",
    "measure_lipschitz_bound",
    "softmax_bound",
    "unnormalized_bound",
]


def _norm2(a):
    return jnp.linalg.norm(a, 2)


def _heads(attention):
    """(Q, K, V) of each head, as a list of matrices."""
    return [(attention.Q[h], attention.K[h], attention.V[h]) for h in range(attention.heads)]


def _check_attention(attention, kernels, normalizations, what):
    """Raise unless `attention` is an `Attention` whose kernel and normalization are of one
    of the given types: a bound is a closed form that exists only for those."""
    if not isinstance(attention, Attention):
        raise TypeError(f"attention must be an Attention; got {type(attention).__name__}")
    if not isinstance(attention.kernel, kernels):
        raise NotImplementedError(
            f"{what} is known for the kernels {', '.join(k.__name__ for k in kernels)}; "
            f"none is implemented for the {type(attention.kernel).__name__} kernel"
        )
    if not isinstance(attention.normalization, normalizations):
        raise NotImplementedError(
            f"{what} is known for the normalizations "
            f"{', '.join(k.__name__ for k in normalizations)}; none is implemented for "
            f"{type(attention.normalization).__name__}"
        )


def _check_radius(radius):
    """A positive radius, scalar or array (bounds are evaluated elementwise)."""
    radius = jnp.asarray(radius)
    if is_concrete(radius) and not np.all(np.asarray(radius) > 0):
        raise ValueError(f"radius must be > 0; got {radius}")
    return radius


def _check_n(n):
    if is_concrete(n) and not np.all(np.asarray(n) >= 1):
        raise ValueError(f"n must be >= 1; got {n}")
    return jnp.asarray(n)


def softmax_bound(attention: Attention, n, radius) -> Float[Array, "..."]:
    r"""Upper bound on $\|DF(X)\|_2$ for softmax dot-product attention on the ball $|x_i| \le R$.

    $$ \mathrm{Lip} \le \sum_h \|V_h\|_2 \Big( \sqrt{n}\,\big(1 + \beta \|Q_h^\top K_h\|_2 R^2\big)
        + \beta \|Q_h^\top K_h\|_2 R^2 \Big). $$

    **Our derivation**, a sharper form of `castin_bound` (Castin, Ablin, Peyré 2024, Theorem
    3.3), which it never exceeds: for $c = \beta\|Q^\top K\|R^2$,
    $(\sqrt{n}(1 + c) + c)^2 \le 3(n + c^2(4n + 1))$ for all $n \ge 1$, $c \ge 0$. Valid for
    any weights and for causal masking.

    *Proof.* Write $M = Q^\top K$, $P_{ij} = w_j e^{\beta x_i^\top M x_j} / Z_i$ (rows sum to
    one; with masking, $P_{ij} = 0$ for $j > i$), $m_i = \sum_j P_{ij} x_j$,
    $\Sigma_i = \sum_j P_{ij} (x_j - m_i)(x_j - m_i)^\top$. Differentiating
    $F_i = V \sum_j P_{ij} x_j$, with $\delta P_{ij} = P_{ij}(\delta s_{ij} - \sum_k P_{ik}\delta s_{ik})$:
    $$ \delta F_i = V\Big[\underbrace{\sum_j P_{ij}\delta x_j}_{T_1}
       + \underbrace{\beta\,\Sigma_i M^\top \delta x_i}_{T_2}
       + \underbrace{\beta \sum_j P_{ij}(x_j - m_i)\, x_i^\top M \delta x_j}_{T_3}\Big]. $$
    $\|T_1\| \le \|P\|_2 \|\delta X\| \le \sqrt{\|P\|_1\|P\|_\infty}\,\|\delta X\| \le \sqrt{n}\,\|\delta X\|$
    (row sums 1, column sums at most $n$). $\|\Sigma_i\|_2 \le R^2$ (a covariance of a law on the
    ball), so $\|T_2\| \le \beta\|M\|R^2\|\delta X\|$. By Cauchy-Schwarz,
    $|T_{3,i}| \le \beta \big(\sum_j P_{ij}|x_j - m_i|^2\big)^{1/2} \big(\sum_j P_{ij} (R\|M\| |\delta x_j|)^2\big)^{1/2}$
    with the first factor $= (\operatorname{tr}\Sigma_i)^{1/2} \le R$; summing the squares over
    $i$ and using column sums $\le n$, $\|T_3\| \le \beta\|M\|R^2\sqrt{n}\,\|\delta X\|$. Heads add
    (triangle inequality). $\square$

    Args:
        attention: a dot-product softmax `Attention` (any number of heads, causal or not).
        n: number of tokens (scalar or array: the bound is evaluated elementwise).
        radius: radius $R$ of the ball containing the cloud.
    """

    def head(a, v, n, r):
        c = a * r**2
        return v * (jnp.sqrt(n) * (1 + c) + c)

    return _dot_softmax_bound(attention, n, radius, "softmax_bound", head)


def _dot_softmax_bound(attention, n, radius, what, head):
    """Sum over heads of `head(beta |Q^T K|, |V|, n, R)`, after checking the arguments."""
    _check_attention(attention, (DotProduct,), (Softmax,), what)
    n = _check_n(n)
    radius = _check_radius(radius)
    return sum(
        head(attention.beta * _norm2(Q.T @ K), _norm2(V), n, radius)
        for Q, K, V in _heads(attention)
    )


def unnormalized_bound(attention: Attention, radius) -> Float[Array, ""]:
    r"""Upper bound on $\|DF(X)\|_2$ for unnormalized dot-product attention (USA) on the ball
    $|x_i| \le R$, uniform weights $w_j = 1/n$:

    $$ \mathrm{Lip} \le \sum_h \|V_h\|_2\, e^{c_h} (1 + 2 c_h), \qquad c_h = \beta\|Q_h^\top K_h\|_2 R^2, $$

    independent of $n$ but exponential in $R^2$. **Our derivation.**

    *Proof.* With $G_{ij} = w_j e^{\beta x_i^\top M x_j}$, $0 \le G_{ij} \le e^{c}/n$, so row and
    column sums of $G$ are at most $e^c$ and $\|G\|_2 \le e^c$. Differentiating
    $F_i = V\sum_j G_{ij} x_j$:
    $\delta F_i = V[\sum_j G_{ij}\delta x_j + \beta\sum_j G_{ij} x_j x_j^\top M^\top \delta x_i + \beta \sum_j G_{ij} x_j x_i^\top M\delta x_j]$;
    the three terms are bounded by $e^c$, $\beta R^2 \|M\| e^c$ and $\beta R^2\|M\|\,\|G\|_2$
    times $\|\delta X\|$. $\square$
    """
    _check_attention(attention, (DotProduct,), (Unnormalized,), "unnormalized_bound")
    radius = _check_radius(radius)
    total = 0.0
    for Q, K, V in _heads(attention):
        c = attention.beta * _norm2(Q.T @ K) * radius**2
        total = total + _norm2(V) * jnp.exp(c) * (1 + 2 * c)
    return total


def lambert_w0(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """Principal branch $W_0(x)$ of the Lambert function ($W e^W = x$) for $x \\ge 0$.

    Halley's iteration from $\\log(1 + x)$; converges to rounding in a few steps.
    """
    x = jnp.asarray(x, dtype=jnp.result_type(x, float))
    w = jnp.log1p(x)
    for _ in range(8):
        e = jnp.exp(w)
        f = w * e - x
        w = w - f / (e * (w + 1) - (w + 2) * f / (2 * w + 2))
    return w


def l2_bound(attention: Attention, n) -> Float[Array, "..."]:
    r"""Global upper bound on $\|DF(X)\|_2$ for L2 softmax attention with tied keys $K = Q$,
    for every cloud in $\mathbb{R}^{nd}$ (uniform weights, causal or not):

    $$ \mathrm{Lip} \le \sum_h \|U_h\|_2 \|Q_h\|_2 \Big( \sqrt{n}
       + 2\,W + 2\sqrt{W (n - 1)/e} \Big), \qquad W = W_0\big((n-1)/e\big), $$

    where $V_h = U_h Q_h$ ($U_h = V_h Q_h^+$): the values must factor through the queries, as
    in the L2 attention of Kim, Papamakarios, Mnih (2021), which ties $K = Q$. **Our
    derivation**, a sharper form of `kim_bound` (their Theorem 3.2), which it never exceeds:
    $W = W_0((n-1)/e)$ is their $\varphi^{-1}(n-1)$, $\sqrt{W(n-1)/e} = W e^{W/2} \le W\sqrt{n}$
    makes the bracket at most $\sqrt{n}(4W + 1)$, and
    $\|U\|\|Q\| \le \|Q\|^2\|V(Q^\top Q)^+\|$.
    Returns `inf` for a head with $K \ne Q$ or a $V$ that does not factor through $Q$ (no
    finite global bound is implemented there; dot-product attention has none at all).

    *Proof.* With $y_i = Q x_i$, $F_i = U g_i(Y)$, $g_i = \sum_j P_{ij} y_j$,
    $P_{ij} \propto e^{-\beta r_{ij}^2/2}$, $r_{ij} = |y_i - y_j|$, so
    $\|DF\| \le \|U\|\|Q\|\,\|Dg\|$. Differentiating (the centring identity
    $\sum_j P_{ij}(y_j - m_i) = 0$ turns the $\delta y_i$ part into a covariance):
    $\delta g_i = \sum_j P_{ij}\delta y_j + \beta\Sigma_i \delta y_i
       + \beta\sum_j P_{ij}(y_j - m_i)(y_i - y_j)^\top\delta y_j$.
    Key fact: $Z_i = \sum_k e^{-\beta r_{ik}^2/2} \ge 1$ (the term $k = i$), so with
    $e_j = e^{-\beta r_{ij}^2/2}$,
    $\tfrac{\beta}{2}\sum_j P_{ij} r_{ij}^2 = \sum_{j\ne i} e_j\log(1/e_j) / (1 + \sum_{j \ne i} e_j)
    \le \max_{u > 0} u\log\tfrac{n-1}{u}/(1+u) = W$ (concavity of $e\log(1/e)$, then the
    maximiser solves $u e^u = (n-1)/e$, where the value is $u = W$). Hence
    $\|\Sigma_i\| \le \operatorname{tr}\Sigma_i \le \sum_j P_{ij} r_{ij}^2 \le 2W/\beta$, and
    $P_{ij} r_{ij}^2 \le r^2 e^{-\beta r^2/2} \le 2/(\beta e)$. The first term is at most
    $\sqrt{n}\,\|\delta Y\|$ as in `softmax_bound`, the second $2W\|\delta Y\|$, and by
    Cauchy-Schwarz the third is at most
    $\beta\,(2W/\beta)^{1/2}\big(\sum_{i \ne j} P_{ij} r_{ij}^2 |\delta y_j|^2\big)^{1/2}
    \le 2\sqrt{W(n-1)/e}\,\|\delta Y\|$. $\square$

    Args:
        attention: an L2 softmax `Attention` (any number of heads).
        n: number of tokens (scalar or array).
    """
    _check_attention(attention, (L2,), (Softmax,), "l2_bound")
    n = _check_n(n)
    w = lambert_w0((n - 1) / math.e)
    g = jnp.sqrt(n) + 2 * w + 2 * jnp.sqrt(w * (n - 1) / math.e)
    total = 0.0
    for Q, K, V in _heads(attention):
        U = V @ jnp.linalg.pinv(Q)
        eps = 100 * jnp.finfo(Q.dtype).eps
        tied = jnp.linalg.norm(K - Q) <= eps * jnp.linalg.norm(Q)
        factors = jnp.linalg.norm(V - U @ Q) <= eps * jnp.linalg.norm(V) * (1 + jnp.linalg.cond(Q))
        head = _norm2(U) * _norm2(Q) * g
        total = total + jnp.where(tied & factors, head, jnp.inf)
    return total


def castin_bound(attention: Attention, n, radius) -> Float[Array, "..."]:
    r"""The $\sqrt{n}$ bound of Castin, Ablin, Peyré (*How Smooth Is Attention?*, ICML 2024,
    PMLR 235:5817-5840), Theorem 3.3, for softmax dot-product attention on the ball
    $|x_i| \le R$:

    $$ \mathrm{Lip}\big(f|_{B_R^n}\big) \le \sqrt{3}\,\|V\|_2
       \big(\|A\|_2^2 R^4 (4n + 1) + n\big)^{1/2}, $$

    where their $f(X)_i = \sum_j \mathrm{softmax}_j(x_i^\top A x_j)\, V x_j$, so here
    $A = \beta Q^\top K$. Heads add (triangle inequality). The theorem is stated for uniform
    weights without a mask; `softmax_bound` (proof in its docstring) holds with weights and
    causal masks and never exceeds this formula, so the formula holds there too.

    Args:
        attention: a dot-product softmax `Attention` (any number of heads, causal or not).
        n: number of tokens (scalar or array: the bound is evaluated elementwise).
        radius: radius $R$ of the ball containing the cloud.
    """

    def head(a, v, n, r):
        return math.sqrt(3) * v * jnp.sqrt(a**2 * r**4 * (4 * n + 1) + n)

    return _dot_softmax_bound(attention, n, radius, "castin_bound", head)


def kim_bound(attention: Attention, n) -> Float[Array, "..."]:
    r"""The $\ell_2$ bound of Kim, Papamakarios, Mnih (*The Lipschitz Constant of
    Self-Attention*, ICML 2021), Theorem 3.2, for L2 multi-head
    attention with tied keys, on all of $\mathbb{R}^{nd}$:

    $$ \mathrm{Lip}_2(F) \le \frac{\sqrt{N}}{\sqrt{D/H}}\,\big(4\varphi^{-1}(N - 1) + 1\big)
       \Big(\sum_h \|W^{Q,h}\|_2^4\, \|W^{V,h}\|_2^2\Big)^{1/2} \|W^O\|_2,
       \qquad \varphi(x) = x e^{x + 1}, $$

    so $\varphi^{-1}(N-1) = W_0((N-1)/e)$ (`lambert_w0`). Their head is
    $f^h(X) = P^h X A_h W^{V,h}$ with $P^h_{ij} \propto
    \exp(-\|x_i^\top W^{Q,h} - x_j^\top W^{Q,h}\|^2/\sqrt{D/H})$ and
    $A_h = W^{Q,h} W^{Q,h\top}/\sqrt{D/H}$, and $F = [f^1, \dots, f^H] W^O$.

    **The exponent of $\|W^{Q,h}\|_2$ is ours.** We could not read the theorem as published:
    the copies of the paper we could search hold only its abstract and introduction, so we
    cannot say whether the printed statement carries $\|W^{Q,h}\|_2^2$ or
    $\|W^{Q,h}\|_2^4$ under the root. The power 4 (one $\|W^{Q,h}\|^2$ per head) is forced:
    $W^{Q} \to sW^{Q}$ maps $F(X)$ to $s F(sX)$ (one power through $A_h$, one through the
    logits), so the constant scales like $s^2$; at $N = 1$, $F(x) = x A_h W^{V,h} W^O$
    exactly, whose norm for $W^{Q,h} = qI$ is $q^2 \|W^{V,h}\|/\sqrt{D/H}$, above any bound
    linear in $\|W^{Q,h}\|$ once $q > 1$. With the power 4 the bound is attained at
    $N = 1$ by $W^{Q,h} = qI$ (the tests check both facts).

    In this package's notation (logits $-\beta|Q x_i - Q x_j|^2/2$, values $V x_j$, heads
    summed, $d_k$ rows of $Q$): $W^{Q,h\top} = (\beta\sqrt{d_k}/2)^{1/2} Q_h$,
    $A_h = \tfrac{\beta}{2}Q_h^\top Q_h$, $W^{V,h\top} = \tfrac{2}{\beta} V_h (Q_h^\top Q_h)^+$
    (the values must factor through the queries), $W^O$ the stack of $H$ identities
    ($\|W^O\|_2 = \sqrt{H}$), $D/H = d_k$; $\beta$ and $d_k$ cancel and each head contributes
    $a_h = \|Q_h\|_2^2 \|V_h (Q_h^\top Q_h)^+\|_2$:

    $$ \mathrm{Lip} \le \sqrt{n}\,\big(4 W_0((n-1)/e) + 1\big)\sqrt{H}\,
       \Big(\sum_h a_h^2\Big)^{1/2}. $$

    Returns `inf` for a head with $K \ne Q$ or values that do not factor through $Q$.
    `l2_bound` (proof in its docstring, also valid for causal masks) never exceeds this.

    Args:
        attention: an L2 softmax `Attention` (any number of heads).
        n: number of tokens (scalar or array).
    """
    _check_attention(attention, (L2,), (Softmax,), "kim_bound")
    n = _check_n(n)
    heads = _heads(attention)
    squares = 0.0
    for Q, K, V in heads:
        G = jnp.linalg.pinv(Q.T @ Q)
        eps = 100 * jnp.finfo(Q.dtype).eps
        tied = jnp.linalg.norm(K - Q) <= eps * jnp.linalg.norm(Q)
        factors = jnp.linalg.norm(V - V @ G @ (Q.T @ Q)) <= eps * jnp.linalg.norm(V) * (
            1 + jnp.linalg.cond(Q) ** 2
        )
        a = _norm2(Q) ** 2 * _norm2(V @ G)
        squares = squares + jnp.where(tied & factors, a**2, jnp.inf)
    w = lambert_w0((n - 1) / math.e)
    return jnp.sqrt(n) * (4 * w + 1) * math.sqrt(len(heads)) * jnp.sqrt(squares)


def lipschitz_bound(
    model: AbstractAttention | AttentionFlow, n, radius=None
) -> Float[Array, "..."]:
    r"""The implemented upper bound on $\|DF(X)\|_2$ for `model`, over clouds of `n` tokens
    in the ball of radius `radius` (Euclidean) or on the unit sphere.

    Dispatches to the sharpest bound implemented: `softmax_bound` (dot, softmax; below
    `castin_bound`), `unnormalized_bound` (dot, USA) or `l2_bound` (L2 softmax, below
    `kim_bound`; `radius` unused). For an `AttentionFlow` on `Sphere()`
    ($F_i = P_{x_i} v_i$, $|x_i| = 1$), differentiating gives
    $\delta F_i = P_{x_i}\delta v_i - x_i v_i^\top \delta x_i - \langle x_i, v_i\rangle\delta x_i$,
    so (**our derivation**) $\mathrm{Lip}(F) \le \mathrm{Lip}(v)|_{R=1} + 2\max_i |v_i|$ with
    $|v_i| \le \sum_h \|V_h\|$ (softmax) or $\sum_h \|V_h\| e^{c_h}$ (USA).
    """
    if isinstance(model, AttentionFlow):
        if model.feedforward is not None:
            raise NotImplementedError("no bound is implemented for a flow with a FeedForward term")
        attention = model.attention
        sphere = isinstance(model.space, Sphere)
        if not isinstance(model.space, (Sphere, Euclidean)):
            raise NotImplementedError(
                f"no bound is implemented for the space {type(model.space).__name__}"
            )
    else:
        attention, sphere = model, False
    _check_attention(attention, (DotProduct, L2), (Softmax, Unnormalized), "lipschitz_bound")
    if sphere:
        if radius is not None and is_concrete(radius) and float(radius) != 1:
            raise ValueError(f"radius must be None or 1 on the sphere; got {radius}")
        radius = 1.0
    if isinstance(attention.kernel, L2):
        if not isinstance(attention.normalization, Softmax):
            raise NotImplementedError(
                "lipschitz_bound for the L2 kernel is known for Softmax; none is implemented "
                f"for {type(attention.normalization).__name__}"
            )
        bound = l2_bound(attention, n)
        speed = sum(_norm2(V) for _, _, V in _heads(attention))
    else:
        if radius is None:
            raise ValueError("radius is required for dot-product attention")
        radius = check_positive(radius, "radius")
        if isinstance(attention.normalization, Softmax):
            bound = softmax_bound(attention, n, radius)
            speed = sum(_norm2(V) * radius for _, _, V in _heads(attention))
        else:
            bound = unnormalized_bound(attention, radius) + 0 * jnp.asarray(n)
            speed = sum(
                _norm2(V) * radius * jnp.exp(attention.beta * _norm2(Q.T @ K) * radius**2)
                for Q, K, V in _heads(attention)
            )
    return bound + 2 * speed if sphere else bound


def _head_constants(attention, Q, K, V, radius):
    """(Lip in x of v[mu](.), Lip of mu -> v[mu](x) in W1, sup |v|) on the ball of radius R."""
    beta = attention.beta
    nV = _norm2(V)
    if isinstance(attention.kernel, DotProduct):
        m = _norm2(Q.T @ K)
        c = beta * m * radius**2
        if isinstance(attention.normalization, Softmax):
            return beta * nV * m * radius**2, nV * jnp.exp(2 * c) * (1 + 2 * c), nV * radius
        e = jnp.exp(c)
        return beta * nV * m * radius**2 * e, nV * e * (1 + c), nV * radius * e
    # L2 softmax: 0 >= s >= -S on the ball, |grad_y s| <= beta |K| (|Q| + |K|) R.
    nQ, nK = _norm2(Q), _norm2(K)
    S = beta * (nQ + nK) ** 2 * radius**2 / 2
    lip_x = beta * nV * _norm2(K.T @ Q) * radius**2
    lip_mu = nV * jnp.exp(S) * (1 + 2 * beta * nK * (nQ + nK) * radius**2)
    return lip_x, lip_mu, nV * radius


def _constants(model, radius):
    if isinstance(model, AttentionFlow):
        if model.feedforward is not None:
            raise NotImplementedError("no bound is implemented for a flow with a FeedForward term")
        attention, sphere = model.attention, isinstance(model.space, Sphere)
    else:
        attention, sphere = model, False
    _check_attention(attention, (DotProduct, L2), (Softmax, Unnormalized), "the Wasserstein bounds")
    if attention.causal:
        raise ValueError(
            "causal attention is not a function of the measure alone: no Wasserstein bound"
        )
    if isinstance(attention.kernel, L2) and not isinstance(attention.normalization, Softmax):
        raise NotImplementedError(
            "the Wasserstein bounds for the L2 kernel are known for Softmax; none is "
            f"implemented for {type(attention.normalization).__name__}"
        )
    if sphere:
        if radius is not None and is_concrete(radius) and float(radius) != 1:
            raise ValueError(f"radius must be None or 1 on the sphere; got {radius}")
        radius = 1.0
    elif radius is None:
        raise ValueError("radius is required in Euclidean space")
    radius = check_positive(radius, "radius")
    parts = [_head_constants(attention, Q, K, V, radius) for Q, K, V in _heads(attention)]
    lip_x, lip_mu, speed = (sum(p[k] for p in parts) for k in range(3))
    return lip_x, lip_mu, speed, sphere


def measure_lipschitz_bound(
    model: AbstractAttention | AttentionFlow, radius=None
) -> Float[Array, ""]:
    r"""Bound $L_\mu$ with $\sup_{|x| \le R} |v[\mu](x) - v[\nu](x)| \le L_\mu W_1(\mu, \nu)$
    for measures on the ball of radius $R$ (on the sphere, $R = 1$ and the field is projected,
    which does not increase it).

    Vuckovic et al. (2020) prove that attention is Lipschitz in $W_1$ on compact sets; the
    constants below are **our derivation**, with $c = \beta\|Q^\top K\|R^2$:
    softmax dot $L_\mu = \|V\| e^{2c}(1 + 2c)$; USA dot $\|V\| e^{c}(1 + c)$; L2 softmax
    $\|V\| e^{S}(1 + 2\beta\|K\|(\|Q\| + \|K\|)R^2)$, $S = \beta(\|Q\|+\|K\|)^2R^2/2$;
    heads add.

    *Proof (softmax dot).* With $s(y) = \beta x^\top M y$, $D_\mu = \int e^{s}d\mu \ge e^{-c}$
    and $m_\nu = v$'s mean under $\nu$'s tilted law,
    $v[\mu](x) - v[\nu](x) = V\int (y - m_\nu)e^{s(y)}\,d(\mu - \nu)(y) / D_\mu$ (the
    $\nu$ integral of $(y - m_\nu) e^s$ vanishes). For a unit vector $u$ the integrand
    $u^\top V(y - m_\nu)e^{s(y)}$ has gradient norm at most $\|V\| e^{c}(1 + 2R\cdot\beta\|M\|R)$
    on the ball, so Kantorovich-Rubinstein duality gives the bound. USA and L2 are the same
    computation with $D \equiv 1$, resp. $e^{-S} \le e^s \le 1$. $\square$
    """
    return _constants(model, radius)[1]


def growth_rate_bound(model: AbstractAttention | AttentionFlow, radius=None) -> Float[Array, ""]:
    r"""Rate $L$ with $W_1(\mu_t, \nu_t) \le e^{L t} W_1(\mu_0, \nu_0)$ for two solutions of the
    flow that stay in the ball of radius $R$ (or on the unit sphere).

    $L = L_x + L_\mu$ (+ $2\sup|v|$ on the sphere), with $L_\mu$ from
    `measure_lipschitz_bound` and $L_x$ the Lipschitz constant of $x \mapsto v[\mu](x)$:
    softmax dot $\beta\|V\|\|Q^\top K\|R^2$ (the gradient is $\beta V\Sigma_x M^\top$, a
    tilted covariance), USA $\beta\|V\|\|Q^\top K\|R^2e^{c}$, L2 $\beta\|V\|\|K^\top Q\|R^2$.
    The Wasserstein stability is the result of Vuckovic et al. (2020); constants are **our
    derivation**.

    *Proof.* Couple $\mu_0, \nu_0$ optimally and follow both characteristics: the particles
    move with the field of their own measure, so
    $\tfrac{d}{dt}|X_t - Y_t| \le L_x|X_t - Y_t| + L_\mu W_1(\mu_t, \nu_t)$ and
    $D(t) = \mathbb{E}|X_t - Y_t| \ge W_1(\mu_t,\nu_t)$ obeys $D' \le (L_x + L_\mu) D$.
    On the sphere $P_x$ is a contraction on the ball and
    $|\delta(P_x v)| \le |\delta v| + 2|v||\delta x|$. Grönwall. $\square$
    """
    lip_x, lip_mu, speed, sphere = _constants(model, radius)
    return lip_x + lip_mu + (2 * speed if sphere else 0.0)
