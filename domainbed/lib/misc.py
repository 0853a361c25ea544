"""Small helpers whose exact behaviour other tools depend on.

`seed_hash` and `split_dataset` reproduce the public DomainBed's seeding rules bit for bit: the
in/out splits and random hyperparameters of a sweep are only comparable with published ones if
they are drawn the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import IO

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


def make_weights_for_balanced_classes(dataset: torch.utils.data.Dataset) -> torch.Tensor:
    """Per-example sampling weights that give every class present the same total weight.

    Each example of class y weighs 1 / (count(y) * number of classes present), so the weights
    sum to one and a weighted sampler sees the classes equally often.
    """
    labels = torch.tensor([int(y) for _, y in dataset], dtype=torch.long)
    if len(labels) == 0:
        return torch.zeros(0)
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    per_class = 1.0 / (counts.double() * len(classes))
    return per_class[inverse].float()


def count_correct(network: torch.nn.Module, loader: Iterable, weights: torch.Tensor | None,
                  device: str | torch.device, channels_last: bool = False) -> tuple[float, float]:
    """(weighted number right, total weight) of `network.predict` over `loader`.

    The caller puts the network in eval mode; this only runs inference (in the calling thread's
    inference mode), so several threads may count different loaders at once. A single output
    column is read as a binary logit (positive means class 1). `channels_last` feeds 4-d inputs
    in NHWC layout; it changes no prediction beyond float rounding.
    """
    correct = total = 0.0
    offset = 0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = network.predict(x)
            if logits.size(1) == 1:
                hits = logits.squeeze(1).gt(0).long().eq(y)
            else:
                hits = logits.argmax(1).eq(y)
            if weights is None:
                correct += hits.sum().item()
                total += len(x)
            else:
                w = weights[offset:offset + len(x)].to(device)
                offset += len(x)
                correct += (hits.float() * w).sum().item()
                total += w.sum().item()
    return correct, total


def accuracy(network: torch.nn.Module, loader: Iterable, weights: torch.Tensor | None,
             device: str | torch.device, channels_last: bool = False) -> float:
    """The (optionally weighted) fraction of `loader`'s examples that `network.predict` gets right.

    The network is evaluated in eval mode and put back in training mode afterwards.
    """
    network.eval()
    try:
        correct, total = count_correct(network, loader, weights, device, channels_last)
    finally:
        network.train()
    return correct / total


class Tee:
    """A write-only stream that copies everything to `stream` (sys.stdout by default) and to a
    file.

    Installed as sys.stdout / sys.stderr by the training script so a run's log survives in its
    output directory; every write is flushed so `tail -f` and a killed job see all of it. If
    the file cannot be written (a full disk), the copy stops and `stream` still gets everything:
    a log line must not be what kills a run, and the next checkpoint write reports the disk.
    """

    def __init__(self, fname: str, mode: str = "a", stream: IO[str] | None = None):
        self.stdout = stream if stream is not None else sys.stdout
        self.file: IO[str] | None = open(fname, mode)  # stays open for the life of the process

    def write(self, message: str) -> int:
        self.stdout.write(message)
        self._to_file(lambda file: file.write(message))
        self.flush()
        return len(message)

    def flush(self) -> None:
        self.stdout.flush()
        self._to_file(lambda file: file.flush())

    def close(self) -> None:
        self._to_file(lambda file: file.close())
        self.file = None

    def _to_file(self, action: Callable[[IO[str]], object]) -> None:
        if self.file is None:
            return
        try:
            action(self.file)
        except OSError:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None

    def isatty(self) -> bool:
        return False


def print_separator() -> None:
    print("=" * 80)


def print_row(row: Sequence[object], colwidth: int = 10, latex: bool = False) -> None:
    """Print `row` in fixed-width columns (floats with 10 decimals), or as a LaTeX table row."""

    def cell(value: object) -> str:
        if isinstance(value, float | np.floating):
            value = f"{value:.10f}"
        return str(value).ljust(colwidth)[:colwidth]

    separator, ending = (" & ", "\\\\") if latex else ("  ", "")
    print(separator.join(cell(value) for value in row), ending)
