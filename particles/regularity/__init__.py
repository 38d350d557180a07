r"""Regularity of attention: local Lipschitz constants, their upper bounds, and Wasserstein
stability of the flow.

**Local Lipschitz constant.** Self-attention maps a cloud $X = (x_1, \dots, x_n)$ to the
velocities $F(X) = (v[\mu_X](x_i))_i$, a map $\mathbb{R}^{nd} \to \mathbb{R}^{nd}$. Its local
Lipschitz constant at $X$ is the spectral norm $\|DF(X)\|_2$ of the Jacobian, computed here
matrix-free by LOBPCG or power iteration on $DF^\top DF$ (one `jvp` and one `vjp` per step), so no
$nd \times nd$ matrix is formed and $n \sim 10^3$ is cheap. On the sphere the map is
$X \mapsto (P_{x_i} v[\mu_X](x_i))_i$, $P_x = I - x x^\top$, taken as a map of the ambient
$\mathbb{R}^{nd}$ (pass an `AttentionFlow` with `Sphere()`).

Castin, Ablin, Peyré (*How Smooth Is Attention?*, ICML 2024) show that on a ball of radius
$R$ the constant can grow like $\sqrt{n}$ (one token attended by all the others) and stays
bounded for i.i.d. tokens (the mean-field regime); Kim, Papamakarios, Mnih (*The Lipschitz
Constant of Self-Attention*, ICML 2021) show that dot-product attention is not globally
Lipschitz while L2 attention with tied keys $K = Q$ is, with an explicit bound that grows with
$n$.

**Bounds.** `castin_bound` (Castin et al., Theorem 3.3) implements the paper's formula in
this package's notation; `kim_bound` (Kim et al., Theorem 3.2) carries $\|W^{Q,h}\|^2$ per
head, the power forced by one token (its docstring says what of the published statement we
could check). `softmax_bound`, `l2_bound`, `unnormalized_bound` and the sphere and
Wasserstein constants are our own derivations (each proof is in its docstring); the first
two are sharper than, and never exceed, the papers' bounds. Each bound dispatches on the
kernel and normalization types and raises `NotImplementedError` naming the type where no
closed form is implemented. The tests check each bound on configurations whose constant is
known in closed form: attained (all weight on one token, coincident USA tokens, one L2 token,
two Diracs) or at an exact ratio.

**Adversarial clouds.** `adversarial_cloud` places one leader and $n - 1$ followers along
the dominant eigenvector of $\mathrm{sym}(Q^\top K)$ (for either sign of its eigenvalue),
with the logit gap `best_gap`; `worst_cloud` searches by projected gradient ascent.

**Wasserstein regularity** (Vuckovic, Baratin, Tachet des Combes, *A Mathematical Theory of
Attention*, 2020): on a compact set, $\mu \mapsto v[\mu]$ is Lipschitz from $W_1$ to the
sup norm, so two solutions of the flow separate at most like
$W_1(\mu_t, \nu_t) \le e^{L t} W_1(\mu_0, \nu_0)$. Exact $W_1$ between weighted clouds
comes from `particles.wasserstein.wasserstein(..., p=1)`.
"""

from ._adversarial import CloudSearch as CloudSearch
from ._adversarial import adversarial_cloud as adversarial_cloud
from ._adversarial import best_gap as best_gap
from ._adversarial import worst_cloud as worst_cloud
from ._bounds import castin_bound as castin_bound
from ._bounds import growth_rate_bound as growth_rate_bound
from ._bounds import kim_bound as kim_bound
from ._bounds import l2_bound as l2_bound
from ._bounds import lambert_w0 as lambert_w0
from ._bounds import lipschitz_bound as lipschitz_bound
from ._bounds import measure_lipschitz_bound as measure_lipschitz_bound
from ._bounds import softmax_bound as softmax_bound
from ._bounds import unnormalized_bound as unnormalized_bound
from ._jacobian import METHODS as METHODS
from ._jacobian import LipschitzEstimate as LipschitzEstimate
from ._jacobian import Model as Model
from ._jacobian import jacobian as jacobian
from ._jacobian import lipschitz as lipschitz
from ._jacobian import lipschitz_dense as lipschitz_dense
from ._jacobian import velocity_map as velocity_map
from ._misspecified import MISSPECIFICATIONS as MISSPECIFICATIONS
from ._misspecified import field_gap as field_gap
from ._misspecified import misspecify as misspecify
from ._misspecified import separation_rate as separation_rate

__all__ = [
    "CloudSearch",
    "LipschitzEstimate",
    "METHODS",
    "MISSPECIFICATIONS",
    "Model",
    "adversarial_cloud",
    "best_gap",
    "castin_bound",
    "field_gap",
    "growth_rate_bound",
    "jacobian",
    "kim_bound",
    "l2_bound",
    "lambert_w0",
    "lipschitz",
    "lipschitz_bound",
    "lipschitz_dense",
    "measure_lipschitz_bound",
    "misspecify",
    "separation_rate",
    "softmax_bound",
    "unnormalized_bound",
    "velocity_map",
    "worst_cloud",
]
