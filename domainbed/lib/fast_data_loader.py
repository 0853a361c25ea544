"""Minibatch streams for training and ordered passes for evaluation.

The public DomainBed wraps every environment in a DataLoader with worker processes. For the
in-memory TensorDatasets of the MNIST benchmarks that is pure overhead: workers start, pickle
indices and collate one row at a time. Here a loader first looks for the tensors behind a
dataset (a TensorDataset, or `_SplitDataset` views of one, nested to any depth) and then indexes
them directly; only datasets that really read files (ImageFolder, WILDS) go through a
DataLoader, with no more workers than the machine has cores.

Training batches are *addressable*: batch k is drawn by a generator seeded from (seed, k), so a
loader's whole state is its seed and the number of batches handed out. That makes a resumed run
draw exactly the batches an uninterrupted one would, even with worker processes prefetching
ahead of the training loop.

Tensors that live on an accelerator (see `domainbed.lib.fast_path.make_resident`) are indexed
there; `pin_memory` makes a file-reading loader hand out page-locked batches, which a
non-blocking copy moves to the device while the next step is queued.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from domainbed.lib.misc import _SplitDataset, seed_hash

Batch = list[torch.Tensor]


def tensor_view(dataset: Dataset) -> tuple[Sequence[torch.Tensor], torch.Tensor | None] | None:
    """The tensors behind `dataset` and the rows of them it exposes (None: all rows, in order).

    Returns None when the dataset is not a (view of a) TensorDataset.
    """
    if isinstance(dataset, TensorDataset):
        return dataset.tensors, None
    if isinstance(dataset, _SplitDataset):
        inner = tensor_view(dataset.underlying_dataset)
        if inner is None:
            return None
        tensors, rows = inner
        keys = torch.as_tensor(dataset.keys, dtype=torch.long)
        return tensors, keys if rows is None else rows[keys]
    return None


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _worker_count(requested: int) -> int:
    return max(0, min(requested, available_cores()))


class _BatchIndices:
    """An endless, addressable sequence of index batches (uniform or weighted, with replacement)."""

    def __init__(self, size: int, weights: torch.Tensor | None, batch_size: int, seed: int,
                 start: int = 0):
        self.size = size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.batch_size = batch_size
        self.seed = seed
        self.start = start

    def draw(self, k: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed_hash(self.seed, k))
        if self.weights is None:
            return torch.randint(self.size, (self.batch_size,), generator=generator)
        return torch.multinomial(self.weights, self.batch_size, replacement=True,
                                 generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        while True:
            yield self.draw(k).tolist()
            k += 1


class InfiniteDataLoader:
    """Endless minibatches of `batch_size` examples drawn with replacement, uniformly or in
    proportion to `weights` (the public DomainBed's sampling).

    `seed` fixes the stream; by default it is drawn from torch's global generator, so the
    training script's `--seed` decides it. `state_dict()` / `load_state_dict()` save and
    restore the position in the stream.
    """

    def __init__(self, dataset: Dataset, weights: torch.Tensor | None, batch_size: int,
                 num_workers: int, seed: int | None = None, pin_memory: bool = False):
        if len(dataset) == 0:
            raise ValueError("cannot draw minibatches from an empty dataset")
        if weights is not None and len(weights) != len(dataset):
            raise ValueError(f"{len(weights)} weights for a dataset of {len(dataset)} examples")
        if seed is None:
            seed = int(torch.randint(2**62, ()).item())
        self.dataset = dataset
        self.num_workers = _worker_count(num_workers)
        self._view = tensor_view(dataset)
        self._indices = _BatchIndices(len(dataset), weights, batch_size, seed)
        self._drawn = 0
        self._workers: Iterator[Any] | None = None
        self.pin_memory = pin_memory

    def __iter__(self) -> InfiniteDataLoader:
        return self

    def __next__(self) -> Batch:
        if self._view is not None:
            tensors, rows = self._view
            picked = self._indices.draw(self._drawn)
            if rows is not None:
                picked = rows[picked]
            picked = picked.to(tensors[0].device)
            batch = [tensor[picked] for tensor in tensors]
        else:
            batch = next(self._dataloader_iterator())
        self._drawn += 1
        return batch

    def __len__(self) -> int:
        raise TypeError("an InfiniteDataLoader has no length")

    def _dataloader_iterator(self) -> Iterator[Any]:
        if self._workers is None:
            self._indices.start = self._drawn
            loader = DataLoader(
                self.dataset,
                batch_sampler=self._indices,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                # Worker seeds come from this generator, never from the global one.
                generator=torch.Generator().manual_seed(self._indices.seed),
            )
            self._workers = iter(loader)
        return self._workers

    def state_dict(self) -> dict[str, int]:
        return {"seed": self._indices.seed, "drawn": self._drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._indices.seed = int(state["seed"])
        self._drawn = int(state["drawn"])
        self._workers = None  # restart any worker pipeline at the restored position


class FastDataLoader:
    """One ordered pass over `dataset` in batches of `batch_size`, as often as iterated.

    Evaluation only needs every example once; the order does not change an accuracy, so none is
    shuffled and no random state is touched.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int,
                 pin_memory: bool = False):
        self.dataset = dataset
        self.batch_size = batch_size
        self._view = tensor_view(dataset)
        self._loader: DataLoader | None = None
        if self._view is None:
            workers = _worker_count(num_workers)
            self._loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                      num_workers=workers, persistent_workers=workers > 0,
                                      pin_memory=pin_memory)

    def __iter__(self) -> Iterator[Batch]:
        if self._loader is not None:
            yield from self._loader
            return
        tensors, rows = self._view
        for start in range(0, len(self.dataset), self.batch_size):
            if rows is None:
                yield [tensor[start:start + self.batch_size] for tensor in tensors]
            else:
                picked = rows[start:start + self.batch_size].to(tensors[0].device)
                yield [tensor[picked] for tensor in tensors]

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)
