r"""The spaces particles live on: Euclidean space and the unit sphere.

A space turns an ambient velocity into a tangent one (`tangent`), maps a point back onto the
space (`retract`), measures distances and checks membership. On the sphere
$S^{d-1} = \{x : |x| = 1\}$ (the limit of layer normalisation, Geshkovski et al. 2023) the
tangent projection is $P_x v = v - \langle x, v\rangle x = (I - x x^\top) v$.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._checks import SPHERE_TOL, check_cloud, value_check

__all__ = ["AbstractSpace", "Euclidean", "Sphere", "sphere_drift"]


class AbstractSpace(eqx.Module):
    """A manifold embedded in $\\mathbb{R}^d$ on which a cloud moves."""

    @abc.abstractmethod
    def tangent(self, x: Float[Array, "n d"], v: Float[Array, "n d"]) -> Float[Array, "n d"]:
        """Project the ambient velocity `v` onto the tangent space at each `x_i`."""

    @abc.abstractmethod
    def retract(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        """Map ambient points back onto the space (the identity on it)."""

    @abc.abstractmethod
    def distance(self, x: Float[Array, "... d"], y: Float[Array, "... d"]) -> Float[Array, "..."]:
        """Geodesic distance between corresponding points of `x` and `y`."""

    @abc.abstractmethod
    def check(self, x: Float[Array, "n d"], name: str = "x") -> Float[Array, "n d"]:
        """Return `x` if it is a valid cloud on this space, else raise `ValueError`."""


class Euclidean(AbstractSpace):
    """$\\mathbb{R}^d$: tangent vectors are unconstrained; distance is $|x - y|$."""

    def tangent(self, x, v):
        return v

    def retract(self, x):
        return x

    def distance(self, x, y):
        return jnp.linalg.norm(x - y, axis=-1)

    def check(self, x, name="x"):
        return check_cloud(x, name)


class Sphere(AbstractSpace):
    r"""The unit sphere $S^{d-1}$, with $P_x = I - x x^\top$ and geodesic distance
    $\angle(x, y) = \arccos \langle x, y \rangle$.

    `tol` is how far $|x_i|$ may be from 1 for `check` to accept a cloud.
    """

    tol: float = eqx.field(static=True, default=SPHERE_TOL)

    def tangent(self, x, v):
        # remove the radial part so that |x_i| stays 1 along the exact flow
        return v - jnp.sum(x * v, axis=-1, keepdims=True) * x

    def retract(self, x):
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    def distance(self, x, y):
        # 2 atan2(|u - v|, |u + v|) is the angle between unit u, v, accurate to rounding at
        # every angle; arccos(<u, v>) loses half the digits near 0 and near pi.
        u = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
        v = y / jnp.linalg.norm(y, axis=-1, keepdims=True)
        return 2 * jnp.arctan2(jnp.linalg.norm(u - v, axis=-1), jnp.linalg.norm(u + v, axis=-1))

    def check(self, x, name="x"):
        x = check_cloud(x, name)
        drift = jnp.max(jnp.abs(jnp.linalg.norm(x, axis=-1) - 1))
        return value_check(
            x,
            drift > self.tol,
            f"{name} must lie on the unit sphere (max | |x_i| - 1 | <= {self.tol}); "
            "normalise it first, e.g. with Sphere().retract(x)",
        )


def sphere_drift(x: Float[Array, "... n d"]) -> Float[Array, "..."]:
    """$\\max_i | |x_i| - 1 |$: how far a cloud (or each frame of a trajectory) is off the sphere."""
    return jnp.max(jnp.abs(jnp.linalg.norm(x, axis=-1) - 1), axis=-1)
