"""The Taylor-polynomial loss family (Gao et al., ICML 2022, Eq. 8-10) and ITL, its learned member.

Why a polynomial: its centre and its derivatives at the centre are free parameters, so a loss
can be learned by gradient descent on a dozen numbers instead of searched by hand.

Parameterisation (order k >= 2). With p the softmax probability of a class and y its one-hot
indicator, u = p - w0 and v = y - w1 (the expansion centre (w0, w1) of Eq. 9), the per-class
polynomial is

    l(p, y) = sum_j w[2 + j] * u**a_j * v**b_j

over every monomial with 1 <= a_j and a_j + b_j <= k. Monomials with a = 0 depend on the label
alone; they shift the loss but give no gradient to the prediction, so they are dropped (A.1).
That leaves k(k+1)/2 coefficients, 2 + k(k+1)/2 parameters: 5, 8, 12, 17 for orders 2-5.

Order of the coefficients: first the pure-prediction terms a = 1..k (b = 0), then the mixed
terms (b >= 1) by total degree. Up to degree 4 the mixed terms follow Eq. 10 exactly:
(1,1); (1,2), (2,1); (3,1), (1,3), (2,2). So order 4 is Eq. 10 term by term, and orders 2 and 3
are the same listing cut at their degree (order 3 is TaylorGLO's 8-parameter form). Degree-5
mixed terms, which the paper never prints, come by rising a: (1,4), (2,3), (3,2), (4,1).

Sign: with Table 8's values the polynomial *rises* with the true-class probability, so the loss
is its negative mean over the C classes (Eq. 8 averages over classes; TaylorGLO negates), then
averaged over the batch. Checked by training an MLP 784-256-10 on 5,000 MNIST images (400 Adam
steps, lr 1e-3, 2,000 test images): 0.895 accuracy with CE, 0.888 with this ITL, 0.002 with
the opposite sign (tests/domainbed_itl/losses/test_losses.py keeps that check).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from domainbed_itl.losses.checks import check_order, finite_numbers
from domainbed_itl.losses.loss_registry import register_loss

# Table 8, read as w0, w1, ..., w11 (the header's "w0, w2, ..." lists twelve numbers).
ITL_OMEGA: tuple[float, ...] = (
    -2.0193, -1.2234, 0.1363, 0.1269, -0.4566, -0.1016,
    -0.2545, 1.0971, -0.9203, 0.2368, 0.4795, 0.9975,
)

MIN_ORDER = 2
REDUCTIONS = ("mean", "sum", "none")

# Mixed monomials (a, b) up to degree 4 in Eq. 10's printed order.
_EQ10_MIXED: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (2, 2))


def taylor_terms(order: int) -> tuple[tuple[int, int], ...]:
    """Exponents (a, b) of (p - w0)^a (y - w1)^b, one per coefficient w[2:], in order."""
    check_order(order, MIN_ORDER, "Taylor order")
    pure = tuple((a, 0) for a in range(1, order + 1))
    mixed = [t for t in _EQ10_MIXED if sum(t) <= order]
    for degree in range(5, order + 1):
        mixed.extend((a, degree - a) for a in range(1, degree))
    return pure + tuple(mixed)


def n_taylor_params(order: int) -> int:
    """Length of w for a given order: the centre (w0, w1) plus one coefficient per term."""
    return 2 + len(taylor_terms(order))


def check_omega(omega: torch.Tensor, order: int) -> None:
    """ValueError unless `omega` is the parameter vector of an order-`order` loss."""
    need = n_taylor_params(order)
    if omega.shape != (need,):
        raise ValueError(f"an order-{order} Taylor loss needs {need} parameters, got shape "
                         f"{tuple(omega.shape)}")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce_loss(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply a torch-style `reduction` to per-example losses."""
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    return per_example


def check_inputs(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Fail with a clear message on anything but (N, C) logits and N integer labels."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1] or targets.dtype.is_floating_point:
        raise ValueError("targets must be integer class indices of shape (batch,), got "
                         f"{targets.dtype} {tuple(targets.shape)}")


def taylor_loss(logits: torch.Tensor, targets: torch.Tensor, omega: torch.Tensor,
                order: int = 4, reduction: str = "mean") -> torch.Tensor:
    """The Taylor loss of `logits` against integer `targets`, with parameters `omega`.

    Pure tensor code: differentiable (any number of times) in both `logits` and `omega`, so it
    serves inside torch.func.functional_call and autograd.grad(create_graph=True) for
    meta-learning. Computed in the dtype of `logits`.
    """
    check_inputs(logits, targets)
    _check_reduction(reduction)
    omega = torch.as_tensor(omega).to(device=logits.device, dtype=logits.dtype)
    check_omega(omega, order)
    terms = taylor_terms(order)
    p = torch.softmax(logits, dim=1)
    y = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    u, v = p - omega[0], y - omega[1]
    u_pow = [None, u] + [None] * (order - 1)
    v_pow = [torch.ones_like(v), v] + [None] * (order - 1)
    for n in range(2, order + 1):
        u_pow[n] = u_pow[n - 1] * u
        v_pow[n] = v_pow[n - 1] * v
    poly = sum(omega[2 + j] * u_pow[a] * v_pow[b] for j, (a, b) in enumerate(terms))
    return reduce_loss(-poly.mean(dim=1), reduction)


@register_loss("taylor")
class TaylorLoss(nn.Module):
    """A member of the Taylor family, used like nn.CrossEntropyLoss: loss(logits, labels).

    `omega` is a buffer by default (moves with .to(), saved in state_dict, not trained);
    with `learnable=True` it is an nn.Parameter, for learning the loss itself.
    """

    def __init__(self, omega: Sequence[float] | torch.Tensor, order: int = 4,
                 reduction: str = "mean", learnable: bool = False):
        super().__init__()
        _check_reduction(reduction)
        omega = torch.as_tensor(omega, dtype=torch.get_default_dtype()).detach().clone()
        check_omega(omega, order)
        finite_numbers(omega.tolist(), "Taylor")
        self.order = order
        self.reduction = reduction
        if learnable:
            self.omega = nn.Parameter(omega)
        else:
            self.register_buffer("omega", omega)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return taylor_loss(input, target, self.omega, self.order, self.reduction)

    def extra_repr(self) -> str:
        return f"order={self.order}, reduction={self.reduction!r}"


@register_loss("itl")
class ITL(TaylorLoss):
    """ITL: the order-4 Taylor loss at Table 8's learned parameters, a drop-in for CE.

    loss = -(1/C) sum_c l(p_c, y_c), averaged over the batch, with l as in Eq. 10. The minus
    sign is what makes it a loss: with Table 8's values l grows with the true-class probability
    (l(p, 1) goes from 31.9 at p = 0 to 51.9 at p = 1), and training on +l drives accuracy to
    zero (see the module docstring). Pass `omega` to deploy another learned order-4 loss the
    same way.
    """

    def __init__(self, omega: Sequence[float] | torch.Tensor = ITL_OMEGA,
                 reduction: str = "mean", learnable: bool = False):
        super().__init__(omega, order=4, reduction=reduction, learnable=learnable)
