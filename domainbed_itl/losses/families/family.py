"""What a learnable loss family is: one frozen descriptor that every part of the project reads.

A family's `--hparams` keys, the size of its parameter vector w, its order (if its size depends
on one), the algorithms that deploy it, how to build it as an nn.Module or as a functional loss
for meta-learning, and its named starting points all live in one `LossFamily`, so the learned
loss file, the meta-learner's `--family`, the ERM_<loss> algorithms and their hyperparameter
spaces cannot disagree about a family. Every family checks w and its order here, with the
checks of domainbed_itl.losses.checks.

This module imports nothing from `domainbed`: the losses also load beside a clone of the public
DomainBed, whose `domainbed` package shadows ours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from domainbed_itl.losses.checks import LearnedLossError, check_order, finite_numbers

Draw = Callable[[np.random.RandomState], Any]
# (order, number of classes, generator) -> a starting w for meta-training.
Start = Callable[[int | None, int, torch.Generator], torch.Tensor]


def fresh(value: Any) -> Any:
    """A new list for sequence values, so no two hparams dicts share one."""
    return list(value) if isinstance(value, list | tuple) else value


def fixed(value: Any) -> Draw:
    """The draw of a hyperparameter that sweeps do not search: always its default."""
    return lambda r: fresh(value)


@dataclass(frozen=True)
class HParam:
    """One loss hyperparameter; an override must have its default's type and lie between
    `low` and `high` (inclusive, but `low` itself is excluded when `low_open`)."""

    name: str
    default: Any
    draw: Draw
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False

    @property
    def bounded(self) -> bool:
        return (self.low, self.high) != (-math.inf, math.inf)


@dataclass(frozen=True)
class Order:
    """An integer that sets a family's size (the Taylor order): its `--hparams` key, the value
    a loss has when the key is absent, the least valid value, and the orders meta-training
    offers (those whose starting points have been checked)."""

    key: str
    default: int
    minimum: int
    meta: tuple[int, ...]


@dataclass(frozen=True)
class LossFamily:
    """One learnable loss family.

    `keys` hold w in `--hparams`: one key holds all of w as a list, several keys hold one
    number each. `default` is the w that `--hparams` deploys when it gives none. The algorithms
    `<base>_<suffix>` for each of `bases` train with it; the first deploys a learned loss.
    `loss(logits, targets, w, order)` is the batch-mean loss, differentiable in the logits
    and in w (the meta-learner's view); `module(parameters, order, reduction)` the same loss
    as an nn.Module (the deployed view). `starts` names meta-training's starting points.
    `table_name` is what the paper's tables call a loss learned in this family (default: the
    family's name); `label_offset` says its value at a perfect prediction depends on the label,
    so plots normalise it to start at zero.
    """

    name: str
    suffix: str
    bases: tuple[str, ...]
    keys: tuple[str, ...]
    default: tuple[float, ...]
    size: Callable[[int | None], int]
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int | None], torch.Tensor]
    module: Callable[[tuple[float, ...], int | None, str], nn.Module]
    starts: Mapping[str, Start]
    order: Order | None = None
    table_name: str = ""
    label_offset: bool = False

    @property
    def display_name(self) -> str:
        return self.table_name or self.name

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(f"{base}_{self.suffix}" for base in self.bases)

    @property
    def algorithm(self) -> str:
        """The algorithm that deploys a learned member of this family."""
        return self.algorithms[0]

    @property
    def hparam_keys(self) -> frozenset[str]:
        return frozenset(self.keys) | ({self.order.key} if self.order else set())

    @property
    def hparams(self) -> tuple[HParam, ...]:
        """The family's entries in an algorithm's hyperparameter space: w at its default, then
        the order; learned, so not searched by sweeps."""
        order = self.order
        values = [list(self.default)] if len(self.keys) == 1 else list(self.default)
        spec = [HParam(key, value, fixed(value))
                for key, value in zip(self.keys, values, strict=True)]
        if order is not None:
            spec.append(HParam(order.key, order.default, fixed(order.default), low=order.minimum))
        return tuple(spec)

    def check_order(self, order: Any) -> int | None:
        """The order of a loss of this family (the default for None); LearnedLossError for an
        order it cannot have."""
        spec = self.order
        if spec is None:
            if order is not None:
                raise LearnedLossError(f"the {self.name} family has no order, got {order!r}")
            return None
        if order is None:
            return spec.default
        return check_order(order, spec.minimum, spec.key)

    def check(self, parameters: Sequence[Any], order: int | None) -> tuple[float, ...]:
        """w as floats, checked for type, finiteness and the size its order gives."""
        values = finite_numbers(list(parameters), self.name.capitalize())
        need = self.size(order)
        if len(values) != need:
            what = self.name if order is None else f"{self.name} order-{order}"
            raise LearnedLossError(f"a {what} loss needs {need} parameters, got {len(values)}")
        return values

    def to_hparams(self, parameters: Sequence[float], order: int | None) -> dict[str, Any]:
        """The `--hparams` object of the member (parameters, order); the order is written only
        where it differs from the default."""
        if len(self.keys) == 1:
            out: dict[str, Any] = {self.keys[0]: list(parameters)}
        else:
            out = dict(zip(self.keys, parameters, strict=True))
        if self.order is not None and order != self.order.default:
            out[self.order.key] = order
        return out

    def parse(self, obj: Mapping[str, Any]) -> tuple[int | None, tuple[float, ...]]:
        """(order, w) from an `--hparams` object that holds only this family's keys."""
        if self.order is not None and self.order.key in obj:
            order = check_order(obj[self.order.key], self.order.minimum, self.order.key)
        else:
            order = self.check_order(None)
        need = self.size(order)
        if len(self.keys) == 1:
            key = self.keys[0]
            values = obj[key]
            if not isinstance(values, list | tuple) or len(values) != need:
                got = f"{len(values)} values" if isinstance(values, list | tuple) else repr(values)
                at = f" for {self.order.key} {order}" if self.order else ""
                raise LearnedLossError(f"{key} must be a list of {need} numbers{at}, got {got}")
        else:
            missing = [k for k in self.keys if k not in obj]
            if missing:
                raise LearnedLossError(f"the {self.name} family needs {' and '.join(self.keys)}; "
                                       f"{missing[0]} is missing")
            values = [obj[k] for k in self.keys]
        return order, self.check(values, order)

    def start(self, name: str, order: int | None, num_classes: int,
              generator: torch.Generator) -> torch.Tensor:
        """Meta-training's starting w called `name`."""
        if name not in self.starts:
            raise ValueError(f"--init {name!r} does not apply to {self.name}; use "
                             f"{', '.join(self.starts)} or a file")
        return self.starts[name](order, num_classes, generator)
