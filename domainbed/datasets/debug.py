"""Random-noise datasets for smoke tests: the shapes of real benchmarks, none of their cost."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from domainbed.datasets import register_dataset
from domainbed.datasets.multiple_domain import MultipleDomainDataset


class _Noise(MultipleDomainDataset):
    """Three environments of 16 Gaussian images with random binary labels.

    Drawn from the global torch generator, as the public DomainBed does, so a seeded run sees the
    same noise.
    """

    ENVIRONMENTS = ["0", "1", "2"]
    _SAMPLES_PER_ENV = 16

    def __init__(self, root: str | None, test_envs: list[int], hparams: dict) -> None:
        super().__init__()
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = 2
        self.datasets = [
            TensorDataset(
                torch.randn(self._SAMPLES_PER_ENV, *self.INPUT_SHAPE),
                torch.randint(0, self.num_classes, (self._SAMPLES_PER_ENV,)),
            )
            for _ in self.ENVIRONMENTS
        ]


@register_dataset
class Debug28(_Noise):
    INPUT_SHAPE = (3, 28, 28)


@register_dataset
class Debug224(_Noise):
    INPUT_SHAPE = (3, 224, 224)
