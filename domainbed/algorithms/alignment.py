"""Feature alignment across domains: MMD (Li et al., 2018) and Deep CORAL (Sun & Saenko, 2016).

Both add to ERM a penalty on how far apart the domains' feature distributions are, averaged over
all pairs of training domains; they differ only in the distance.
"""

from __future__ import annotations

from typing import Any

import torch

from domainbed.algorithms import register_algorithm
from domainbed.algorithms.algorithm import Minibatches
from domainbed.algorithms.erm import ERM
from domainbed.lib.hparam_space import NON_NEGATIVE, HParamSpace, register_hparams

# Bandwidths of the Gaussian kernel mixture (inverse squared length scales).
GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


@register_hparams("MMD", "CORAL")
def _alignment_space(space: HParamSpace) -> None:
    space.add("mmd_gamma", 1.0, lambda r: 10 ** r.uniform(-1, 1), NON_NEGATIVE)


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, kept strictly positive for stable gradients."""
    a_sq = a.pow(2).sum(dim=-1, keepdim=True)
    b_sq = b.pow(2).sum(dim=-1, keepdim=True)
    return torch.addmm(b_sq.transpose(-2, -1), a, b.transpose(-2, -1), alpha=-2).add_(a_sq) \
        .clamp_min_(1e-30)


def gaussian_mmd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared MMD between two samples under a sum of Gaussian kernels."""

    def mean_kernel(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dist = _squared_distances(u, v)
        kernel = torch.zeros_like(dist)
        for gamma in GAMMAS:
            kernel.add_(torch.exp(dist.mul(-gamma)))
        return kernel.mean()

    return mean_kernel(a, a) + mean_kernel(b, b) - 2 * mean_kernel(a, b)


def coral_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared gap between the two samples' means plus that between their covariances."""
    mean_a, mean_b = a.mean(0, keepdim=True), b.mean(0, keepdim=True)
    cent_a, cent_b = a - mean_a, b - mean_b
    cov_a = cent_a.t() @ cent_a / (len(a) - 1)
    cov_b = cent_b.t() @ cent_b / (len(b) - 1)
    return (mean_a - mean_b).pow(2).mean() + (cov_a - cov_b).pow(2).mean()


class _AlignedERM(ERM):
    """ERM plus `mmd_gamma` times the mean pairwise `distance` between domain features."""

    @staticmethod
    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, Any]:
        n = len(minibatches)
        # One forward per domain, as upstream: with BatchNorm, statistics stay per domain.
        features = [self.featurizer(x) for x, _ in minibatches]
        objective = sum(self.classification_loss(self.classifier(f), y)
                        for f, (_, y) in zip(features, minibatches, strict=True)) / n
        penalty = sum(self.distance(features[i], features[j])
                      for i in range(n) for j in range(i + 1, n))
        if n > 1:
            penalty = penalty / (n * (n - 1) / 2)

        self.optimizer.zero_grad()
        (objective + self.hparams["mmd_gamma"] * penalty).backward()
        self.optimizer.step()
        return {"loss": objective.item(),
                "penalty": penalty.item() if torch.is_tensor(penalty) else float(penalty)}


@register_algorithm
class MMD(_AlignedERM):
    """Match domain feature distributions under a Gaussian-kernel MMD."""

    distance = staticmethod(gaussian_mmd)


@register_algorithm
class CORAL(_AlignedERM):
    """Match the first two moments of the domains' feature distributions."""

    distance = staticmethod(coral_distance)
