"""Losses by name, so a command line or an hparams dict can pick one.

A name taken by one loss is refused to another, the rule of domainbed.lib.registry; that
module is not imported here because the losses also load beside a clone of the public
DomainBed, whose `domainbed` has no `lib.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

LOSSES: dict[str, type[nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a loss module constructible as get_loss(name, ...)."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if name in LOSSES and LOSSES[name] is not cls:
            raise ValueError(f"loss {name!r} is already registered by {LOSSES[name]!r}")
        LOSSES[name] = cls
        return cls

    return decorate


def get_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss registered as `name` (case-insensitive) with its keyword arguments."""
    key = name.lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}")
    return LOSSES[key](**kwargs)
