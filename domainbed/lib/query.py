"""A small list-query language for result records.

Model selection is written as chains like `records.group("args.hparams_seed").map(...)`; the
public DomainBed's selection code and notebooks use this vocabulary, so `Q` keeps its method
names and its tie and NaN rules (a NaN sorts below every number), which decide which run wins.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

Selector = str | Callable[[Any], Any]


def make_selector_fn(selector: Selector) -> Callable[[Any], Any]:
    """Turn "a", "a.b" (nested lookup) or "a, b.c" (a tuple of lookups) into a function.

    A callable is returned unchanged, so every Q method accepts either form.
    """
    if callable(selector):
        return selector
    if not isinstance(selector, str):
        raise TypeError(f"a selector is a string or a function, not {type(selector).__name__}")
    if "," in selector:
        parts = [make_selector_fn(part) for part in selector.split(",")]
        return lambda obj: tuple(part(obj) for part in parts)
    keys = [key.strip() for key in selector.split(".")]

    def lookup(obj: Any) -> Any:
        for key in keys:
            obj = obj[key]
        return obj

    return lookup


def hashable(obj: Any) -> Any:
    """`obj` itself when it can key a dict, else a canonical JSON text of it."""
    try:
        hash(obj)
    except TypeError:
        return json.dumps({"_": obj}, sort_keys=True)
    return obj


def _nan_lowest(value: Any) -> Any:
    if isinstance(value, float | np.floating) and math.isnan(value):
        return float("-inf")
    return value


class Q:
    """An immutable-by-convention list with grouping, mapping and reduction methods."""

    def __init__(self, items: Iterable[Any] | None = None):
        self._list = list(items) if items is not None else []

    def __len__(self) -> int:
        return len(self._list)

    def __getitem__(self, key: Any) -> Any:
        found = self._list[key]
        return Q(found) if isinstance(key, slice) else found

    def __iter__(self):
        return iter(self._list)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Q):
            return self._list == other._list
        return self._list == other

    def __repr__(self) -> str:
        return repr(self._list)

    __str__ = __repr__

    def group(self, selector: Selector) -> Q:
        """(key, Q of members) pairs, one per distinct key, in sorted key order."""
        select = make_selector_fn(selector)
        groups: dict[Any, tuple[Any, list[Any]]] = {}
        for item in self._list:
            key = select(item)
            groups.setdefault(hashable(key), (key, []))[1].append(item)
        return Q((groups[k][0], Q(groups[k][1])) for k in sorted(groups))

    def group_map(self, selector: Selector, fn: Callable[..., Any]) -> Q:
        return self.group(selector).map(fn)

    def map(self, fn: Callable[..., Any]) -> Q:
        """Apply `fn` to each item; a function of several arguments gets the item unpacked."""
        if len(inspect.signature(fn).parameters) > 1:
            return Q(fn(*item) for item in self._list)
        return Q(fn(item) for item in self._list)

    def select(self, selector: Selector) -> Q:
        select = make_selector_fn(selector)
        return Q(select(item) for item in self._list)

    def filter(self, fn: Callable[[Any], bool]) -> Q:
        return Q(item for item in self._list if fn(item))

    def filter_equals(self, selector: Selector, value: Any) -> Q:
        select = make_selector_fn(selector)
        return self.filter(lambda item: select(item) == value)

    def filter_not_none(self) -> Q:
        return self.filter(lambda item: item is not None)

    def filter_not_nan(self) -> Q:
        return self.filter(lambda item: not np.isnan(item))

    def flatten(self) -> Q:
        return Q(inner for outer in self._list for inner in outer)

    def unique(self) -> Q:
        """Distinct items, first occurrence first."""
        seen: set[Any] = set()
        kept = []
        for item in self._list:
            key = hashable(item)
            if key not in seen:
                seen.add(key)
                kept.append(item)
        return Q(kept)

    def sorted(self, key: Callable[[Any], Any] | None = None) -> Q:
        """Stable ascending sort in which NaN keys come first."""
        key_fn = key if key is not None else (lambda item: item)
        return Q(sorted(self._list, key=lambda item: _nan_lowest(key_fn(item))))

    def argmax(self, selector: Selector) -> Any:
        """The first item with the largest selected value."""
        return max(self._list, key=make_selector_fn(selector))

    def min(self) -> Any:
        return min(self._list)

    def max(self) -> Any:
        return max(self._list)

    def sum(self) -> Any:
        return sum(self._list)

    def len(self) -> int:
        return len(self._list)

    def mean(self) -> float:
        """NaN for an empty list, silently, as a missing cell is not an error."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(np.mean(self._list))

    def std(self) -> float:
        """Population standard deviation (ddof=0); NaN for an empty list."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(np.std(self._list))

    def mean_std(self) -> tuple[float, float]:
        return self.mean(), self.std()
