"""The contract every algorithm meets; the training loop relies on nothing more."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


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

    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]],
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
        """One optimisation step; returns scalars to log (at least 'loss')."""
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of inputs."""
        raise NotImplementedError

    def classification_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The supervised loss; a subclass swaps it (ERM_ITL, RSC_ITL) without copying update()."""
        return F.cross_entropy(logits, y)
