"""Inter-domain Mixup (Xu et al., 2020; Yan et al., 2020): train on convex combinations of
examples drawn from two different domains, with correspondingly mixed targets."""

from __future__ import annotations

import numpy as np
import torch

from domainbed.algorithms import register_algorithm
from domainbed.algorithms.algorithm import Minibatches
from domainbed.algorithms.erm import ERM
from domainbed.lib.hparam_space import POSITIVE, HParamSpace, register_hparams


@register_hparams("Mixup")
def _mixup_space(space: HParamSpace) -> None:
    space.add("mixup_alpha", 0.2, lambda r: 10 ** r.uniform(-1, 1), POSITIVE)


def random_domain_pairs(minibatches: Minibatches) -> list[tuple[tuple, tuple]]:
    """Pair each domain with the next in a random cyclic order, truncated to equal length."""
    order = torch.randperm(len(minibatches)).tolist()
    pairs = []
    for i, first in enumerate(order):
        (xi, yi), (xj, yj) = minibatches[first], minibatches[order[(i + 1) % len(order)]]
        n = min(len(xi), len(xj))
        pairs.append(((xi[:n], yi[:n]), (xj[:n], yj[:n])))
    return pairs


@register_algorithm
class Mixup(ERM):
    """ERM on mixed pairs; the mixing weight is Beta(alpha, alpha) from NumPy's global stream."""

    def update(self, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
        alpha = self.hparams["mixup_alpha"]
        objective = 0.0
        for (xi, yi), (xj, yj) in random_domain_pairs(minibatches):
            lam = np.random.beta(alpha, alpha)
            logits = self.network(lam * xi + (1 - lam) * xj)
            objective = objective + lam * self.classification_loss(logits, yi) \
                + (1 - lam) * self.classification_loss(logits, yj)
        objective = objective / len(minibatches)

        return self.optimizer_step(objective)
