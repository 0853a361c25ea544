"""Which algorithms get which loss, and each loss's hyperparameters: one table for both engines.

This module imports nothing from `domainbed`, so the same table serves our engine (through
the plugin) and a clone of the public DomainBed (through the import hook), whose `domainbed`
package shadows ours.

Search ranges for sweeps, and where they come from:
- itl_omega: not searched; the loss is learned once (Table 8) and deployed as is. Pass
  `--hparams '{"itl_omega": [...]}'` (and "itl_order" for orders other than 4) to deploy a
  loss learned by `domainbed_itl.meta`.
- focal_gamma: default 3, the best fixed value of Mukhoti et al. (2020); uniform in [1, 5],
  the values they use (fixed 1 to 3, and 5 and 3 in their sample-dependent FLSD-53).
- sce_alpha, sce_beta: defaults 0.1 and 1 (Wang et al. 2019, CIFAR-10); log-uniform over
  [0.01, 10] and [0.1, 1], which spans their per-dataset settings (alpha from 0.01 on MNIST to
  6 on CIFAR-100, beta from 0.1 to 1).
- gce_q: default 0.7 (Zhang & Sabuncu 2018); uniform in [0.1, 1], between near-CE and MAE.
- ls_epsilon: default 0.1 (Szegedy et al. 2016); uniform in [0, 0.3].
- isce_alpha, isce_beta: learned by meta-learning and deployed with --hparams like itl_omega,
  so not searched; without them they start at SCE's defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
from torch import nn

from domainbed_itl.losses import ITL_OMEGA, get_loss, n_taylor_params

Draw = Callable[[np.random.RandomState], Any]


@dataclass(frozen=True)
class HParam:
    """One loss hyperparameter; an override must have its default's type and lie between
    `low` and `high` (inclusive, but `low` itself is excluded when `low_open`)."""

    name: str
    default: Any
    draw: Draw
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False

    @property
    def bounded(self) -> bool:
        return (self.low, self.high) != (-math.inf, math.inf)


@dataclass(frozen=True)
class LossChoice:
    """A loss an algorithm can be given: its hyperparameters and how to build it from them."""

    suffix: str
    hparams: tuple[HParam, ...]
    build: Callable[[dict[str, Any]], nn.Module]


def fresh(value: Any) -> Any:
    """A new list for sequence values, so no two hparams dicts share one."""
    return list(value) if isinstance(value, (list, tuple)) else value


def taylor_from_hparams(hparams: dict[str, Any]) -> nn.Module:
    """The Taylor loss named by itl_omega / itl_order, with a clear error for a wrong length."""
    order = hparams.get("itl_order", 4)
    if isinstance(order, bool) or not isinstance(order, int) or order < 2:
        raise ValueError(f"hparam itl_order must be an integer >= 2, got {order!r}")
    omega = hparams["itl_omega"]
    need = n_taylor_params(order)
    if not isinstance(omega, (list, tuple)) or len(omega) != need:
        got = f"{len(omega)} values" if isinstance(omega, (list, tuple)) else repr(omega)
        raise ValueError(f"hparam itl_omega must be a list of {need} numbers for itl_order "
                         f"{order} (2 centres + {need - 2} coefficients), got {got}")
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in omega):
        raise ValueError(f"hparam itl_omega must hold numbers only, got {omega!r}")
    return get_loss("taylor", omega=[float(v) for v in omega], order=order)


def _fixed(value: Any) -> Draw:
    return lambda r: fresh(value)


LOSS_CHOICES: dict[str, LossChoice] = {c.suffix: c for c in (
    LossChoice("ITL", (HParam("itl_omega", ITL_OMEGA, _fixed(ITL_OMEGA)),
                       HParam("itl_order", 4, _fixed(4), low=2)),
               taylor_from_hparams),
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
    LossChoice("iSCE", (HParam("isce_alpha", 0.1, _fixed(0.1)),
                        HParam("isce_beta", 1.0, _fixed(1.0))),
               lambda h: get_loss("isce", alpha=h["isce_alpha"], beta=h["isce_beta"])),
)}

@dataclass(frozen=True)
class Variant:
    """A base algorithm trained with one of the LOSS_CHOICES in place of cross-entropy."""

    base: str
    loss: LossChoice


# Every variant, in the order they join the algorithm list: the paper's ITL-Net and RSC + ITL
# first, then ERM with each loss of Tables 1 and 3. Both engines build them from this table
# (domainbed_itl.algorithms.core.variant_class).
VARIANTS: dict[str, Variant] = {
    "ERM_ITL": Variant("ERM", LOSS_CHOICES["ITL"]),
    "RSC_ITL": Variant("RSC", LOSS_CHOICES["ITL"]),
    "ERM_BCE": Variant("ERM", LOSS_CHOICES["BCE"]),
    "ERM_Focal": Variant("ERM", LOSS_CHOICES["Focal"]),
    "ERM_SCE": Variant("ERM", LOSS_CHOICES["SCE"]),
    "ERM_GCE": Variant("ERM", LOSS_CHOICES["GCE"]),
    "ERM_LS": Variant("ERM", LOSS_CHOICES["LS"]),
    "ERM_iSCE": Variant("ERM", LOSS_CHOICES["iSCE"]),
}
