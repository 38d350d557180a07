r"""Attention variants practitioners use, each one kernel class (Tay et al. 2022, *Efficient
Transformers: A Survey*; Hays, *A survey of attention mechanisms*).

- `Linear`: linear attention, $k(x, y) = \varphi(\sqrt\beta\, Qx) \cdot \varphi(\sqrt\beta\, Ky)$
  with $\varphi = \mathrm{elu} + 1$ (Katharopoulos, Vyas, Pappas, Fleuret 2020, *Transformers
  are RNNs*);
- `Performer`: positive orthogonal random features, an unbiased estimate of
  $e^{\beta\langle q, k\rangle}$ (Choromanski et al. 2021, *Rethinking Attention with
  Performers*);
- `Additive`: Bahdanau scoring $s_\beta(q, k) = \beta\, a^\top \tanh(W_1 q + W_2 k)$
  (Bahdanau, Cho, Bengio 2015);
- `Rotary`: rotary position embeddings, $s_\beta(R_{p_i} q, R_{p_j} k)$ for any base kernel,
  a function of $p_j - p_i$ only (Su et al. 2021, *RoFormer*): a particle system whose
  interaction depends on the tokens' indices.

Every one runs wherever attention runs (flows, networks, Lipschitz estimates, plots) through
its logits; the closed forms that exist only for `DotProduct` / `L2` (Lipschitz bounds, the
Gaussian mean field, the interaction energy) raise `NotImplementedError` naming them.

Kernels with positive features, $k(q, k) = \varphi(q)\cdot\varphi(k)$ (`AbstractFeatureKernel`:
`Linear`, `Performer`), also have the $O(n)$ evaluation of linear attention,
$v_i = \varphi(q_i)^\top \sum_j w_j \varphi(k_j) (V x_j)^\top / \varphi(q_i)^\top \sum_j w_j
\varphi(k_j)$: `feature_rows` and `linear_attention`.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_cloud, check_weights
from ._kernels import AbstractKernel, DotProduct
from ._normalizations import AbstractNormalization, Softmax, Unnormalized
from ._positions import AbstractPositionalKernel
from ._reduce import log_weights

__all__ = [
    "AbstractFeatureKernel",
    "Additive",
    "Linear",
    "Performer",
    "Rotary",
    "feature_rows",
    "linear_attention",
]


class AbstractFeatureKernel(AbstractKernel):
    r"""A kernel with positive features: $k(q, k) = \sum_r \varphi_r(q)\varphi_r(k)$.

    Given by `log_features` ($\log\varphi_\beta$, so that large features stay finite); its
    logit is the log-sum-exp $\log\sum_r e^{\log\varphi_r(q) + \log\varphi_r(k)}$.
    """

    @abc.abstractmethod
    def log_features(self, beta: Float[Array, ""], f: Float[Array, "b k"]) -> Float[Array, "b r"]:
        """$\\log\\varphi_\\beta(f)$ of each row of `f`."""

    def log_kernel(self, beta, q, k):
        return jax.nn.logsumexp(self.log_features(beta, q[None]) + self.log_features(beta, k[None]))

    def logits(self, beta, qf, kf):
        lq, lk = self.log_features(beta, qf), self.log_features(beta, kf)
        # shift each row by its largest feature so the product of exponentials is <= 1
        mq = jnp.max(lq, axis=1, keepdims=True)
        mk = jnp.max(lk, axis=1, keepdims=True)
        return jnp.log(jnp.exp(lq - mq) @ jnp.exp(lk - mk).T) + mq + mk.T


class Linear(AbstractFeatureKernel):
    r"""Linear attention (Katharopoulos, Vyas, Pappas, Fleuret 2020, *Transformers are
    RNNs*): $k(x, y) = \varphi(\sqrt\beta\, Qx)\cdot\varphi(\sqrt\beta\, Ky)$ with
    $\varphi(u) = \mathrm{elu}(u) + 1$ ($u + 1$ for $u > 0$, $e^u$ otherwise), so that
    $\beta\langle q, k\rangle = \langle\sqrt\beta q, \sqrt\beta k\rangle$ as in the
    dot-product kernel."""

    def log_features(self, beta, f):
        u = jnp.sqrt(beta) * f
        # log(elu(u) + 1) exactly: log1p(u) above 0, u below (maximum keeps gradients finite)
        return jnp.where(u > 0, jnp.log1p(jnp.maximum(u, 0)), u)


def _orthogonal_gaussian(key, features: int, dim: int):
    """`features` rows, each marginally $N(0, I_{dim})$, orthogonal within blocks of `dim`:
    the directions of an orthogonal matrix (QR of a Gaussian, sign-fixed so it is Haar)
    with lengths of independent Gaussian vectors (chi with `dim` degrees of freedom)."""
    blocks = -(-features // dim)
    kq, kn = jax.random.split(key)
    g = jax.random.normal(kq, (blocks, dim, dim))
    q, r = jnp.linalg.qr(g)
    q = q * jnp.sign(jnp.diagonal(r, axis1=1, axis2=2))[:, None, :]
    directions = jnp.swapaxes(q, 1, 2).reshape(blocks * dim, dim)[:features]
    lengths = jnp.linalg.norm(jax.random.normal(kn, (features, dim)), axis=1)
    return directions * lengths[:, None]


class Performer(AbstractFeatureKernel):
    r"""Positive random features (Choromanski et al. 2021, *Rethinking Attention with
    Performers*, FAVOR+): with $u = \sqrt\beta\, q$,
    $\varphi_r(u) = e^{\omega_r\cdot u - |u|^2/2}/\sqrt m$, so
    $\mathbb{E}_\omega[\varphi(u)\cdot\varphi(v)] = e^{\langle u, v\rangle}$, the dot-product
    kernel, with the variance of $m$ i.i.d. features
    $\frac1m e^{2\langle u, v\rangle}(e^{|u + v|^2} - 1)$ (their Lemma 2).

    `omega` holds the $m$ frequencies (rows); draw them with `Performer.random`.
    """

    omega: Float[Array, "m k"]

    @classmethod
    def random(
        cls, key: PRNGKeyArray, d_k: int, features: int = 64, *, orthogonal: bool = True
    ) -> Performer:
        """`features` frequencies $\\omega_r \\sim N(0, I_{d_k})$; `orthogonal` makes them
        orthogonal within blocks of $d_k$ (each stays $N(0, I)$, so the estimate stays
        unbiased, with a smaller variance)."""
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive int; got {features!r}")
        if orthogonal:
            return cls(_orthogonal_gaussian(key, features, d_k))
        return cls(jax.random.normal(key, (features, d_k)))

    def log_features(self, beta, f):
        u = jnp.sqrt(beta) * f
        m = self.omega.shape[0]
        sq = jnp.sum(u**2, axis=1, keepdims=True)
        return u @ self.omega.T - sq / 2 - math.log(m) / 2


class Additive(AbstractKernel):
    r"""Additive (Bahdanau) scoring: $s_\beta(q, k) = \beta\, a^\top\tanh(W_1 q + W_2 k)$
    (Bahdanau, Cho, Bengio 2015, *Neural Machine Translation by Jointly Learning to Align
    and Translate*), a one-hidden-layer network of the pair; `W1, W2` are `(hidden, d_k)`,
    `a` is `(hidden,)`. Draw them with `Additive.random`."""

    W1: Float[Array, "a k"]
    W2: Float[Array, "a k"]
    a: Float[Array, " a"]

    @classmethod
    def random(cls, key: PRNGKeyArray, d_k: int, hidden: int | None = None) -> Additive:
        """Gaussian weights, $W_1, W_2$ entries $N(0, 1/d_k)$ and $a$ entries
        $N(0, 1/\\text{hidden})$ (default hidden $= d_k$), so the score is $O(1)$."""
        hidden = d_k if hidden is None else hidden
        k1, k2, k3 = jax.random.split(key, 3)
        s = 1 / math.sqrt(d_k)
        return cls(
            s * jax.random.normal(k1, (hidden, d_k)),
            s * jax.random.normal(k2, (hidden, d_k)),
            jax.random.normal(k3, (hidden,)) / math.sqrt(hidden),
        )

    def log_kernel(self, beta, q, k):
        return beta * jnp.dot(self.a, jnp.tanh(self.W1 @ q + self.W2 @ k))

    def logits(self, beta, qf, kf):
        # the projections are done once per token, not once per pair
        hq, hk = qf @ self.W1.T, kf @ self.W2.T
        return beta * (jnp.tanh(hq[:, None, :] + hk[None, :, :]) @ self.a)


class Rotary(AbstractPositionalKernel):
    r"""Rotary position embeddings (Su, Lu, Pan, Murtadha, Wen, Liu 2021, *RoFormer*):
    $s_\beta(q_i, k_j) = s^{\text{base}}_\beta(R_{p_i} q_i, R_{p_j} k_j)$, where $R_p$ rotates
    each feature pair $(q_{2r}, q_{2r+1})$ by the angle $p\,\theta_r$,
    $\theta_r = \text{base}^{-2r/d_k}$ (an odd last feature is left as it is).

    For the dot-product (and L2) base kernel $\langle R_{p_i} q, R_{p_j} k\rangle =
    \langle q, R_{p_j - p_i} k\rangle$: the interaction depends on the index difference only,
    so a common shift of every position (`start`) leaves the flow unchanged.

    Args:
        kernel: the base kernel (default `DotProduct()`).
        base: the frequency base (10 000 in the paper).
        start: the position $p_0$ of the first token; token $i$ sits at $p_0 + i$.
    """

    kernel: AbstractKernel = DotProduct()
    base: float = eqx.field(default=10_000.0, static=True)
    start: Float[Array, ""] | float = 0.0

    def __check_init__(self):
        if isinstance(self.kernel, AbstractPositionalKernel):
            raise ValueError("Rotary needs a base kernel without positions")
        if not self.base > 1:
            raise ValueError(f"Rotary base must be > 1; got {self.base!r}")

    def positions(self, n):
        return self.start + jnp.arange(n)

    def rotate(self, f: Float[Array, "b k"], p: Float[Array, " b"]) -> Float[Array, "b k"]:
        """$R_{p_i} f_i$ for each row: pairs $(2r, 2r+1)$ turned by $p_i \\theta_r$."""
        dk = f.shape[1]
        pairs = dk // 2
        theta = self.base ** (-2 * jnp.arange(pairs, dtype=f.dtype) / (2 * pairs))
        angle = p[:, None] * theta[None, :]
        c, s = jnp.cos(angle), jnp.sin(angle)
        even, odd = f[:, 0 : 2 * pairs : 2], f[:, 1 : 2 * pairs : 2]
        turned = jnp.stack([c * even - s * odd, s * even + c * odd], axis=2)
        return jnp.concatenate([turned.reshape(f.shape[0], 2 * pairs), f[:, 2 * pairs :]], axis=1)

    def log_kernel(self, beta, q, k):
        rq = self.rotate(q[None, :-1], q[-1:])[0]
        rk = self.rotate(k[None, :-1], k[-1:])[0]
        return self.kernel.log_kernel(beta, rq, rk)

    def logits(self, beta, qf, kf):
        rq = self.rotate(qf[:, :-1], qf[:, -1])
        rk = self.rotate(kf[:, :-1], kf[:, -1])
        return self.kernel.logits(beta, rq, rk)


def feature_rows(
    kernel: AbstractFeatureKernel,
    normalization: AbstractNormalization,
    beta: Float[Array, ""],
    qf: Float[Array, "q k"],
    kf: Float[Array, "m k"],
    log_weights: Float[Array, " m"],
    values: Float[Array, "m e"],
    *,
    causal: bool = False,
) -> Float[Array, "q e"]:
    r"""The rows $\sum_j A_{ij}$ `values[j]` of a feature kernel in $O((q + m) r e)$, never
    forming a $q \times m$ tile (Katharopoulos et al. 2020, section 3.2):

    $$ \sum_j w_j k_{ij} v_j = \varphi(q_i)^\top \sum_j w_j\varphi(k_j) v_j^\top, \qquad
       \text{softmax: divided by } \varphi(q_i)^\top \sum_j w_j \varphi(k_j). $$

    Causal rows use running sums over $j \le i$ (the transformer as an RNN). Supports
    `Softmax` and `Unnormalized`; equal to the blocked evaluation to rounding.
    """
    if not isinstance(kernel, AbstractFeatureKernel):
        raise NotImplementedError(
            f"the O(n) evaluation needs a kernel with features (Linear, Performer); got "
            f"{type(kernel).__name__}"
        )
    if not isinstance(normalization, (Softmax, Unnormalized)):
        raise NotImplementedError(
            "the O(n) evaluation is known for Softmax and Unnormalized; none is implemented "
            f"for {type(normalization).__name__}"
        )
    lq = kernel.log_features(beta, qf)
    lk = kernel.log_features(beta, kf) + log_weights[:, None]
    # shifts keep the exponentials <= 1; softmax cancels them, USA multiplies them back
    mq = jnp.max(lq, axis=1, keepdims=True)
    mk = jnp.maximum(jnp.max(lk), jnp.finfo(lk.dtype).min)
    fq, fk = jnp.exp(lq - mq), jnp.exp(lk - mk)
    values = jnp.concatenate([values, jnp.ones((kf.shape[0], 1), values.dtype)], axis=1)
    if causal:
        if qf.shape[0] != kf.shape[0]:
            raise ValueError("causal rows need as many queries as keys")
        # running sums of phi(k_j) v_j^T over j <= i: the recurrent form of the transformer
        state = jnp.cumsum(fk[:, :, None] * values[:, None, :], axis=0)
        out = jnp.einsum("ir,ire->ie", fq, state)
    else:
        out = fq @ (fk.T @ values)
    num, total = out[:, :-1], out[:, -1:]
    if isinstance(normalization, Unnormalized):
        return num * jnp.exp(mq + mk)
    return num / jnp.where(total > 0, total, 1)


def linear_attention(attention, x: Float[Array, "n d"], weights=None) -> Float[Array, "n d"]:
    r"""Self-attention $v[\mu_x](x_i)$ of an `Attention` whose kernel has features, evaluated
    in $O(n)$ by `feature_rows` (equal to `attention(x, weights)` to rounding)."""
    x = check_cloud(x, "x")
    weights = check_weights(weights, x.shape[0])
    logw = log_weights(weights, x.shape[0], jnp.result_type(x, attention.Q, attention.beta))

    def head(Q, K, V):
        return feature_rows(
            attention.kernel,
            attention.normalization,
            attention.beta,
            x @ Q.T,
            x @ K.T,
            logw,
            x @ V.T,
            causal=attention.causal,
        )

    return jnp.sum(jax.vmap(head)(attention.Q, attention.K, attention.V), axis=0)
