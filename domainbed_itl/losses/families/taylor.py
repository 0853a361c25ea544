"""The Taylor family (Gao et al., ICML 2022, Eq. 8-10): the paper's ITL family, deployed by
ERM_ITL and RSC_ITL and written as {"itl_omega": [w0, w1, ...], "itl_order": k}.

w holds the two centres followed by the coefficients, ordered as
domainbed_itl.losses.taylor_polynomial does. Its starting points for meta-training are the
paper's ITL (order 4), a small random w, and the members closest to cross-entropy (`ce_like`,
`ce_bounded`), from which the first inner loops learn as they would with CE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from domainbed_itl.losses.families.family import LossFamily, Order
from domainbed_itl.losses.loss_registry import get_loss
from domainbed_itl.losses.taylor_polynomial import (
    ITL_OMEGA,
    MIN_ORDER,
    n_taylor_params,
    taylor_loss,
)

DEFAULT_ORDER = 4
# ce_bounded keeps every |w_i| within Table 8's scale (its largest |w_i| is 2.02), so that the
# paper's outer step (gradient descent, lr 0.01, 200 steps) can move w by a sizeable fraction.
BOUNDED_SCALE = 2.0


def _ce_logit_gradients(n: int, num_classes: int, generator: torch.Generator):
    """Logits spanning what training visits (near-uniform to confident, right and wrong), their
    labels, and cross-entropy's gradient with respect to them (softmax - one-hot)."""
    y = torch.randint(num_classes, (n,), generator=generator)
    spread = 3.0 * torch.rand(n, 1, generator=generator, dtype=torch.float64)
    margin = -3.0 + 12.0 * torch.rand(n, 1, generator=generator, dtype=torch.float64)
    z = spread * torch.randn(n, num_classes, generator=generator, dtype=torch.float64)
    z = z + margin * F.one_hot(y, num_classes).double()
    return z, y, torch.softmax(z, 1) - F.one_hot(y, num_classes).double()


def _logit_gradient_design(order: int, z: torch.Tensor, y: torch.Tensor,
                           centres: tuple[float, float]) -> torch.Tensor:
    """Columns: the logit gradient of each coefficient's monomial alone, at `centres`."""
    size = n_taylor_params(order)
    columns = []
    for k in range(2, size):
        w = torch.zeros(size, dtype=torch.float64)
        w[0], w[1], w[k] = centres[0], centres[1], 1.0
        zk = z.clone().requires_grad_()
        (grad,) = torch.autograd.grad(taylor_loss(zk, y, w, order=order) * len(y), zk)
        columns.append(grad.reshape(-1))
    return torch.stack(columns, 1)


def fit_cross_entropy(order: int, num_classes: int, generator: torch.Generator,
                      n: int = 4096) -> torch.Tensor:
    """The family member whose gradients in the logits best match cross-entropy's, in least
    squares over sampled logits, with both centres at 0.

    This is the natural start for learning a replacement of CE: training with it behaves
    like training with CE, so the first inner loops learn and the first hypergradients are
    informative. With the centres fixed the logit gradient is linear in the coefficients,
    so the fit is one (minimum-norm) least-squares solve, in float64.
    """
    z, y, target = _ce_logit_gradients(n, num_classes, generator)
    design = _logit_gradient_design(order, z, y, (0.0, 0.0))
    coef = torch.linalg.pinv(design) @ target.reshape(-1)
    return torch.cat([torch.zeros(2, dtype=torch.float64), coef]).float()


def fit_cross_entropy_bounded(order: int, num_classes: int, generator: torch.Generator,
                              bound: float = BOUNDED_SCALE, n: int = 1024,
                              grid: int = 9) -> torch.Tensor:
    """The member whose logit gradients best match cross-entropy's (least squares over
    sampled logits, as `fit_cross_entropy`) among those with every |w_i| <= `bound`.

    Why: the unconstrained fit needs coefficients near 200 (its monomials nearly cancel),
    which the paper's outer step of 0.01 cannot move. Moving the centres off 0 re-expresses
    the same polynomials with smaller coefficients, so the centres are searched on a
    `grid` x `grid` lattice over [-bound, bound] and the coefficients fitted under the box
    at each; the best keeps two thirds of CE's gradient (ce_like: three quarters).
    """
    from scipy.optimize import lsq_linear  # here: a second of import only this start needs

    z, y, target = _ce_logit_gradients(n, num_classes, generator)
    t = target.reshape(-1).numpy()
    best: tuple[float, torch.Tensor] | None = None
    for c0 in torch.linspace(-bound, bound, grid).tolist():
        for c1 in torch.linspace(-bound, bound, grid).tolist():
            design = _logit_gradient_design(order, z, y, (c0, c1)).numpy()
            fit = lsq_linear(design, t, bounds=(-bound, bound))
            if best is None or fit.cost < best[0]:
                coef = torch.as_tensor(fit.x, dtype=torch.float64)
                best = (float(fit.cost), torch.cat([torch.tensor([c0, c1]).double(), coef]))
    return best[1].float()


def _itl_start(order: int | None, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    if order != DEFAULT_ORDER:
        raise ValueError("--init itl is the paper's order-4 loss; use another --init")
    return torch.tensor(ITL_OMEGA, dtype=torch.float32)


TAYLOR = LossFamily(
    name="taylor",
    suffix="ITL",
    bases=("ERM", "RSC"),
    keys=("itl_omega",),
    default=ITL_OMEGA,
    size=n_taylor_params,
    loss=lambda logits, targets, w, order: taylor_loss(logits, targets, w, order=order),
    module=lambda parameters, order, reduction: get_loss(
        "taylor", omega=list(parameters), order=order, reduction=reduction),
    starts={
        "ce_like": fit_cross_entropy,
        "ce_bounded": fit_cross_entropy_bounded,
        "random": lambda order, num_classes, generator: 0.1 * torch.randn(
            n_taylor_params(order), generator=generator),
        "itl": _itl_start,
    },
    order=Order("itl_order", DEFAULT_ORDER, MIN_ORDER, meta=(2, 3, 4, 5)),
    table_name="ITL-Net",
    label_offset=True,
)
