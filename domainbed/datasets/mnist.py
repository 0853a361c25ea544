"""RotatedMNIST and ColoredMNIST, environment for environment identical to the public DomainBed.

Both pool MNIST's 70,000 training and test digits, shuffle them once with `torch.randperm` from
the global generator (so the training script's `torch.manual_seed` decides the split), and deal
them round-robin to the environments. Everything stays an in-memory TensorDataset, so training
needs no loader worker processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import TensorDataset
from torchvision.datasets import MNIST

from domainbed.datasets import register_dataset
from domainbed.datasets.multiple_domain import DataUnavailableError, MultipleDomainDataset
from domainbed.downloads.integrity import CorruptFileError, verify_once
from domainbed.downloads.mnist_files import RAW_FILES, raw_dir


def load_mnist(root: str | Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """All 70,000 digits as (uint8 images N x 28 x 28, int64 labels), training set first.

    Every file's size and MD5 are checked first (the MD5 once per process and file, about 0.1 s),
    so a truncated or altered file, pixels and headers alike, is a one-line error naming the file
    and the command that repairs it, never a crash inside torchvision or, worse, silently
    different data.
    """
    if root is None:
        raise DataUnavailableError("no data directory given: pass --data_dir")
    folder = raw_dir(root)
    for spec in RAW_FILES:
        try:
            verify_once(folder / spec.name, spec)
        except (OSError, CorruptFileError) as err:
            raise DataUnavailableError(
                f"MNIST is not usable in {folder} ({err}); run "
                f"`python -m domainbed.scripts.download --data_dir {root} --datasets MNIST`"
            ) from err
    parts = [MNIST(str(root), train=train, download=False) for train in (True, False)]
    return torch.cat([p.data for p in parts]), torch.cat([p.targets for p in parts])


class _PooledMNIST(MultipleDomainDataset):
    """Shuffle the pooled digits, deal every k-th one to environment i, then let the subclass
    turn each share into (inputs, targets)."""

    ENV_PARAMETERS: Sequence[float] = ()  # one per environment, handed to make_environment
    NUM_CLASSES = 0

    def __init__(self, root: str | Path | None, test_envs: list[int], hparams: dict) -> None:
        super().__init__()
        images, labels = load_mnist(root)
        order = torch.randperm(len(images))
        images, labels = images[order], labels[order]
        k = len(self.ENV_PARAMETERS)
        self.datasets = [
            TensorDataset(*self.make_environment(images[i::k], labels[i::k], parameter))
            for i, parameter in enumerate(self.ENV_PARAMETERS)
        ]
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = self.NUM_CLASSES

    def make_environment(
        self, images: torch.Tensor, labels: torch.Tensor, parameter: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@register_dataset
class ColoredMNIST(_PooledMNIST):
    """Binary task (digit < 5) with 25% label noise; colour agrees with the noisy label with a
    probability that differs across environments, so colour is a spurious shortcut."""

    ENVIRONMENTS = ["+90%", "+80%", "-90%"]
    ENV_PARAMETERS = (0.1, 0.2, 0.9)  # probability that the colour disagrees with the label
    INPUT_SHAPE = (2, 28, 28)
    NUM_CLASSES = 2

    def make_environment(self, images, labels, parameter):
        # Two draws per environment from the global generator, in this order, as upstream does.
        label_flip = torch.rand(len(labels)) < 0.25
        target = (labels < 5) ^ label_flip
        colour_flip = torch.rand(len(labels)) < parameter
        colour = (target ^ colour_flip).long()
        x = torch.zeros(len(images), 2, 28, 28)
        x[torch.arange(len(images)), colour] = images.float() / 255.0
        return x, target.long()


def rotate_like_pil(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate a batch of uint8 images (N x H x W) counter-clockwise about their centre with
    bilinear interpolation, reproducing Pillow's `Image.rotate(..., BILINEAR)` pixel for pixel.

    torchvision's tensor `rotate` samples differently (up to 161/255 apart on MNIST), so it
    cannot stand in for the per-image PIL path the public DomainBed uses. Here Pillow's
    arithmetic is redone in float64 on the whole batch: sample at the inverse-rotated pixel
    centre, drop samples that fall outside the image, clamp the 2x2 neighbourhood at the border,
    interpolate along x then y, and truncate to uint8.
    """
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise TypeError("expected a uint8 tensor of shape (N, H, W)")
    n, h, w = images.shape
    degrees = degrees % 360.0
    # Pillow copies or transposes instead of resampling at these angles.
    if degrees in (0.0, 180.0) or (degrees in (90.0, 270.0) and h == w):
        return torch.rot90(images, int(degrees) // 90, dims=(1, 2)).clone()
    theta = -math.radians(degrees)
    cos, sin = round(math.cos(theta), 15), round(math.sin(theta), 15)
    cx, cy = w / 2, h / 2
    # Pillow's affine map from output to input coordinates, evaluated in its own order.
    off_x = cos * -cx + sin * -cy + 0.0 + cx
    off_y = -sin * -cx + cos * -cy + 0.0 + cy
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) + 0.5,
        torch.arange(w, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    src_x = cos * xs + sin * ys + off_x
    src_y = -sin * xs + cos * ys + off_y
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    fx, fy = src_x - 0.5, src_y - 0.5
    x0, y0 = torch.floor(fx), torch.floor(fy)
    dx, dy = fx - x0, fy - y0
    x0, y0 = x0.long(), y0.long()
    left, right = x0.clamp(0, w - 1), (x0 + 1).clamp(0, w - 1)
    top, bottom = y0.clamp(0, h - 1), (y0 + 1).clamp(0, h - 1)

    # Pixels as rows (H*W x N): every gather copies whole contiguous rows, and the arithmetic
    # runs in place to keep this memory-bound loop short.
    flat = images.reshape(n, h * w).t().contiguous()
    dx, dy = dx.reshape(-1, 1), dy.reshape(-1, 1)

    def row(y: torch.Tensor) -> torch.Tensor:
        a = flat[(y * w + left).reshape(-1)].double()
        b = flat[(y * w + right).reshape(-1)].double()
        return b.sub_(a).mul_(dx).add_(a)

    upper = row(top)
    value = row(bottom).sub_(upper).mul_(dy).add_(upper)
    value.masked_fill_(~inside.reshape(-1, 1), 0.0)
    return value.floor_().to(torch.uint8).t().reshape(n, h, w)


@register_dataset
class RotatedMNIST(_PooledMNIST):
    """Ten-way digit classification; each environment rotates its digits by a fixed angle."""

    ENVIRONMENTS = ["0", "15", "30", "45", "60", "75"]
    ENV_PARAMETERS = (0, 15, 30, 45, 60, 75)  # degrees, counter-clockwise
    INPUT_SHAPE = (1, 28, 28)
    NUM_CLASSES = 10

    def make_environment(self, images, labels, parameter):
        rotated = rotate_like_pil(images, parameter)
        return rotated.unsqueeze(1).float() / 255.0, labels.view(-1)
