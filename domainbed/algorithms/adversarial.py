"""Domain-adversarial training: DANN (Ganin et al., 2016) and its class-conditional variant
CDANN (Li et al., 2018).

A discriminator learns to tell the training domains apart from the features; the featurizer and
classifier alternately learn to classify while making that discriminator fail. Steps alternate
as upstream: of every `d_steps_per_g_step + 1` updates, the first `d_steps_per_g_step` train the
discriminator and the last trains the generator.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from domainbed import networks
from domainbed.algorithms import register_algorithm
from domainbed.algorithms.algorithm import Algorithm, Minibatches, concat_minibatches
from domainbed.lib.hparam_space import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Bounds,
    HParamSpace,
    register_hparams,
)

# Adam's momentum coefficient: 1 or more never forgets, so torch refuses it.
ADAM_BETA = Bounds(0.0, 1.0, high_open=True)


@register_hparams("DANN", "CDANN")
def _adversarial_space(space: HParamSpace) -> None:
    space.add("lambda", 1.0, lambda r: 10 ** r.uniform(-2, 2), NON_NEGATIVE)
    space.add("weight_decay_d", 0.0, lambda r: 10 ** r.uniform(-6, -2), NON_NEGATIVE)
    space.add("d_steps_per_g_step", 1, lambda r: int(2 ** r.uniform(0, 3)), AT_LEAST_ONE)
    space.add("grad_penalty", 0.0, lambda r: 10 ** r.uniform(-2, 1), NON_NEGATIVE)
    space.add("beta1", 0.5, lambda r: r.choice([0.0, 0.5]), ADAM_BETA)
    space.add("mlp_width", 256, lambda r: int(2 ** r.uniform(6, 10)), AT_LEAST_ONE)
    space.add("mlp_depth", 3, lambda r: int(r.choice([3, 4, 5])), Bounds(low=2))
    space.add("mlp_dropout", 0.0, lambda r: r.choice([0.0, 0.1, 0.5]), PROBABILITY)
    # The generator and discriminator get their own step sizes, drawn like the common `lr`.
    if space.small_images:
        space.add("lr_g", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5), POSITIVE)
        space.add("lr_d", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5), POSITIVE)
        space.add("weight_decay_g", 0.0, lambda r: 0.0, NON_NEGATIVE)
    else:
        space.add("lr_g", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5), POSITIVE)
        space.add("lr_d", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5), POSITIVE)
        space.add("weight_decay_g", 0.0, lambda r: 10 ** r.uniform(-6, -2), NON_NEGATIVE)


class _DomainAdversarial(Algorithm):
    """Shared machinery; `conditional` adds a class embedding to the discriminator's input and
    `class_balance` reweights its loss so that every class counts equally."""

    conditional = False
    class_balance = False

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int,
                 hparams: dict[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_buffer("update_count", torch.tensor([0]))
        self.featurizer = networks.Featurizer(input_shape, hparams)
        self.classifier = networks.Classifier(
            self.featurizer.n_outputs, num_classes, hparams["nonlinear_classifier"])
        self.discriminator = networks.MLP(self.featurizer.n_outputs, num_domains, hparams)
        self.class_embeddings = nn.Embedding(num_classes, self.featurizer.n_outputs)

        betas = (hparams["beta1"], 0.9)
        self.disc_opt = torch.optim.Adam(
            [*self.discriminator.parameters(), *self.class_embeddings.parameters()],
            lr=hparams["lr_d"], weight_decay=hparams["weight_decay_d"], betas=betas)
        self.gen_opt = torch.optim.Adam(
            [*self.featurizer.parameters(), *self.classifier.parameters()],
            lr=hparams["lr_g"], weight_decay=hparams["weight_decay_g"], betas=betas)

    def _discriminator_loss(self, z: torch.Tensor, y: torch.Tensor,
                            domains: torch.Tensor) -> torch.Tensor:
        disc_input = z + self.class_embeddings(y) if self.conditional else z
        disc_out = self.discriminator(disc_input)
        if self.class_balance:
            # Upstream counts classes up to the largest label present in the batch.
            counts = torch.bincount(y)
            weights = 1.0 / (counts[y] * counts.shape[0]).float()
            loss = (weights * F.cross_entropy(disc_out, domains, reduction="none")).sum()
        else:
            loss = F.cross_entropy(disc_out, domains)
        # Penalise the discriminator's input gradient to keep it smooth.
        input_grad = torch.autograd.grad(
            F.cross_entropy(disc_out, domains, reduction="sum"), [disc_input],
            create_graph=True)[0]
        return loss + self.hparams["grad_penalty"] * input_grad.pow(2).sum(dim=1).mean(dim=0)

    def update(self, minibatches: Minibatches,
               unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
        self.update_count += 1
        x, y = concat_minibatches(minibatches)
        domains = torch.repeat_interleave(
            torch.arange(len(minibatches), device=x.device),
            torch.tensor([len(xb) for xb, _ in minibatches], device=x.device))
        d_steps = self.hparams["d_steps_per_g_step"]

        if self.update_count.item() % (1 + d_steps) < d_steps:
            # Only the discriminator moves: no gradient needs to reach the featurizer.
            with torch.no_grad():
                z = self.featurizer(x)
            disc_loss = self._discriminator_loss(z.requires_grad_(), y, domains)
            self.disc_opt.zero_grad()
            disc_loss.backward()
            self.disc_opt.step()
            return {"disc_loss": disc_loss.item(), "loss": disc_loss.item()}

        z = self.featurizer(x)
        disc_loss = self._discriminator_loss(z, y, domains)
        classifier_loss = self.classification_loss(self.classifier(z), y)
        gen_loss = classifier_loss - self.hparams["lambda"] * disc_loss
        self.disc_opt.zero_grad()
        self.gen_opt.zero_grad()
        gen_loss.backward()
        self.gen_opt.step()
        return {"gen_loss": gen_loss.item(), "loss": gen_loss.item()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.featurizer(x))


@register_algorithm
class DANN(_DomainAdversarial):
    """Unconditional domain-adversarial network."""


@register_algorithm
class CDANN(_DomainAdversarial):
    """Class-conditional domain-adversarial network with class-balanced discriminator loss."""

    conditional = True
    class_balance = True
