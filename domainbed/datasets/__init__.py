"""The dataset registry: one module per family, each class registered by name.

`DATASETS`, `get_dataset_class` and `num_environments` behave as in the public DomainBed.
"""

from __future__ import annotations

import importlib
import pkgutil

from domainbed.datasets.multiple_domain import MultipleDomainDataset
from domainbed.lib.hparam_space import SMALL_IMAGES
from domainbed.lib.registry import Registry, register_by_class_name

DATASETS: list[str] = []
_CLASSES: Registry[type[MultipleDomainDataset]] = Registry("dataset")


def register_dataset(cls: type[MultipleDomainDataset]) -> type[MultipleDomainDataset]:
    """Class decorator: make `cls` reachable by its class name (refused if another class
    holds that name), with small-image hyperparameters when its SMALL_IMAGES says so, so a
    dataset is added by its own module alone."""
    if cls.SMALL_IMAGES:
        SMALL_IMAGES.add(cls.__name__)
    return register_by_class_name(_CLASSES, DATASETS, __name__, cls)


def get_dataset_class(dataset_name: str) -> type[MultipleDomainDataset]:
    """Return the dataset class with the given name."""
    if dataset_name not in _CLASSES:
        raise NotImplementedError(f"Dataset not found: {dataset_name}")
    return _CLASSES[dataset_name]


def num_environments(dataset_name: str) -> int:
    return len(get_dataset_class(dataset_name).ENVIRONMENTS)


# Small datasets first, as in the public DomainBed's list (the default job order of a sweep).
_FIRST = ("debug", "mnist")
for _name in sorted((m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"),
                    key=lambda name: (name not in _FIRST, _FIRST.index(name) if name in _FIRST
                                      else 0, name)):
    importlib.import_module(f"{__name__}.{_name}")
