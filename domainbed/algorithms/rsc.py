"""Representation Self-Challenging (Huang et al., ECCV 2020).

Each step mutes, for part of the batch, the features whose gradient most raises the true-class
score, so the classifier cannot lean on a few dominant features.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from domainbed.algorithms import register_algorithm
from domainbed.algorithms.erm import ERM, Minibatches, concat_minibatches
from domainbed.hparams_registry import PROBABILITY, HParamSpace, register_hparams


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

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int,
                 hparams: dict[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        # Quantiles at which the feature and batch masks start dropping.
        self.feature_quantile = 1 - hparams["rsc_f_drop_factor"]
        self.batch_quantile = 1 - hparams["rsc_b_drop_factor"]

    def saliency_objective(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar whose gradient w.r.t. the features scores them (Eq. 1 of the paper)."""
        return logits.gather(1, y[:, None]).sum()

    def update(self, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
        x, y = concat_minibatches(minibatches)
        features = self.featurizer(x)
        logits = self.classifier(features)
        grads = torch.autograd.grad(self.saliency_objective(logits, y), features)[0]

        with torch.no_grad():
            # Eq. 2-3: per example, keep the features below the top-gradient percentile.
            keep_feature = grads < torch.quantile(grads, self.feature_quantile, dim=1,
                                                  keepdim=True)
            # Sec. 3.3: challenge only the examples whose true-class probability falls most
            # when their salient features are muted; the rest keep all features.
            true_prob = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
            muted_prob = F.softmax(self.classifier(features * keep_feature), dim=1)
            drop = true_prob - muted_prob.gather(1, y[:, None]).squeeze(1)
            keep_example = drop < torch.quantile(drop, self.batch_quantile)
            mask = (keep_feature | keep_example[:, None]).to(features.dtype)

        loss = self.classification_loss(self.classifier(features * mask), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}
