"""Input validation shared by the public entry points.

Two tiers, as in diffrax: structure (shapes, dtypes, option names) is checked at trace
time with a `ValueError`; values (NaN, signs, sums) are checked eagerly when the array is
concrete, and through `eqx.error_if` when it is traced, so the check survives `jit`.
"""

from __future__ import annotations

from collections.abc import Iterable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

# Tolerance for "weights sum to one" and "the cloud lies on the sphere": loose enough for
# float32 inputs built by the user, tight enough to catch a forgotten normalisation.
SUM_TOL = 1e-4
SPHERE_TOL = 1e-4


def is_concrete(x) -> bool:
    """True when `x` holds values now (not a tracer under jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def value_check(x, bad, message: str):
    """Raise `ValueError(message)` if `bad` holds, eagerly or through `eqx.error_if`.

    `bad` is a boolean scalar computed from `x`. Returns `x` (possibly wrapped so that the
    check runs under `jit`).
    """
    if is_concrete(bad):
        if bool(np.asarray(bad)):
            raise ValueError(message)
        return x
    return eqx.error_if(x, bad, message)


def check_choice(value: str, choices: Iterable[str], name: str) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_cloud(x, name: str = "x"):
    """A cloud is a finite float array of shape (n, d) with n >= 1, d >= 1."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array of shape (n, d); got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d); got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have n >= 1 tokens and d >= 1; got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array; got dtype {x.dtype}")
    return value_check(x, ~jnp.all(jnp.isfinite(x)), f"{name} contains NaN or inf")


def check_weights(weights, n: int, name: str = "weights"):
    """Weights: shape (n,), nonnegative, summing to one. `None` means uniform."""
    if weights is None:
        return None
    if not hasattr(weights, "shape"):
        weights = jnp.asarray(weights)
    if weights.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the cloud; got {weights.shape}")
    bad_sign = jnp.any(weights < 0) | ~jnp.all(jnp.isfinite(weights))
    weights = value_check(weights, bad_sign, f"{name} must be finite and nonnegative")
    total = jnp.sum(weights)
    return value_check(
        weights,
        jnp.abs(total - 1) > SUM_TOL,
        f"{name} must sum to 1 (a probability vector); got sum {total}"
        if is_concrete(total)
        else f"{name} must sum to 1 (a probability vector)",
    )


def check_positive(value, name: str):
    value = jnp.asarray(value)
    if value.ndim != 0:
        raise ValueError(f"{name} must be a scalar; got shape {value.shape}")
    return value_check(value, ~(value > 0), f"{name} must be > 0; got {_show(value)}")


def check_matrix(a, shape: tuple[int | None, int | None], name: str):
    a = jnp.asarray(a)
    if a.ndim != 2 or any(s is not None and s != t for s, t in zip(shape, a.shape, strict=False)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}; got {a.shape}")
    return a


def _show(value) -> str:
    return str(np.asarray(value)) if is_concrete(value) else "a traced value"


def check_supported(value, types: tuple[type, ...], name: str, what: str):
    """Raise `NotImplementedError` unless `value` is an instance of one of `types`: a closed
    form `what` exists only for those. A non-module value (a string, say) is a `TypeError`."""
    if not isinstance(value, eqx.Module):
        raise TypeError(f"{name} must be an object such as {types[0].__name__}(); got {value!r}")
    if not isinstance(value, types):
        raise NotImplementedError(
            f"{what} is known for {', '.join(t.__name__ for t in types)}; none is implemented "
            f"for {type(value).__name__}"
        )
    return value
