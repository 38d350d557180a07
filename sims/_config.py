"""Checks shared by experiment configs: each raises `ValueError` naming the parameter."""

from __future__ import annotations


def require_positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ValueError(f"{name} must be > 0; got {value}")


def require_at_least(config, name: str, low) -> None:
    value = getattr(config, name)
    if value < low:
        raise ValueError(f"{name} must be >= {low}; got {value}")


def require_one_of(config, name: str, choices) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
