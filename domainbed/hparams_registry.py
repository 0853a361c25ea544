"""Hyperparameter spaces, declared beside the algorithms that use them.

The public DomainBed keeps every space in one if-chain. Here an algorithm declares its own space
with `@register_hparams("Name")` in its own module, and a derived algorithm can start from its
parent's space with `inherit_hparams`. The values drawn are the public DomainBed's: each
hyperparameter has its own `RandomState` seeded by `seed_hash(seed, name)`, so what a name gets
does not depend on the order in which the declarations run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from domainbed.lib.misc import seed_hash

SMALL_IMAGES = ("Debug28", "RotatedMNIST", "ColoredMNIST")

RandomFn = Callable[[np.random.RandomState], Any]


class HParamSpace:
    """Collects (default, random draw) pairs for one (algorithm, dataset, seed)."""

    def __init__(self, algorithm: str, dataset: str, seed: int):
        self.algorithm = algorithm
        self.dataset = dataset
        self.seed = seed
        self.values: dict[str, tuple[Any, Any]] = {}

    @property
    def small_images(self) -> bool:
        return self.dataset in SMALL_IMAGES

    def add(self, name: str, default: Any, random_fn: RandomFn) -> None:
        if name in self.values:
            raise ValueError(f"hyperparameter {name!r} declared twice for {self.algorithm}")
        state = np.random.RandomState(seed_hash(self.seed, name))
        self.values[name] = (default, random_fn(state))

    def add_if_missing(self, name: str, default: Any, random_fn: RandomFn) -> None:
        if name not in self.values:
            self.add(name, default, random_fn)


SpaceFn = Callable[[HParamSpace], None]

_SPACES: dict[str, list[SpaceFn]] = {}


def register_hparams(*algorithms: str) -> Callable[[SpaceFn], SpaceFn]:
    """Decorator: `fn(space)` declares hyperparameters of each named algorithm."""

    def decorate(fn: SpaceFn) -> SpaceFn:
        for name in algorithms:
            _SPACES.setdefault(name, []).append(fn)
        return fn

    return decorate


def inherit_hparams(algorithm: str, parent: str) -> None:
    """Give `algorithm` every declaration of `parent` (declared so far) ahead of its own."""
    _SPACES[algorithm] = list(_SPACES.get(parent, [])) + _SPACES.get(algorithm, [])


def registered_algorithms() -> list[str]:
    return list(_SPACES)


def _common_head(space: HParamSpace) -> None:
    """Switches every algorithm has, drawn before the algorithm's own."""
    space.add("data_augmentation", True, lambda r: True)
    space.add("resnet18", False, lambda r: False)
    space.add("resnet50_augmix", True, lambda r: True)
    space.add("dinov2", False, lambda r: False)
    space.add("vit", False, lambda r: False)
    space.add("vit_attn_tune", False, lambda r: False)
    space.add("freeze_bn", False, lambda r: False)
    space.add("lars", False, lambda r: False)
    space.add("linear_steps", 500, lambda r: 500)
    space.add("resnet_dropout", 0.0, lambda r: r.choice([0.0, 0.1, 0.5]))
    space.add("vit_dropout", 0.0, lambda r: r.choice([0.0, 0.1, 0.5]))
    space.add("class_balanced", False, lambda r: False)
    space.add("nonlinear_classifier", False, lambda r: bool(r.choice([False, False])))


def _common_tail(space: HParamSpace) -> None:
    """Optimiser settings; an algorithm that declares one of these itself keeps its own."""
    if space.small_images:
        space.add_if_missing("lr", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5))
        space.add_if_missing("weight_decay", 0.0, lambda r: 0.0)
        space.add_if_missing("batch_size", 64, lambda r: int(2 ** r.uniform(3, 9)))
    else:
        space.add_if_missing("lr", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5))
        space.add_if_missing("weight_decay", 0.0, lambda r: 10 ** r.uniform(-6, -2))
        if space.dataset == "DomainNet":
            space.add_if_missing("batch_size", 32, lambda r: int(2 ** r.uniform(3, 5)))
        else:
            space.add_if_missing("batch_size", 32, lambda r: int(2 ** r.uniform(3, 5.5)))


def _hparams(algorithm: str, dataset: str, random_seed: int) -> dict[str, tuple[Any, Any]]:
    # Importing the algorithms package runs every registration, plugins included.
    import domainbed.algorithms  # noqa: F401

    if algorithm not in _SPACES and algorithm not in domainbed.algorithms.ALGORITHMS:
        raise NotImplementedError(f"Algorithm not found: {algorithm}")
    space = HParamSpace(algorithm, dataset, random_seed)
    _common_head(space)
    for declare in _SPACES.get(algorithm, []):
        declare(space)
    _common_tail(space)
    return space.values


def default_hparams(algorithm: str, dataset: str) -> dict[str, Any]:
    return {name: default for name, (default, _) in _hparams(algorithm, dataset, 0).items()}


def random_hparams(algorithm: str, dataset: str, seed: int) -> dict[str, Any]:
    return {name: drawn for name, (_, drawn) in _hparams(algorithm, dataset, seed).items()}
