"""Model builders by name (``pspnet50``, ``psanet101``, ...), so training, export and tests can look a
model up by string and run over every registered one.

A builder is a function taking keyword arguments only and returning an ``nn.Module``.
The registry knows nothing of the model families: each family module registers its builders with
``@register_model`` when it is imported, and ``training/models/__init__.py`` imports them all
(as torchvision's ``models/_api.py`` and timm do), so importing anything under ``training.models``
fills the registry.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["get_model_builder", "list_models", "register_model"]

ModelBuilder = Callable[..., nn.Module]

_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``builder`` under ``name``; a second builder for the same name is an error."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"model name {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    """Names of all registered models, sorted (``psanet101``, ..., ``pspnet50``)."""
    return sorted(_BUILDERS)


def get_model_builder(name: str) -> ModelBuilder:
    """The builder registered under ``name``; ValueError listing the choices when there is none."""
    try:
        return _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(_BUILDERS))}") from None
