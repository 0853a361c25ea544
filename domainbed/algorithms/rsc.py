"""Representation Self-Challenging (Huang et al., ECCV 2020).

Each step mutes, for part of the batch, the features whose gradient most raises the true-class
score, so the classifier cannot lean on a few dominant features.
"""

from __future__ import annotations

import torch

from domainbed.algorithms import register_algorithm
from domainbed.algorithms.erm import ERM
from domainbed.lib.hparam_space import PROBABILITY, HParamSpace, register_hparams
from domainbed_itl.algorithms.core import rsc_update


@register_hparams("RSC")
def _rsc_space(space: HParamSpace) -> None:
    space.add("rsc_f_drop_factor", 1 / 3, lambda r: r.uniform(0, 0.5), PROBABILITY)
    space.add("rsc_b_drop_factor", 1 / 3, lambda r: r.uniform(0, 0.5), PROBABILITY)


@register_algorithm
class RSC(ERM):
    """ERM whose final loss sees features with their most salient units zeroed.

    Feature saliency is the gradient of `saliency_objective` (the true-class logits, as in the
    paper and the public DomainBed); the final update uses `classification_loss`, so a subclass
    that swaps the loss changes the update, and may also override `saliency_objective`.
    """

    def saliency_objective(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar whose gradient w.r.t. the features scores them (Eq. 1 of the paper)."""
        return logits.gather(1, y[:, None]).sum()

    # Muting and update in the one implementation the ITL variants share with a clone of the
    # public DomainBed (domainbed_itl.algorithms.core).
    update = rsc_update
