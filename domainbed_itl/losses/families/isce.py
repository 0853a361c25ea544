"""The iSCE family (Sec. 4.4): w = (alpha, beta) in alpha * CE + beta * RCE, with RCE's log 0
set to -4 (domainbed_itl.losses.symmetric_ce), so RCE = 4 * (1 - p_true). Deployed by ERM_iSCE
and written as {"isce_alpha": a, "isce_beta": b}; without them ERM_iSCE is SCE at its
defaults (0.1, 1).
"""

from __future__ import annotations

import torch

from domainbed_itl.losses.baselines import symmetric_ce
from domainbed_itl.losses.families.family import LossFamily
from domainbed_itl.losses.loss_registry import get_loss

ISCE = LossFamily(
    name="isce",
    suffix="iSCE",
    bases=("ERM",),
    keys=("isce_alpha", "isce_beta"),
    default=(0.1, 1.0),
    size=lambda order: 2,
    loss=lambda logits, targets, w, order: symmetric_ce(logits, targets, w[0], w[1]).mean(),
    module=lambda parameters, order, reduction: get_loss(
        "isce", alpha=parameters[0], beta=parameters[1], reduction=reduction),
    starts={
        "ce_like": lambda order, num_classes, generator: torch.tensor([1.0, 0.0]),
        "random": lambda order, num_classes, generator: torch.rand(2, generator=generator),
    },
    table_name="iSCE",
)
