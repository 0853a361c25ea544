"""Group DRO (Sagawa et al., 2020): minimise a weighted risk whose weights drift, by
exponentiated-gradient ascent, towards the domains with the highest loss."""

from __future__ import annotations

from typing import Any

import torch

from domainbed.algorithms import register_algorithm
from domainbed.algorithms.algorithm import Minibatches
from domainbed.algorithms.erm import ERM
from domainbed.lib.hparam_space import NON_NEGATIVE, HParamSpace, register_hparams


@register_hparams("GroupDRO")
def _groupdro_space(space: HParamSpace) -> None:
    space.add("groupdro_eta", 1e-2, lambda r: 10 ** r.uniform(-3, -1), NON_NEGATIVE)


@register_algorithm
class GroupDRO(ERM):
    """ERM over domains weighted by `q`, the adversary's distribution over domains."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int,
                 hparams: dict[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        # Unnormalised until the first update, as upstream; a buffer so checkpoints carry it.
        self.register_buffer("q", torch.ones(num_domains))

    def update(self, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
        # One forward per domain, as upstream: with BatchNorm, statistics stay per domain.
        losses = torch.stack([self.classification_loss(self.network(x), y)
                              for x, y in minibatches])
        self.q.mul_(torch.exp(self.hparams["groupdro_eta"] * losses.detach()))
        self.q.div_(self.q.sum())
        loss = torch.dot(losses, self.q)

        return self.optimizer_step(loss)
