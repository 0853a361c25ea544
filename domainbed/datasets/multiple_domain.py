"""What every multi-domain dataset exposes to the training script."""

from __future__ import annotations

import torch

from domainbed.lib.cli import UsageError


class MultipleDomainDataset:
    """A list of per-domain datasets plus the constants the benchmark protocol reads."""

    N_STEPS = 5001
    CHECKPOINT_FREQ = 100
    N_WORKERS = 8
    ENVIRONMENTS: list[str] = []
    INPUT_SHAPE: tuple[int, ...] | None = None
    # True: the hyperparameter defaults and search ranges of DomainBed's MNIST datasets.
    SMALL_IMAGES = False

    datasets: list[torch.utils.data.Dataset]
    input_shape: tuple[int, ...]
    num_classes: int

    def __getitem__(self, index: int) -> torch.utils.data.Dataset:
        return self.datasets[index]

    def __len__(self) -> int:
        return len(self.datasets)


class DataUnavailableError(UsageError, RuntimeError):
    """Raised when a dataset's files are missing or corrupt; the message says what to do."""
