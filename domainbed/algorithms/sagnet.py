"""Style-Agnostic Networks (Nam et al., CVPR 2021).

A content head learns from features whose style (per-example feature mean and variance) is
mixed with another example's; a style head learns from features whose content is shuffled; and
the featurizer is pushed to make the style head uninformative.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from domainbed import networks
from domainbed.algorithms import register_algorithm
from domainbed.algorithms.algorithm import Algorithm, Minibatches, concat_minibatches
from domainbed.algorithms.erm import adam
from domainbed.lib.hparam_space import NON_NEGATIVE, HParamSpace, register_hparams


@register_hparams("SagNet")
def _sagnet_space(space: HParamSpace) -> None:
    space.add("sag_w_adv", 0.1, lambda r: 10 ** r.uniform(-2, 1), NON_NEGATIVE)


def randomize(features: torch.Tensor, what: str, eps: float = 1e-5) -> torch.Tensor:
    """Swap style (interpolate statistics with a random partner) or content (shuffle it).

    Statistics are taken over the last axis, or over space for 4-d feature maps. The random
    draws come from the CPU generator, as upstream, so a seed means the same on any device.
    """
    shape = features.shape
    alpha = torch.rand(shape[0], 1).to(features.device)
    if features.dim() == 4:
        features = features.view(shape[0], shape[1], -1)
        alpha = alpha.unsqueeze(-1)
    mean = features.mean(-1, keepdim=True)
    var = features.var(-1, keepdim=True)
    normalised = (features - mean) / (var + eps).sqrt()

    partner = torch.randperm(shape[0])
    if what == "style":
        mean = alpha * mean + (1 - alpha) * mean[partner]
        var = alpha * var + (1 - alpha) * var[partner]
    else:
        normalised = normalised[partner].detach()
    return (normalised * (var + eps).sqrt() + mean).view(*shape)


@register_algorithm
class SagNet(Algorithm):
    """Featurizer `network_f`, content head `network_c` (used to predict), style head
    `network_s`, each with its own Adam."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int,
                 hparams: dict[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.network_f = networks.Featurizer(input_shape, hparams)
        self.network_c = networks.Classifier(
            self.network_f.n_outputs, num_classes, hparams["nonlinear_classifier"])
        self.network_s = networks.Classifier(
            self.network_f.n_outputs, num_classes, hparams["nonlinear_classifier"])
        self.optimizer_f = adam(self.network_f.parameters(), hparams)
        self.optimizer_c = adam(self.network_c.parameters(), hparams)
        self.optimizer_s = adam(self.network_s.parameters(), hparams)
        self.weight_adv = hparams["sag_w_adv"]

    def forward_c(self, x: torch.Tensor) -> torch.Tensor:
        return self.network_c(randomize(self.network_f(x), "style"))

    def forward_s(self, x: torch.Tensor) -> torch.Tensor:
        return self.network_s(randomize(self.network_f(x), "content"))

    def update(self, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
        x, y = concat_minibatches(minibatches)

        self.optimizer_f.zero_grad()
        self.optimizer_c.zero_grad()
        loss_c = self.classification_loss(self.forward_c(x), y)
        loss_c.backward()
        self.optimizer_f.step()
        self.optimizer_c.step()

        self.optimizer_s.zero_grad()
        loss_s = self.classification_loss(self.forward_s(x), y)
        loss_s.backward()
        self.optimizer_s.step()

        # Adversary: push the style head's prediction towards uniform (mean log-probability).
        self.optimizer_f.zero_grad()
        loss_adv = -self.weight_adv * F.log_softmax(self.forward_s(x), dim=1).mean(1).mean()
        loss_adv.backward()
        self.optimizer_f.step()
        return {"loss": loss_c.item(), "loss_c": loss_c.item(), "loss_s": loss_s.item(),
                "loss_adv": loss_adv.item()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network_c(self.network_f(x))
