"""Penalties that ask the risk to behave alike across domains: IRM (Arjovsky et al., 2019) and
V-REx (Krueger et al., 2021).

Both train with a penalty weight of 1 until `*_penalty_anneal_iters` updates, then switch to the
full weight and restart Adam, whose moment estimates would otherwise lag the jump in gradient
scale.
"""

from __future__ import annotations

from typing import Any

import torch

from domainbed.algorithms import register_algorithm
from domainbed.algorithms.algorithm import Minibatches
from domainbed.algorithms.erm import ERM, adam
from domainbed.lib.hparam_space import NON_NEGATIVE, HParamSpace, register_hparams


@register_hparams("IRM")
def _irm_space(space: HParamSpace) -> None:
    space.add("irm_lambda", 1e2, lambda r: 10 ** r.uniform(-1, 5), NON_NEGATIVE)
    space.add("irm_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4)),
              NON_NEGATIVE)


@register_hparams("VREx")
def _vrex_space(space: HParamSpace) -> None:
    space.add("vrex_lambda", 1e1, lambda r: 10 ** r.uniform(-1, 5), NON_NEGATIVE)
    space.add("vrex_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4)),
              NON_NEGATIVE)


class _AnnealedPenalty(ERM):
    """ERM plus a per-domain penalty whose weight jumps after a warm-up."""

    prefix = ""  # hparams are f"{prefix}_lambda" and f"{prefix}_penalty_anneal_iters"

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int,
                 hparams: dict[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_buffer("update_count", torch.tensor([0]))

    def penalty(self, logits: list[torch.Tensor], ys: list[torch.Tensor],
                losses: torch.Tensor, mean_loss: torch.Tensor) -> torch.Tensor:
        """The penalty from per-domain logits, labels, risks and their mean."""
        raise NotImplementedError

    def update(self, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
        anneal_iters = self.hparams[f"{self.prefix}_penalty_anneal_iters"]
        count = int(self.update_count.item())
        weight = self.hparams[f"{self.prefix}_lambda"] if count >= anneal_iters else 1.0

        all_logits = self.network(torch.cat([x for x, _ in minibatches]))
        logits = list(all_logits.split([len(x) for x, _ in minibatches]))
        ys = [y for _, y in minibatches]
        losses = torch.stack([self.classification_loss(lg, y)
                              for lg, y in zip(logits, ys, strict=True)])
        nll = losses.mean()
        penalty = self.penalty(logits, ys, losses, nll)
        loss = nll + weight * penalty

        if count == anneal_iters:
            self.optimizer = adam(self.network.parameters(), self.hparams)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.update_count += 1
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}


@register_algorithm
class IRM(_AnnealedPenalty):
    """IRMv1: the squared gradient of each domain's risk w.r.t. a dummy scale on the logits."""

    prefix = "irm"

    def _scale_gradient_product(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Gradients from two halves of the batch multiplied: an unbiased estimate of the square.
        scale = torch.ones((), device=logits.device, requires_grad=True)
        grad_even = torch.autograd.grad(
            self.classification_loss(logits[::2] * scale, y[::2]), [scale], create_graph=True)[0]
        grad_odd = torch.autograd.grad(
            self.classification_loss(logits[1::2] * scale, y[1::2]), [scale],
            create_graph=True)[0]
        return (grad_even * grad_odd).sum()

    def penalty(self, logits: list[torch.Tensor], ys: list[torch.Tensor],
                losses: torch.Tensor, mean_loss: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._scale_gradient_product(lg, y)
                            for lg, y in zip(logits, ys, strict=True)]).mean()


@register_algorithm
class VREx(_AnnealedPenalty):
    """V-REx: the variance of the per-domain risks."""

    prefix = "vrex"

    def penalty(self, logits: list[torch.Tensor], ys: list[torch.Tensor],
                losses: torch.Tensor, mean_loss: torch.Tensor) -> torch.Tensor:
        return (losses - mean_loss).pow(2).mean()
