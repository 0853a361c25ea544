"""A loss family as the meta-learner sees it: a `LossFamily` descriptor of
domainbed_itl.losses.families at one order, with w as a tensor.

The loss itself is the descriptor's, so the meta-learner trains with exactly the function the
deploying algorithm (ERM_ITL, ERM_iSCE, ...) later uses. What this adds is what meta-training
needs around it: the size of w at that order, its named starting points, what identifies the
family in configs and checkpoints, and the `LearnedLoss` that hands the learned w to
deployment.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from domainbed_itl.losses.families import FAMILIES, get_family, start_names
from domainbed_itl.losses.families import LossFamily as FamilyDescriptor
from domainbed_itl.losses.learned import LearnedLoss, LearnedLossError


class LossFamily(Protocol):
    """What the meta-learner needs from a parametric loss L_w."""

    name: str

    @property
    def n_params(self) -> int: ...

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Batch-mean loss; differentiable twice in the logits and once more in w."""
        ...

    def spec(self) -> dict[str, Any]:
        """What identifies the family in configs and checkpoints."""
        ...

    def learned(self, w: torch.Tensor) -> LearnedLoss:
        """The loss at w, as meta-training hands it to deployment."""
        ...

    def preset(self, name: str, num_classes: int, generator: torch.Generator) -> torch.Tensor:
        """A named starting point (see init_presets)."""
        ...


@dataclass(frozen=True)
class MetaFamily:
    """The family called `name` at `order` (None for a family without one). Held by name, so
    runs of one family and order compare equal (they can be stacked) and a Ray worker finds
    the family in its own registry."""

    name: str
    order: int | None

    @property
    def family(self) -> FamilyDescriptor:
        return get_family(self.name)

    @property
    def n_params(self) -> int:
        return self.family.size(self.order)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.family.loss(logits, targets, w, self.order)

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"family": self.name}
        if self.family.order is not None:
            spec["order"] = self.order
        return spec

    def learned(self, w: torch.Tensor) -> LearnedLoss:
        return LearnedLoss(self.name, tuple(float(v) for v in w), self.order)

    def preset(self, name: str, num_classes: int, generator: torch.Generator) -> torch.Tensor:
        return self.family.start(name, self.order, num_classes, generator)


def family_names() -> tuple[str, ...]:
    """The families `--family` offers: every registered one."""
    return tuple(FAMILIES)


def init_presets() -> tuple[str, ...]:
    """The named starting points `--init` offers (each family says which apply to it)."""
    return start_names()


def make_family(name: str, order: int | None = 4) -> MetaFamily:
    """The family named on the command line, at `order` (ignored by a family without one);
    ValueError for an unknown family or an order meta-training does not offer."""
    family = get_family(name)
    if family.order is None:
        return MetaFamily(name, None)
    if order not in family.order.meta:
        raise ValueError(f"{name.capitalize()} order must be one of {family.order.meta}, "
                         f"got {order}")
    return MetaFamily(name, order)


def initial_w(
    family: LossFamily, init: str, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Starting w from a preset name or a JSON file (see w_from_file), checked for size and
    finiteness."""
    if init in init_presets():
        return _checked(family.preset(init, num_classes, generator), family)
    return w_from_file(family, init)


def w_from_file(family: LossFamily, init: str) -> torch.Tensor:
    """w from a JSON file: a learned_loss.json of this family (any `LearnedLoss` in its
    --hparams form) or a plain list; anything else is a ValueError saying what the file must
    hold."""
    path = Path(init)
    if not path.is_file():
        raise ValueError(f"--init {init!r} is neither {', '.join(init_presets())} nor a file")
    try:
        w = torch.tensor(_values_from_json(json.loads(path.read_text()), family),
                         dtype=torch.float32)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
        message = " ".join(str(err).split())
        raise ValueError(f"--init {init!r} holds no {family.spec()} w ({message:.200}); give a "
                         "learned_loss.json or a JSON list of numbers") from None
    return _checked(w, family)


def _checked(w: torch.Tensor, family: LossFamily) -> torch.Tensor:
    if w.shape != (family.n_params,):
        raise ValueError(f"{family.spec()} needs {family.n_params} values, got {tuple(w.shape)}")
    if not all(math.isfinite(float(v)) for v in w):
        raise ValueError(f"initial w is not finite: {w.tolist()}")
    return w.float()


def _values_from_json(obj: Any, family: LossFamily) -> list[float]:
    if isinstance(obj, list):
        return [_number(v) for v in obj]
    loss = LearnedLoss.from_hparams(obj)  # LearnedLossError is a ValueError
    if loss.family != family.name:
        raise LearnedLossError(f"it holds a {loss.describe()} loss")
    return list(loss.parameters)


def _number(value: Any) -> float:
    """A JSON number as a float; strings and booleans are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r:.50} is not a number")
    return float(value)
