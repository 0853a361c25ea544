"""The vocabulary an algorithm declares its hyperparameters in: `@register_hparams("Name")`
on a function that fills an `HParamSpace`, and `inherit_hparams` for a derived algorithm.

Each hyperparameter has its own `RandomState` seeded by `seed_hash(seed, name)`, as in the
public DomainBed, so what a name gets does not depend on the order in which the declarations
run. A declaration also says what `--hparams` may put in its place: the type of its default
(an int is accepted where a float is declared) and, where not every value of that type works,
an interval (`Bounds`).

Algorithm modules import this, and domainbed.hparams_registry imports the algorithms, so the
two never import each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from domainbed.lib.misc import seed_hash

# Datasets that get DomainBed's small-image optimiser defaults (those of its MNIST datasets); a
# dataset registered with SMALL_IMAGES = True joins them (domainbed.datasets.register_dataset).
SMALL_IMAGES = {"Debug28", "RotatedMNIST", "ColoredMNIST"}

RandomFn = Callable[[np.random.RandomState], Any]


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


def declarations(algorithm: str) -> list[SpaceFn]:
    """The functions that declare `algorithm`'s own hyperparameters, in order."""
    return list(_SPACES.get(algorithm, []))
