"""Which algorithms get which loss, and each loss's hyperparameters: one table for both engines.

This module imports nothing from `domainbed`, so the same table serves our engine (through
the plugin) and a clone of the public DomainBed (through the import hook), whose `domainbed`
package shadows ours.

The learned families (ITL's itl_omega / itl_order, iSCE's isce_alpha / isce_beta, and any
family registered in domainbed_itl.losses.families) bring their own keys and defaults and are
not searched: a loss is learned once and deployed as is, e.g. `--hparams '{"itl_omega":
[...]}'`, built through `LearnedLoss` like every learned loss.

Search ranges of the hand-designed losses, and where they come from:
- focal_gamma: default 3, the best fixed value of Mukhoti et al. (2020); uniform in [1, 5],
  the values they use (fixed 1 to 3, and 5 and 3 in their sample-dependent FLSD-53).
- sce_alpha, sce_beta: defaults 0.1 and 1 (Wang et al. 2019, CIFAR-10); log-uniform over
  [0.01, 10] and [0.1, 1], which spans their per-dataset settings (alpha from 0.01 on MNIST to
  6 on CIFAR-100, beta from 0.1 to 1).
- gce_q: default 0.7 (Zhang & Sabuncu 2018); uniform in [0.1, 1], between near-CE and MAE.
- ls_epsilon: default 0.1 (Szegedy et al. 2016); uniform in [0, 0.3].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from domainbed_itl.losses import get_loss
from domainbed_itl.losses.families import FAMILIES, HParam, LossFamily, fresh
from domainbed_itl.losses.learned import LearnedLoss

__all__ = ["LOSS_CHOICES", "VARIANTS", "HParam", "LossChoice", "Variant", "fresh",
           "learned_choice"]


@dataclass(frozen=True)
class LossChoice:
    """A loss an algorithm can be given: its hyperparameters, how to build it from them, and
    the base algorithms trained with it (as `<base>_<suffix>`)."""

    suffix: str
    hparams: tuple[HParam, ...]
    build: Callable[[dict[str, Any]], nn.Module]
    bases: tuple[str, ...] = ("ERM",)


def learned_choice(family: LossFamily) -> LossChoice:
    """A learnable family as a loss choice: its hyperparameters are the family's keys, and
    the loss is built from them as every learned loss is, through `LearnedLoss`."""
    keys = family.hparam_keys
    return LossChoice(family.suffix, family.hparams, lambda h: LearnedLoss.from_hparams(
        {k: v for k, v in h.items() if k in keys}).module(), family.bases)


# The paper's family (registered first) leads and the other learned families close the list,
# the order of the tables' rows and of the algorithm list.
_PAPER, *_OTHER_LEARNED = (learned_choice(family) for family in FAMILIES.values())
LOSS_CHOICES: dict[str, LossChoice] = {c.suffix: c for c in (
    _PAPER,
    LossChoice("BCE", (), lambda h: get_loss("bce")),
    LossChoice("Focal", (HParam("focal_gamma", 3.0, lambda r: r.uniform(1, 5), low=0),),
               lambda h: get_loss("focal", gamma=h["focal_gamma"])),
    LossChoice("SCE", (HParam("sce_alpha", 0.1, lambda r: 10 ** r.uniform(-2, 1), low=0),
                       HParam("sce_beta", 1.0, lambda r: 10 ** r.uniform(-1, 0), low=0)),
               lambda h: get_loss("sce", alpha=h["sce_alpha"], beta=h["sce_beta"])),
    LossChoice("GCE", (HParam("gce_q", 0.7, lambda r: r.uniform(0.1, 1), low=0, high=1,
                              low_open=True),),
               lambda h: get_loss("gce", q=h["gce_q"])),
    LossChoice("LS", (HParam("ls_epsilon", 0.1, lambda r: r.uniform(0, 0.3), low=0, high=1),),
               lambda h: get_loss("ls", epsilon=h["ls_epsilon"])),
    *_OTHER_LEARNED,
)}


@dataclass(frozen=True)
class Variant:
    """A base algorithm trained with one of the LOSS_CHOICES in place of cross-entropy."""

    base: str
    loss: LossChoice


# Every variant, in the order they join the algorithm list: the paper's ITL-Net and RSC + ITL
# first, then ERM with each loss of Tables 1 and 3, then any other learned family. Both engines
# build them from this table (domainbed_itl.algorithms.core.variant_class).
VARIANTS: dict[str, Variant] = {f"{base}_{choice.suffix}": Variant(base, choice)
                                for choice in LOSS_CHOICES.values() for base in choice.bases}
