"""The hand-designed losses the paper compares ITL with (Tables 1 and 3, Fig. 5).

Each takes (logits, integer labels) like nn.CrossEntropyLoss, so any of them replaces CE in
one line. Where a paper leaves a constant open, the docstring says which value is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from domainbed_itl.losses.loss_registry import register_loss
from domainbed_itl.losses.taylor_polynomial import check_inputs, reduce_loss

# Wang et al. (2019) replace log 0 in the reverse cross-entropy by A = -4.
RCE_LOG_ZERO = -4.0


class ClassificationLoss(nn.Module):
    """Shared plumbing: input checks and the torch-style `reduction` over per-example losses."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

    def per_example(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(input, target)
        return reduce_loss(self.per_example(input, target), self.reduction)


def true_class_log_prob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)


@register_loss("ce")
class CrossEntropy(ClassificationLoss):
    """Cross-entropy, the loss every other one here is measured against."""

    def per_example(self, logits, targets):
        return F.cross_entropy(logits, targets, reduction="none")


@register_loss("bce")
class BinaryCrossEntropy(ClassificationLoss):
    """One-vs-all: each class a binary task on sigmoid(logit), averaged over the classes (so
    the batch mean equals nn.BCEWithLogitsLoss on one-hot targets)."""

    def per_example(self, logits, targets):
        onehot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").mean(1)


@register_loss("focal")
class FocalLoss(ClassificationLoss):
    """Focal loss -(1 - p)^gamma log p (Lin et al. 2017), as used for calibration by Mukhoti
    et al. (2020), whose best fixed value gamma = 3 is the default."""

    def __init__(self, gamma: float = 3.0, reduction: str = "mean"):
        super().__init__(reduction)
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def per_example(self, logits, targets):
        log_p = true_class_log_prob(logits, targets)
        if self.gamma == 0:
            return -log_p
        # 1 - p from log p without cancellation; the floor keeps the gradient of a fractional
        # power finite where p rounds to 1 (the loss there is 0 either way).
        miss = (-torch.expm1(log_p)).clamp_min(torch.finfo(logits.dtype).tiny)
        return -(miss ** self.gamma) * log_p


def symmetric_ce(logits: torch.Tensor, targets: torch.Tensor, alpha, beta) -> torch.Tensor:
    """Per-example alpha * CE + beta * RCE (Wang et al. 2019) with log 0 = -4 in RCE, which
    makes RCE = 4 (1 - p_true). alpha and beta may be tensors that require grad."""
    ce = F.cross_entropy(logits, targets, reduction="none")
    p_true = true_class_log_prob(logits, targets).exp()
    return alpha * ce + beta * (-RCE_LOG_ZERO) * (1.0 - p_true)


@register_loss("sce")
class SymmetricCE(ClassificationLoss):
    """Symmetric cross-entropy. Defaults alpha = 0.1, beta = 1 are Wang et al.'s CIFAR-10
    setting (10 classes, the closest of theirs to the DG benchmarks' 7-65)."""

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.alpha, self.beta = float(alpha), float(beta)

    def per_example(self, logits, targets):
        return symmetric_ce(logits, targets, self.alpha, self.beta)


@register_loss("isce")
class ISCE(ClassificationLoss):
    """iSCE (Sec. 4.4): symmetric CE whose (alpha, beta) are learned by meta-learning.

    `weights` = (alpha, beta) is a buffer by default, an nn.Parameter with learnable=True.
    """

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, reduction: str = "mean",
                 learnable: bool = False):
        super().__init__(reduction)
        weights = torch.tensor([float(alpha), float(beta)], dtype=torch.get_default_dtype())
        if learnable:
            self.weights = nn.Parameter(weights)
        else:
            self.register_buffer("weights", weights)

    def per_example(self, logits, targets):
        w = self.weights.to(logits.dtype)
        return symmetric_ce(logits, targets, w[0], w[1])


@register_loss("gce")
class GeneralizedCE(ClassificationLoss):
    """Generalised cross-entropy (1 - p^q) / q (Zhang & Sabuncu 2018): CE as q -> 0, MAE at
    q = 1. Default q = 0.7, the value they use throughout."""

    def __init__(self, q: float = 0.7, reduction: str = "mean"):
        super().__init__(reduction)
        if not 0 < q <= 1:
            raise ValueError(f"GCE q must be in (0, 1], got {q}")
        self.q = float(q)

    def per_example(self, logits, targets):
        # p^q through exp(q log p): finite gradient even where p underflows to 0.
        return (1.0 - torch.exp(self.q * true_class_log_prob(logits, targets))) / self.q


@register_loss("ls")
class LabelSmoothingCE(ClassificationLoss):
    """Cross-entropy against labels smoothed towards uniform by `epsilon` (Szegedy et al.
    2016; Pereyra et al. 2017). Default 0.1, the customary value."""

    def __init__(self, epsilon: float = 0.1, reduction: str = "mean"):
        super().__init__(reduction)
        if not 0 <= epsilon <= 1:
            raise ValueError(f"label smoothing epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)

    def per_example(self, logits, targets):
        return F.cross_entropy(logits, targets, reduction="none", label_smoothing=self.epsilon)
