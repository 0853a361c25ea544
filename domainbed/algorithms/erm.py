"""Empirical risk minimisation: the baseline every other algorithm is measured against."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from domainbed import networks
from domainbed.algorithms import register_algorithm
from domainbed.algorithms.base import Algorithm
from domainbed_itl.algorithms.core import Minibatches, concat_minibatches, erm_update

__all__ = ["ERM", "Minibatches", "adam", "concat_minibatches"]


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

    # The pooled supervised loss, in the one implementation the ITL variants share with a
    # clone of the public DomainBed (domainbed_itl.algorithms.core).
    update = erm_update

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)
