"""The loss swap: a variant (ERM_ITL, RSC_ITL, ERM_Focal, ...) as a subclass of its base.

Every variant is built here by `variant_class`, on this engine's ERM or RSC or on a clone's.
It overrides only the base's loss hooks: `classification_loss`, and for RSC also
`saliency_objective`. On this engine that is all it needs, since ERM's and RSC's update() go
through those hooks; a clone's update() does not, so public.py passes the re-stated one
(public_updates) as an extra method.

The module imports nothing but torch and the variants table: when a clone is on the path,
`domainbed` is the clone, and the clone's side must not pull in this engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from domainbed_itl.algorithms.variants import Variant


def swapped_loss(self: Any, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A variant's supervised loss: the one its hyperparameters built."""
    return self.loss_fn(logits, y)


def minus_swapped_loss(self: Any, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A loss-swapped RSC scores features with minus its loss, in place of the true-class
    logit, so the loss drives both what RSC mutes and how it updates."""
    return -self.loss_fn(logits, y)


# The hooks a variant overrides on its base, by base name.
LOSS_HOOKS: dict[str, dict[str, Callable[..., torch.Tensor]]] = {
    "ERM": {"classification_loss": swapped_loss},
    "RSC": {"classification_loss": swapped_loss, "saliency_objective": minus_swapped_loss},
}


def variant_class(name: str, variant: Variant, base: type, module: str,
                  extra: Mapping[str, Callable[..., Any]] | None = None) -> type:
    """`variant` (the entry `name` of variants.VARIANTS) as a subclass of `base`, the ERM or
    RSC class of whichever engine is given, named as if defined in `module`; `extra` are
    further methods it needs on that engine."""
    choice = variant.loss

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int,
                 hparams: dict[str, Any]):
        base.__init__(self, input_shape, num_classes, num_domains, hparams)
        self.loss_fn = choice.build(hparams)

    return type(name, (base,), {
        "__init__": __init__, **LOSS_HOOKS[variant.base], **(extra or {}),
        "__module__": module, "__qualname__": name,
        "__doc__": f"{variant.base} trained with the {choice.suffix} loss in place of CE.",
    })
