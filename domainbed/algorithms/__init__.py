"""The algorithm registry.

An algorithm is a class with `update(minibatches, unlabeled=None) -> dict` and `predict(x)`;
the training script knows nothing else about it. Each family lives in its own module and
registers itself with `@register_algorithm`; other packages add theirs through the
`domainbed.plugins` entry point group, loaded at the end of this import, or register
themselves when the program imports them. Set DOMAINBED_NO_PLUGINS=1 to skip the
entry points.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from importlib.metadata import entry_points

from domainbed.algorithms.algorithm import Algorithm
from domainbed.lib.registry import Registry, register_by_class_name

ALGORITHMS: list[str] = []
_CLASSES: Registry[type[Algorithm]] = Registry("algorithm")


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make `cls` reachable by its class name (refused if another class
    holds that name)."""
    return register_by_class_name(_CLASSES, ALGORITHMS, __name__, cls)


def get_algorithm_class(algorithm_name: str) -> type[Algorithm]:
    """Return the algorithm class with the given name."""
    if algorithm_name not in _CLASSES:
        raise NotImplementedError(f"Algorithm not found: {algorithm_name}")
    return _CLASSES[algorithm_name]


# The public DomainBed's order, so default sweeps enumerate jobs in the same order.
_UPSTREAM_ORDER = ("ERM", "IRM", "GroupDRO", "Mixup", "CORAL", "MMD", "DANN", "CDANN", "SagNet",
                   "VREx", "RSC")


def _import_families() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    ALGORITHMS.sort(key=lambda name: (name not in _UPSTREAM_ORDER,
                                      _UPSTREAM_ORDER.index(name) if name in _UPSTREAM_ORDER
                                      else 0))


def _load_plugins() -> None:
    """Load each plugin's entry point: a module, whose import registers what it defines (one
    file can add an algorithm and a dataset), or a function, called once loaded. A plugin
    that cannot be imported (an extension removed or blocked) is skipped with a warning, so
    the engine runs without it."""
    if os.environ.get("DOMAINBED_NO_PLUGINS") == "1":
        return
    for entry in entry_points(group="domainbed.plugins"):
        try:
            plugin = entry.load()
            if callable(plugin):
                plugin()
        except ImportError as error:
            print(f"domainbed: warning: plugin {entry.name!r} ({entry.value}) not loaded: "
                  f"{error}", file=sys.stderr)


_import_families()
_load_plugins()
