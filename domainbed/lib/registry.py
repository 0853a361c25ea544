"""Objects by name, for the algorithm, dataset and launcher registries.

A name taken by one object is refused to another: two plugins that both call their algorithm
"ERM_X" would otherwise leave a sweep running whichever was imported last. Registering the
same object again is harmless and allowed. The loss registry (domainbed_itl.losses) keeps the
same rule in its own few lines, because it must also load beside a clone of the public
DomainBed, whose `domainbed` package has no `lib.registry`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, MutableMapping
from typing import TypeVar

T = TypeVar("T")


class DuplicateName(ValueError):
    """A name already registered to another object."""


class Registry(MutableMapping[str, T]):
    """A dict in registration order whose assignment refuses a name held by another object.

    Deleting a name (tests do, to clean up) frees it for a new object.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def __setitem__(self, name: str, item: T) -> None:
        held = self._items.get(name, item)
        if held is not item:
            raise DuplicateName(f"{self.kind} {name!r} is already registered by {held!r}")
        self._items[name] = item

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"


def register_by_class_name(registry: Registry[T], names: list[str], module: str, cls: T) -> T:
    """Register `cls` under its class name, list the name in `names` and make it an attribute
    of `module`: the public DomainBed's algorithms and datasets are reached all three ways."""
    name = cls.__name__
    registry[name] = cls
    if name not in names:
        names.append(name)
    setattr(sys.modules[module], name, cls)
    return cls
