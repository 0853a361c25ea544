"""Empirical risk minimisation: the baseline every other algorithm is measured against."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from domainbed import networks
from domainbed.algorithms import register_algorithm
from domainbed.algorithms.algorithm import Algorithm, Minibatches, concat_minibatches

__all__ = ["ERM", "adam"]


def adam(params: Iterable[nn.Parameter], hparams: dict[str, Any]) -> torch.optim.Adam:
    """The optimiser the public DomainBed gives most algorithms, so step sizes mean the same."""
    return torch.optim.Adam(params, lr=hparams["lr"], weight_decay=hparams["weight_decay"])


@register_algorithm
class ERM(Algorithm):
    """Minimise the supervised loss over all training domains pooled together."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int,
                 hparams: dict[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.featurizer = networks.Featurizer(input_shape, hparams)
        self.classifier = networks.Classifier(
            self.featurizer.n_outputs, num_classes, hparams["nonlinear_classifier"])
        # Both names stay registered (as upstream) so checkpoints carry the same keys.
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.optimizer = adam(self.network.parameters(), hparams)

    def update(self, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
        """The supervised loss (`classification_loss`) over all domains pooled together."""
        x, y = concat_minibatches(minibatches)
        return self.optimizer_step(self.classification_loss(self.predict(x), y))

    def optimizer_step(self, loss: torch.Tensor) -> dict[str, float]:
        """One step of the optimiser on `loss`; the loss is what gets logged."""
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)
