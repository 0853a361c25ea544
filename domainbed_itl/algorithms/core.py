"""The ERM and RSC updates and the loss swap, written once for this engine and for a clone of
the public DomainBed.

This engine's ERM and RSC take their update() from here, and every loss variant (ERM_ITL,
RSC_ITL, ERM_Focal, ...) is built here by `variant_class`, on this engine's base class or on
the clone's. The public ERM and RSC call F.cross_entropy inside update(), so a variant
re-states update() with these functions, which reach the loss only through
`classification_loss` and the feature scores only through `saliency_objective`. They use
only what every DomainBed algorithm has: `featurizer`, `classifier`, `optimizer`, `predict`
and `hparams`, so the clone's networks, optimiser and checkpoints stay its own.

The module lives outside `domainbed` and imports nothing but torch: when a clone is on the
path, `domainbed` is the clone, and this engine's ERM imports it without pulling in the losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from domainbed_itl.algorithms.variants import Variant

Minibatches = list[tuple[torch.Tensor, torch.Tensor]]


def concat_minibatches(minibatches: Minibatches) -> tuple[torch.Tensor, torch.Tensor]:
    """All domains' inputs and labels as two tensors, domain by domain."""
    return torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])


def optimizer_step(algorithm: Any, loss: torch.Tensor) -> dict[str, float]:
    """One step of the algorithm's optimiser on `loss`; the loss is what gets logged."""
    algorithm.optimizer.zero_grad()
    loss.backward()
    algorithm.optimizer.step()
    return {"loss": loss.item()}


def erm_update(self, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
    """ERM: the supervised loss over all training domains pooled together."""
    x, y = concat_minibatches(minibatches)
    return optimizer_step(self, self.classification_loss(self.predict(x), y))


def rsc_mask(classifier: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor,
             logits: torch.Tensor, y: torch.Tensor, scores: torch.Tensor,
             f_drop: float, b_drop: float) -> torch.Tensor:
    """RSC's feature muting (Huang et al., ECCV 2020), as the public DomainBed does it: 0 for
    the features at or above the (1 - f_drop) quantile of each example's `scores`, but only
    in the examples whose true-class probability falls by at least the (1 - b_drop) quantile
    of the batch when those features are muted; 1 elsewhere."""
    with torch.no_grad():
        # Eq. 2-3: per example, keep the features below the top-score percentile.
        keep_feature = scores < torch.quantile(scores, 1 - f_drop, dim=1, keepdim=True)
        # Sec. 3.3: challenge only the examples whose true-class probability falls most when
        # their salient features are muted; the rest keep all features.
        true_prob = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
        muted_prob = F.softmax(classifier(features * keep_feature), dim=1)
        drop = true_prob - muted_prob.gather(1, y[:, None]).squeeze(1)
        keep_example = drop < torch.quantile(drop, 1 - b_drop)
        return (keep_feature | keep_example[:, None]).to(features.dtype)


def rsc_update(self, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
    """RSC: the supervised loss on features muted by `rsc_mask`, scored by the gradient of
    `saliency_objective` with respect to the features (Eq. 1 of the paper)."""
    x, y = concat_minibatches(minibatches)
    features = self.featurizer(x)
    logits = self.classifier(features)
    scores = torch.autograd.grad(self.saliency_objective(logits, y), features)[0]
    mask = rsc_mask(self.classifier, features, logits, y, scores,
                    self.hparams["rsc_f_drop_factor"], self.hparams["rsc_b_drop_factor"])
    return optimizer_step(self, self.classification_loss(self.classifier(features * mask), y))


def swapped_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A variant's supervised loss: the one its hyperparameters built."""
    return self.loss_fn(logits, y)


def minus_swapped_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A loss-swapped RSC scores features with minus its loss, in place of the true-class
    logit, so the loss drives both what RSC mutes and how it updates."""
    return -self.loss_fn(logits, y)


# What a variant puts on top of its base, besides the loss, by base name.
BASE_METHODS: dict[str, dict[str, Callable[..., Any]]] = {
    "ERM": {"update": erm_update},
    "RSC": {"update": rsc_update, "saliency_objective": minus_swapped_loss},
}


def variant_class(name: str, variant: Variant, base: type, module: str) -> type:
    """`variant` (the entry `name` of variants.VARIANTS) as a subclass of `base`, the ERM or
    RSC class of whichever engine is given, named as if defined in `module`."""
    choice = variant.loss

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int,
                 hparams: dict[str, Any]):
        base.__init__(self, input_shape, num_classes, num_domains, hparams)
        self.loss_fn = choice.build(hparams)

    return type(name, (base,), {
        "__init__": __init__, "classification_loss": swapped_loss,
        **BASE_METHODS[variant.base],
        "__module__": module, "__qualname__": name,
        "__doc__": f"{variant.base} trained with the {choice.suffix} loss in place of CE.",
    })
