"""ERM's and RSC's update(), re-stated for a clone of the public DomainBed.

A loss variant on this project's engine keeps its base's update(): the engine's ERM and RSC
reach the loss only through `classification_loss`. The public ERM and RSC call
F.cross_entropy inside update(), so a variant built on them needs an update() that goes
through its loss, and it cannot borrow the engine's: when a clone is on the path, the package
named `domainbed` is the clone, and this engine's `domainbed.algorithms` cannot be imported
beside it. So the two updates are written again here, operation for operation as the engine's
(test_itl_algorithms checks that both make the same steps), using only what every DomainBed
algorithm has: `featurizer`, `classifier`, `optimizer`, `predict` and `hparams`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

Minibatches = list[tuple[torch.Tensor, torch.Tensor]]


def _concat(minibatches: Minibatches) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])


def _optimizer_step(algorithm: Any, loss: torch.Tensor) -> dict[str, float]:
    algorithm.optimizer.zero_grad()
    loss.backward()
    algorithm.optimizer.step()
    return {"loss": loss.item()}


def erm_update(self: Any, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
    """ERM: the variant's loss over all training domains pooled together."""
    x, y = _concat(minibatches)
    return _optimizer_step(self, self.classification_loss(self.predict(x), y))


def _rsc_mask(classifier: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor,
              logits: torch.Tensor, y: torch.Tensor, scores: torch.Tensor,
              f_drop: float, b_drop: float) -> torch.Tensor:
    with torch.no_grad():
        keep_feature = scores < torch.quantile(scores, 1 - f_drop, dim=1, keepdim=True)
        true_prob = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
        muted_prob = F.softmax(classifier(features * keep_feature), dim=1)
        drop = true_prob - muted_prob.gather(1, y[:, None]).squeeze(1)
        keep_example = drop < torch.quantile(drop, 1 - b_drop)
        return (keep_feature | keep_example[:, None]).to(features.dtype)


def rsc_update(self: Any, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
    """RSC: the variant's loss on features muted as the engine's `rsc_mask` mutes them, scored
    by the gradient of the variant's `saliency_objective`."""
    x, y = _concat(minibatches)
    features = self.featurizer(x)
    logits = self.classifier(features)
    scores = torch.autograd.grad(self.saliency_objective(logits, y), features)[0]
    mask = _rsc_mask(self.classifier, features, logits, y, scores,
                     self.hparams["rsc_f_drop_factor"], self.hparams["rsc_b_drop_factor"])
    return _optimizer_step(self, self.classification_loss(self.classifier(features * mask), y))


# The update a variant built on the clone takes, by base name.
UPDATES: dict[str, Callable[..., dict[str, float]]] = {"ERM": erm_update, "RSC": rsc_update}
