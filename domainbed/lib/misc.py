"""Small helpers whose exact behaviour other tools depend on.

`seed_hash` and `split_dataset` reproduce the public DomainBed's seeding rules bit for bit: the
in/out splits and random hyperparameters of a sweep are only comparable with published ones if
they are drawn the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch


def seed_hash(*args: object) -> int:
    """An integer seed in [0, 2**31) derived from the repr of `args` through MD5."""
    digest = hashlib.md5(str(args).encode("utf-8")).hexdigest()
    return int(digest, 16) % (2**31)


class _SplitDataset(torch.utils.data.Dataset):
    """A view of `underlying_dataset` restricted to `keys`, in that order."""

    def __init__(self, underlying_dataset: torch.utils.data.Dataset, keys: Sequence[int]):
        super().__init__()
        self.underlying_dataset = underlying_dataset
        self.keys = list(keys)

    def __getitem__(self, key: int):
        return self.underlying_dataset[self.keys[key]]

    def __len__(self) -> int:
        return len(self.keys)


def split_dataset(dataset: torch.utils.data.Dataset, n: int, seed: int = 0):
    """Split into (n items, the rest) after a NumPy shuffle of the indices seeded by `seed`."""
    if n > len(dataset):
        raise ValueError(f"cannot take {n} items from a dataset of {len(dataset)}")
    keys = np.arange(len(dataset)).tolist()
    np.random.RandomState(seed).shuffle(keys)
    return _SplitDataset(dataset, keys[:n]), _SplitDataset(dataset, keys[n:])
