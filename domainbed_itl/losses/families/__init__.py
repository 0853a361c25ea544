"""The learnable loss families, by name: each is one `LossFamily` descriptor in one file.

Every list of families in the project is read from `FAMILIES`: the learned-loss file reader,
the meta-learner's `--family` choices and its starting points, the ERM_<loss> algorithms and
their hyperparameter spaces. A family outside this package joins by `register_family`, or,
installed as a package, through an entry point of the `domainbed_itl.loss_families` group
naming its descriptor (`myfamily = my_package.myfamily:FAMILY`), loaded here so that every
command and sweep job sees it. DOMAINBED_NO_PLUGINS=1 skips those entry points, as it skips the
engine's plugins.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points

from domainbed_itl.losses.checks import LearnedLossError
from domainbed_itl.losses.families.family import HParam, LossFamily, Order, fresh

FAMILIES: dict[str, LossFamily] = {}
ENTRY_POINT_GROUP = "domainbed_itl.loss_families"


def register_family(family: LossFamily) -> LossFamily:
    """Make `family` known by its name (refused if another family holds the name or one of
    its algorithm names); returns it."""
    held = FAMILIES.get(family.name, family)
    if held is not family:
        raise ValueError(f"loss family {family.name!r} is already registered")
    for other in FAMILIES.values():
        shared = set(other.algorithms) & set(family.algorithms)
        if other is not family and shared:
            raise ValueError(f"loss family {family.name!r}: {', '.join(sorted(shared))} is "
                             f"already the algorithm of family {other.name!r}")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> LossFamily:
    """The family called `name`; LearnedLossError listing the known ones otherwise."""
    if name not in FAMILIES:
        raise LearnedLossError(f"unknown loss family {name!r}; choose "
                               + " or ".join(FAMILIES))
    return FAMILIES[name]


def start_names() -> tuple[str, ...]:
    """Every named starting point of any family, for `--init`."""
    return tuple(dict.fromkeys(name for f in FAMILIES.values() for name in f.starts))


def _load_entry_points() -> None:
    if os.environ.get("DOMAINBED_NO_PLUGINS") == "1":
        return
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        register_family(entry.load())


def _register_builtin() -> None:
    from domainbed_itl.losses.families.isce import ISCE
    from domainbed_itl.losses.families.taylor import TAYLOR

    register_family(TAYLOR)
    register_family(ISCE)


_register_builtin()
_load_entry_points()

__all__ = ["FAMILIES", "HParam", "LearnedLossError", "LossFamily", "Order", "fresh",
           "get_family", "register_family", "start_names"]
