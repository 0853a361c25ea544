"""Representation Self-Challenging (Huang et al., ECCV 2020).

Each step mutes, for part of the batch, the features whose gradient most raises the true-class
score, so the classifier cannot lean on a few dominant features.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from domainbed.algorithms import register_algorithm
from domainbed.algorithms.algorithm import Minibatches, concat_minibatches
from domainbed.algorithms.erm import ERM
from domainbed.lib.hparam_space import PROBABILITY, HParamSpace, register_hparams


@register_hparams("RSC")
def _rsc_space(space: HParamSpace) -> None:
    space.add("rsc_f_drop_factor", 1 / 3, lambda r: r.uniform(0, 0.5), PROBABILITY)
    space.add("rsc_b_drop_factor", 1 / 3, lambda r: r.uniform(0, 0.5), PROBABILITY)


@register_algorithm
class RSC(ERM):
    """ERM whose final loss sees features with their most salient units zeroed.

    Feature saliency is the gradient of `saliency_objective` (the true-class logits, as in the
    paper and the public DomainBed); the final update uses `classification_loss`, so a subclass
    that swaps the loss changes the update, and may also override `saliency_objective`.
    """

    def saliency_objective(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar whose gradient w.r.t. the features scores them (Eq. 1 of the paper)."""
        return logits.gather(1, y[:, None]).sum()

    def update(self, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
        """The supervised loss on features muted by `rsc_mask`, scored by the gradient of
        `saliency_objective` with respect to the features (Eq. 1 of the paper)."""
        x, y = concat_minibatches(minibatches)
        features = self.featurizer(x)
        logits = self.classifier(features)
        scores = torch.autograd.grad(self.saliency_objective(logits, y), features)[0]
        mask = rsc_mask(self.classifier, features, logits, y, scores,
                        self.hparams["rsc_f_drop_factor"], self.hparams["rsc_b_drop_factor"])
        return self.optimizer_step(
            self.classification_loss(self.classifier(features * mask), y))


def rsc_mask(classifier: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor,
             logits: torch.Tensor, y: torch.Tensor, scores: torch.Tensor,
             f_drop: float, b_drop: float) -> torch.Tensor:
    """RSC's feature muting, as the public DomainBed does it: 0 for the features at or above
    the (1 - f_drop) quantile of each example's `scores`, but only in the examples whose
    true-class probability falls by at least the (1 - b_drop) quantile of the batch when those
    features are muted; 1 elsewhere."""
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
