"""One explicit registry: method name -> class.  Registering a taken name raises."""
from __future__ import annotations

from typing import Any

from .errors import ConfigError

REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Add a ZOMethod subclass under ``cls.name`` (a clash is an error)."""
    if cls.name in REGISTRY:
        raise ValueError(f"method name {cls.name!r} is already registered by {REGISTRY[cls.name].__qualname__}")
    REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return sorted(REGISTRY)


def get_method(name: str) -> type:
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(method_names())}")
    return REGISTRY[name]


def make(name: str, **hyper: Any):
    """Build a registered method from validated hyperparameters."""
    return get_method(name)(**hyper)
