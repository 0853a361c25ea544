"""The checks of a loss's parameters and order, written once for every reader of them: the
loss modules, the family descriptors (domainbed_itl.losses.families) and the learned-loss file.

A leaf module (it imports no other loss module), so the loss definitions and the descriptors
that are built on them can both use it. Its errors are usage errors (domainbed.lib.cli), where
that module exists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

try:
    from domainbed.lib.cli import UsageError
except ImportError:  # beside a clone of the public DomainBed, whose `domainbed` has no lib.cli

    class UsageError(Exception):  # type: ignore[no-redef]
        """Input the user must change (the clone's commands have no such type)."""


class LearnedLossError(UsageError, ValueError):
    """Loss parameters or an order that make no loss, a mistake in the user's input; the
    message says what is wrong."""


def check_order(order: Any, minimum: int, what: str) -> int:
    """`order` if it is an integer >= `minimum` (booleans are not); LearnedLossError naming
    `what` otherwise."""
    if isinstance(order, bool) or not isinstance(order, int) or order < minimum:
        raise LearnedLossError(f"{what} must be an integer >= {minimum}, got {order!r}")
    return order


def finite_numbers(values: Sequence[Any], what: str) -> tuple[float, ...]:
    """`values` as floats; LearnedLossError unless each is a finite real number."""
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        raise LearnedLossError(f"{what} must hold numbers only, got {list(values)!r:.200}")
    if not all(math.isfinite(v) for v in values):
        raise LearnedLossError(f"{what} loss parameters must be finite, got {list(values)!r:.200}")
    return tuple(float(v) for v in values)
