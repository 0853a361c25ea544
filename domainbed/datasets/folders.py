"""The photo benchmarks stored as `<data_dir>/<dataset>/<domain>/<class>/<image>` trees.

Domains are the sorted subfolder names, as in the public DomainBed, so environment i means the
same domain in both. Training environments get the benchmark's augmentation when
hparams['data_augmentation'] is set; test environments never do.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from PIL import Image, ImageFile
from torchvision import transforms
from torchvision.datasets import ImageFolder

from domainbed.datasets import register_dataset
from domainbed.datasets.multiple_domain import DataUnavailableError, MultipleDomainDataset
from domainbed.downloads.layouts import LAYOUTS, FolderLayout, download_command

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def eval_transform() -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def train_transform() -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(224, scale=(0.7, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.3, 0.3, 0.3, 0.3),
            transforms.RandomGrayscale(),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


@contextlib.contextmanager
def _tolerate_truncation():
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def load_rgb(path: str) -> Image.Image:
    """Decode an image as RGB; a truncated JPEG (TerraIncognita has some) is decoded as far as it
    goes, which is what the public DomainBed does by switching Pillow's flag on for the whole
    process. Here the flag is raised only for the retry of the file that needs it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        if "truncated" not in str(err).lower():
            raise
    with _tolerate_truncation(), Image.open(path) as image:
        return image.convert("RGB")


class _DomainFolders(MultipleDomainDataset):
    INPUT_SHAPE = (3, 224, 224)

    def __init__(self, root: str | Path | None, test_envs: list[int], hparams: dict) -> None:
        super().__init__()
        name = type(self).__name__
        layout = LAYOUTS[name]
        assert isinstance(layout, FolderLayout)
        if root is None:
            raise DataUnavailableError("no data directory given: pass --data_dir")
        base = Path(root) / layout.folder
        hint = f"run `{download_command(root, name)}` or lay out {layout.describe(root)} by hand"
        if not base.is_dir():
            raise DataUnavailableError(f"{name}: {base} is missing; {hint}")
        domains = sorted(
            e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith(".")
        )
        if len(domains) != len(self.ENVIRONMENTS):
            raise DataUnavailableError(
                f"{name}: {base} has {len(domains)} domain folders {domains}, expected "
                f"{len(self.ENVIRONMENTS)}; {hint}"
            )
        augment = bool(hparams.get("data_augmentation", False))
        self.datasets = [
            ImageFolder(
                str(base / domain),
                transform=train_transform() if augment and i not in test_envs else eval_transform(),
                loader=load_rgb,
            )
            for i, domain in enumerate(domains)
        ]
        classes = {tuple(d.classes) for d in self.datasets}
        if len(classes) != 1:
            raise DataUnavailableError(
                f"{name}: the domains of {base} do not share one set of class folders, so labels "
                f"would mean different things per domain; {hint}"
            )
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = len(self.datasets[-1].classes)


@register_dataset
class VLCS(_DomainFolders):
    CHECKPOINT_FREQ = 300
    ENVIRONMENTS = ["C", "L", "S", "V"]


@register_dataset
class PACS(_DomainFolders):
    CHECKPOINT_FREQ = 300
    ENVIRONMENTS = ["A", "C", "P", "S"]


@register_dataset
class OfficeHome(_DomainFolders):
    CHECKPOINT_FREQ = 300
    ENVIRONMENTS = ["A", "C", "P", "R"]


@register_dataset
class TerraIncognita(_DomainFolders):
    CHECKPOINT_FREQ = 300
    ENVIRONMENTS = ["L100", "L38", "L43", "L46"]


@register_dataset
class DomainNet(_DomainFolders):
    CHECKPOINT_FREQ = 1000
    ENVIRONMENTS = ["clip", "info", "paint", "quick", "real", "sketch"]
