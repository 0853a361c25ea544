"""WILDS Camelyon17 and FMoW, one environment per hospital or region as in the public DomainBed.

The `wilds` package is imported only when one of these datasets is built, so the rest of the
engine installs and runs without it (`pip install 'domainbed-itl[wilds]'` adds it).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from domainbed.datasets import register_dataset
from domainbed.datasets.folders import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from domainbed.datasets.multiple_domain import DataUnavailableError, MultipleDomainDataset
from domainbed.downloads.layouts import LAYOUTS, download_command


def _wilds_train_transform() -> transforms.Compose:
    # Unlike the folder datasets, WILDS images are resized before the random crop.
    return transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.RandomResizedCrop(224, scale=(0.7, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.3, 0.3, 0.3, 0.3),
            transforms.RandomGrayscale(),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


class WildsEnvironment(torch.utils.data.Dataset):
    """The examples of a WILDS dataset whose metadata field equals one value."""

    def __init__(self, wilds_dataset, field: str, value: int, transform) -> None:
        self.name = f"{field}_{value}"
        column = wilds_dataset.metadata_fields.index(field)
        self.indices = torch.where(wilds_dataset.metadata_array[:, column] == value)[0]
        self.dataset = wilds_dataset
        self.transform = transform

    def __getitem__(self, i: int):
        index = self.indices[i]
        x = self.dataset.get_input(index)
        if not isinstance(x, Image.Image):
            x = Image.fromarray(x)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.dataset.y_array[index]

    def __len__(self) -> int:
        return len(self.indices)


class _WildsByMetadata(MultipleDomainDataset):
    INPUT_SHAPE = (3, 224, 224)
    WILDS_CLASS = ""  # "module:Class" inside the wilds package
    FIELD = ""  # the metadata column whose values become environments

    def __init__(self, root: str | Path | None, test_envs: list[int], hparams: dict) -> None:
        super().__init__()
        name = type(self).__name__
        if root is None:
            raise DataUnavailableError("no data directory given: pass --data_dir")
        problem = LAYOUTS[name].problem(root)
        if problem is not None:
            raise DataUnavailableError(f"{name}: {problem}; run `{download_command(root, name)}`")
        try:
            wilds_dataset = self._wilds_class()(root_dir=str(root))
        except FileNotFoundError as err:
            raise DataUnavailableError(
                f"{name}: the data is incomplete ({err.filename} is missing); move "
                f"{LAYOUTS[name].folder} away and run `{download_command(root, name)}`"
            ) from err
        augment = bool(hparams.get("data_augmentation", False))
        column = wilds_dataset.metadata_fields.index(self.FIELD)
        values = sorted(set(wilds_dataset.metadata_array[:, column].view(-1).tolist()))
        self.datasets = [
            WildsEnvironment(
                wilds_dataset,
                self.FIELD,
                value,
                _wilds_train_transform() if augment and i not in test_envs else eval_transform(),
            )
            for i, value in enumerate(values)
        ]
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = wilds_dataset.n_classes

    def _wilds_class(self):
        module, cls = self.WILDS_CLASS.split(":")
        try:
            return getattr(importlib.import_module(module), cls)
        except ImportError as err:
            raise ImportError(
                f"{type(self).__name__} needs the wilds package: "
                "pip install 'domainbed-itl[wilds]' (wilds==2.0.0)"
            ) from err


@register_dataset
class WILDSCamelyon(_WildsByMetadata):
    ENVIRONMENTS = ["hospital_0", "hospital_1", "hospital_2", "hospital_3", "hospital_4"]
    WILDS_CLASS = "wilds.datasets.camelyon17_dataset:Camelyon17Dataset"
    FIELD = "hospital"


@register_dataset
class WILDSFMoW(_WildsByMetadata):
    ENVIRONMENTS = ["region_0", "region_1", "region_2", "region_3", "region_4", "region_5"]
    WILDS_CLASS = "wilds.datasets.fmow_dataset:FMoWDataset"
    FIELD = "region"
