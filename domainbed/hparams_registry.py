"""Hyperparameter spaces, declared beside the algorithms that use them.

The public DomainBed keeps every space in one if-chain. Here an algorithm declares its own space
with `@register_hparams("Name")` in its own module, and a derived algorithm can start from its
parent's space with `inherit_hparams`. The values drawn are the public DomainBed's: each
hyperparameter has its own `RandomState` seeded by `seed_hash(seed, name)`, so what a name gets
does not depend on the order in which the declarations run.

A declaration also says what a user may put in its place with `--hparams`: the type of its
default (an int is accepted where a float is declared) and, where not every value of that type
works, an interval (`Bounds`). `validate_overrides` checks a whole `--hparams` object against
the space before a run writes anything, so a typo or an impossible value costs one line, not a
crash hours later or, worse, a run that silently trained with the default.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from domainbed.lib.misc import seed_hash

SMALL_IMAGES = ("Debug28", "RotatedMNIST", "ColoredMNIST")

RandomFn = Callable[[np.random.RandomState], Any]


class InvalidHParam(ValueError):
    """An override that the algorithm's space does not allow; the message names the key."""


@dataclass(frozen=True)
class Bounds:
    """The interval a numeric hyperparameter must lie in; an open end excludes its value."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low == -math.inf:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return (f"in {'(' if self.low_open else '['}{self.low:g}, "
                f"{self.high:g}{')' if self.high_open else ']'}")


POSITIVE = Bounds(low=0.0, low_open=True)
NON_NEGATIVE = Bounds(low=0.0)
AT_LEAST_ONE = Bounds(low=1.0)
PROBABILITY = Bounds(0.0, 1.0)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool | np.bool_)


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not _is_bool(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not _is_bool(value) and math.isfinite(value)


# Each kind of default: (how to recognise a value of that kind, its name, its plural).
_KINDS: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "bool": (_is_bool, "true or false", "booleans"),
    "int": (_is_int, "an integer", "integers"),
    "float": (_is_number, "a finite number", "finite numbers"),
    "str": (lambda value: isinstance(value, str), "a string", "strings"),
    "list": (lambda value: isinstance(value, list | tuple), "a list", "lists"),
}


def _kind_of(value: Any) -> str:
    if _is_bool(value):
        return "bool"
    if _is_int(value):
        return "int"
    if isinstance(value, Real):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list | tuple):
        return "list"
    raise TypeError(f"cannot tell the type of a hyperparameter from its default {value!r}")


@dataclass(frozen=True)
class HParamSpec:
    """What an override of one hyperparameter must be: the kind of its default (for a list,
    also the kind of its items) and, for numbers, an interval."""

    name: str
    kind: str
    item_kind: str | None = None
    bounds: Bounds | None = None

    @classmethod
    def from_default(cls, name: str, default: Any, bounds: Bounds | None = None) -> HParamSpec:
        kind = _kind_of(default)
        item_kind = None
        if kind == "list" and default:
            item_kinds = {_kind_of(item) for item in default}
            item_kind = "float" if item_kinds <= {"int", "float"} else item_kinds.pop()
        if bounds is not None and kind not in ("int", "float"):
            raise ValueError(f"hyperparameter {name!r}: bounds apply to numbers only")
        return cls(name, kind, item_kind, bounds)

    def describe(self) -> str:
        text = _KINDS[self.kind][1]
        if self.item_kind is not None:
            text += f" of {_KINDS[self.item_kind][2]}"
        if self.bounds is not None:
            text += f" {self.bounds}"
        return text

    def problem(self, value: Any) -> str | None:
        """Why `value` cannot stand for this hyperparameter, or None if it can."""
        accepts = _KINDS[self.kind][0]
        fits = accepts(value) and (self.bounds is None or value in self.bounds)
        if fits and self.item_kind is not None:
            fits = all(_KINDS[self.item_kind][0](item) for item in value)
        if fits:
            return None
        return f"hyperparameter {self.name!r} must be {self.describe()}, got {value!r}"


class HParamSpace:
    """Collects (default, random draw) pairs for one (algorithm, dataset, seed), and what
    each hyperparameter accepts."""

    def __init__(self, algorithm: str, dataset: str, seed: int):
        self.algorithm = algorithm
        self.dataset = dataset
        self.seed = seed
        self.values: dict[str, tuple[Any, Any]] = {}
        self.specs: dict[str, HParamSpec] = {}

    @property
    def small_images(self) -> bool:
        return self.dataset in SMALL_IMAGES

    def add(self, name: str, default: Any, random_fn: RandomFn,
            bounds: Bounds | None = None) -> None:
        """Declare `name`; an override must have the type of `default` and lie in `bounds`."""
        self._declare(name, default, bounds)
        state = np.random.RandomState(seed_hash(self.seed, name))
        self.values[name] = (default, random_fn(state))

    def add_if_missing(self, name: str, default: Any, random_fn: RandomFn,
                       bounds: Bounds | None = None) -> None:
        if name not in self.specs:
            self.add(name, default, random_fn, bounds)

    def add_optional(self, name: str, default: Any, bounds: Bounds | None = None) -> None:
        """Accept `name` as an override without putting it in the default or drawn values:
        the code reading it falls back to `default`, and the values stay the public ones."""
        self._declare(name, default, bounds)

    def _declare(self, name: str, default: Any, bounds: Bounds | None) -> None:
        if name in self.specs:
            raise ValueError(f"hyperparameter {name!r} declared twice for {self.algorithm}")
        spec = HParamSpec.from_default(name, default, bounds)
        broken = spec.problem(default)
        if broken is not None:
            raise ValueError(f"{self.algorithm}: the default breaks its own rule: {broken}")
        self.specs[name] = spec


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
    # Importing the algorithms package runs every registration, plugins included.
    import domainbed.algorithms  # noqa: F401

    if algorithm not in _SPACES and algorithm not in domainbed.algorithms.ALGORITHMS:
        raise NotImplementedError(f"Algorithm not found: {algorithm}")
    space = HParamSpace(algorithm, dataset, random_seed)
    _common_head(space)
    for declare in _SPACES.get(algorithm, []):
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
