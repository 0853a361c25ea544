"""The contract every algorithm meets; the training loop relies on nothing more.

Also the two things every update() shares: the type of its `minibatches` argument and their
pooling into one batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

Minibatches = list[tuple[torch.Tensor, torch.Tensor]]


def concat_minibatches(minibatches: Minibatches) -> tuple[torch.Tensor, torch.Tensor]:
    """All domains' inputs and labels as two tensors, domain by domain."""
    return torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])


class Algorithm(torch.nn.Module):
    """A domain generalisation method: trains on minibatches from several domains, then predicts.

    `minibatches` is a list of (x, y) pairs, one per training domain; `unlabeled` is a list of
    x tensors from the test domains, used only by domain adaptation tasks.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int,
                 hparams: dict[str, Any]):
        super().__init__()
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.num_domains = num_domains
        self.hparams = hparams

    def update(self, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
        """One optimisation step; returns scalars to log (at least 'loss')."""
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of inputs."""
        raise NotImplementedError

    def classification_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The supervised loss every update() goes through, so a loss variant (ERM_ITL, RSC_ITL)
        overrides this one method and keeps its base's update()."""
        return F.cross_entropy(logits, y)
