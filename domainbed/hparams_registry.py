"""Hyperparameter spaces: what `default_hparams` and `random_hparams` return for an
(algorithm, dataset), as the public DomainBed's functions of the same names do.

The public DomainBed keeps every space in one if-chain. Here an algorithm declares its own space
beside its code (domainbed.lib.hparam_space); this module adds the switches and optimiser
settings every algorithm shares. `validate_overrides` checks a whole `--hparams` object against
the space before a run writes anything, so a typo or an impossible value costs one line, not a
crash hours later or, worse, a run that silently trained with the default.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from domainbed import algorithms
from domainbed.lib.cli import UsageError
from domainbed.lib.hparam_space import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    SMALL_IMAGES,
    Bounds,
    HParamSpace,
    HParamSpec,
    declarations,
    inherit_hparams,
    register_hparams,
)

__all__ = [
    "AT_LEAST_ONE", "NON_NEGATIVE", "POSITIVE", "PROBABILITY", "SMALL_IMAGES", "Bounds",
    "HParamSpace", "HParamSpec", "InvalidHParam", "default_hparams", "hparam_specs",
    "inherit_hparams", "random_hparams", "register_hparams", "validate_overrides",
]


class InvalidHParam(UsageError, ValueError):
    """An override that the algorithm's space does not allow; the message names the key."""


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
    space.add("linear_steps", 500, lambda r: 500, NON_NEGATIVE)
    space.add("resnet_dropout", 0.0, lambda r: r.choice([0.0, 0.1, 0.5]), PROBABILITY)
    space.add("vit_dropout", 0.0, lambda r: r.choice([0.0, 0.1, 0.5]), PROBABILITY)
    space.add("class_balanced", False, lambda r: False)
    space.add("nonlinear_classifier", False, lambda r: bool(r.choice([False, False])))
    # Not a public hyperparameter: false starts a ResNet from random weights (networks.ResNet).
    space.add_optional("pretrained", True)


def _common_tail(space: HParamSpace) -> None:
    """Optimiser settings; an algorithm that declares one of these itself keeps its own."""
    add = space.add_if_missing
    if space.small_images:
        add("lr", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5), POSITIVE)
        add("weight_decay", 0.0, lambda r: 0.0, NON_NEGATIVE)
        add("batch_size", 64, lambda r: int(2 ** r.uniform(3, 9)), AT_LEAST_ONE)
    else:
        add("lr", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5), POSITIVE)
        add("weight_decay", 0.0, lambda r: 10 ** r.uniform(-6, -2), NON_NEGATIVE)
        if space.dataset == "DomainNet":
            add("batch_size", 32, lambda r: int(2 ** r.uniform(3, 5)), AT_LEAST_ONE)
        else:
            add("batch_size", 32, lambda r: int(2 ** r.uniform(3, 5.5)), AT_LEAST_ONE)


def _space(algorithm: str, dataset: str, random_seed: int) -> HParamSpace:
    own = declarations(algorithm)
    if not own and algorithm not in algorithms.ALGORITHMS:
        raise NotImplementedError(f"Algorithm not found: {algorithm}")
    space = HParamSpace(algorithm, dataset, random_seed)
    _common_head(space)
    for declare in own:
        declare(space)
    _common_tail(space)
    return space


def _hparams(algorithm: str, dataset: str, random_seed: int) -> dict[str, tuple[Any, Any]]:
    return _space(algorithm, dataset, random_seed).values


def default_hparams(algorithm: str, dataset: str) -> dict[str, Any]:
    return {name: default for name, (default, _) in _hparams(algorithm, dataset, 0).items()}


def random_hparams(algorithm: str, dataset: str, seed: int) -> dict[str, Any]:
    return {name: drawn for name, (_, drawn) in _hparams(algorithm, dataset, seed).items()}


def hparam_specs(algorithm: str, dataset: str) -> dict[str, HParamSpec]:
    """What each hyperparameter of `algorithm` on `dataset` accepts as an override."""
    return _space(algorithm, dataset, 0).specs


def validate_overrides(algorithm: str, dataset: str, overrides: Mapping[str, Any]) -> None:
    """Raise InvalidHParam, naming the first offending key, unless every override is a
    hyperparameter of `algorithm` on `dataset` with a value of its declared type and range."""
    specs = hparam_specs(algorithm, dataset)
    for name, value in overrides.items():
        spec = specs.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(specs), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "its hyperparameters are: " + \
                ", ".join(sorted(specs))
            raise InvalidHParam(f"unknown hyperparameter {name!r} for {algorithm} ({hint})")
        problem = spec.problem(value)
        if problem is not None:
            raise InvalidHParam(problem)
