"""Every registry refuses a name already held by another object, and keeps the first."""

from __future__ import annotations

import pytest

from domainbed import algorithms, command_launchers, datasets
from domainbed.algorithms.algorithm import Algorithm
from domainbed.datasets.multiple_domain import MultipleDomainDataset
from domainbed.lib.registry import DuplicateName, Registry
from domainbed_itl.losses import ITL, LOSSES, register_loss


def impostor(name: str, base: type) -> type:
    return type(name, (base,), {"__module__": __name__})


@pytest.mark.parametrize("register,name,newcomer,lookup", [
    (algorithms.register_algorithm, "ERM", impostor("ERM", Algorithm),
     algorithms.get_algorithm_class),
    (datasets.register_dataset, "Debug28", impostor("Debug28", MultipleDomainDataset),
     datasets.get_dataset_class),
    (register_loss("ce"), "ce", ITL, LOSSES.__getitem__),
    (command_launchers.register_launcher("local"), "local", lambda commands: None,
     command_launchers.REGISTRY.__getitem__),
], ids=["algorithm", "dataset", "loss", "launcher"])
def test_a_duplicate_registration_is_refused(register, name, newcomer, lookup):
    held = lookup(name)
    with pytest.raises(ValueError, match=f"{name!r} is already registered"):
        register(newcomer)
    assert lookup(name) is held
    assert register(held) is held  # the same object again is no conflict


def test_registry_is_a_mapping_whose_names_are_freed_by_deletion():
    registry: Registry[int] = Registry("thing")
    one, other = object(), object()
    registry["a"] = one
    with pytest.raises(DuplicateName, match="thing 'a' is already registered"):
        registry["a"] = other
    assert list(registry) == ["a"] and "a" in registry and registry["a"] is one
    del registry["a"]
    registry["a"] = other
    assert dict(registry) == {"a": other}
