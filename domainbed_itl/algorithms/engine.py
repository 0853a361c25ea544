"""ERM_ITL, RSC_ITL and ERM with each baseline loss, registered in this project's engine.

Every one is its base algorithm with `classification_loss` overridden, built by `with_loss`:
no update() is copied. A loss-swapped RSC also scores features with its loss (the gradient
of minus the loss, in place of the true-class logit), so the loss drives both what RSC mutes
and how it updates.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from domainbed.algorithms import get_algorithm_class, register_algorithm
from domainbed.algorithms.base import Algorithm
from domainbed.hparams_registry import Bounds, HParamSpace, inherit_hparams, register_hparams
from domainbed_itl.algorithms.variants import LOSS_CHOICES, PAIRINGS, fresh, variant_name


def with_loss(base_cls: type[Algorithm], suffix: str) -> type[Algorithm]:
    """Make, register and return `<Base>_<suffix>`: `base_cls` trained with the loss
    LOSS_CHOICES[suffix], whose hyperparameters join the base algorithm's."""
    choice = LOSS_CHOICES[suffix]
    name = variant_name(base_cls.__name__, suffix)

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int,
                 hparams: dict[str, Any]):
        base_cls.__init__(self, input_shape, num_classes, num_domains, hparams)
        self.loss_fn = choice.build(hparams)

    def classification_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits, y)

    body: dict[str, Any] = {
        "__init__": __init__, "classification_loss": classification_loss,
        "__module__": __name__, "__qualname__": name,
        "__doc__": f"{base_cls.__name__} trained with the {suffix} loss in place of CE.",
    }
    if hasattr(base_cls, "saliency_objective"):
        def saliency_objective(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return -self.loss_fn(logits, y)

        body["saliency_objective"] = saliency_objective

    cls = type(name, (base_cls,), body)

    @register_hparams(name)
    def _space(space: HParamSpace) -> None:
        for hp in choice.hparams:
            bounds = Bounds(hp.low, hp.high, hp.low_open) if hp.bounded else None
            space.add(hp.name, fresh(hp.default), hp.draw, bounds)

    inherit_hparams(name, base_cls.__name__)
    setattr(sys.modules[__name__], name, cls)  # picklable by name
    return register_algorithm(cls)


for _base, _suffix in PAIRINGS:
    with_loss(get_algorithm_class(_base), _suffix)
