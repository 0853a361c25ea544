"""Evaluate a loss on a fixed batch before anything trains with it.

Finite parameters do not make a usable loss: with coefficients near 1e308 every term of a Taylor
loss overflows, and a run trained on it logs NaN from its first step. A loader that only checks
the numbers would accept such a file and let a comparison train its other runs for hours before
this one fails, so a loaded loss is also evaluated here, value and gradient, on logits that span
confident and uncertain predictions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# MNIST's class count; the probe needs some count, and the losses are defined for any.
PROBE_CLASSES = 10
PROBE_SIZE = 64
PROBE_LOGIT_SCALE = 5.0


def probe_batch(num_classes: int = PROBE_CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels): fixed normal logits of scale PROBE_LOGIT_SCALE, every class labelled."""
    generator = torch.Generator().manual_seed(0)
    logits = PROBE_LOGIT_SCALE * torch.randn(PROBE_SIZE, num_classes, generator=generator)
    labels = torch.arange(PROBE_SIZE) % num_classes
    return logits, labels


def probe_problem(loss: nn.Module, num_classes: int = PROBE_CLASSES) -> str | None:
    """What is wrong with `loss` (used like nn.CrossEntropyLoss, mean reduction) on the probe
    batch, or None when its value and its gradient with respect to the logits are finite."""
    logits, labels = probe_batch(num_classes)
    logits.requires_grad_(True)
    value = loss(logits, labels)
    if not math.isfinite(value.item()):
        return f"its value on a probe batch is {value.item()}"
    (grad,) = torch.autograd.grad(value, logits)
    if not bool(torch.isfinite(grad).all()):
        return "its gradient on a probe batch is not finite"
    return None
