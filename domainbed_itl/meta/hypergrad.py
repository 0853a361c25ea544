"""Hypergradient of the held-out loss with respect to the loss parameters w, by the implicit
function theorem (IFT), with H^-1 v found by Hessian-vector products (`meta.linear_solve`).

At an inner optimum theta*(w), dL_train/dtheta = 0, so

    dM/dw = - dM/dtheta . H^-1 . d2L_train/(dtheta dw),     H = d2L_train/dtheta2.

With v = dM/dtheta and u ~ H^-1 v, the hypergradient is - u . d2L_train/(dtheta dw). The
paper's solver is the truncated Neumann series u = alpha sum_{j=0..J} (I - alpha H)^j v
(Lorraine et al., 2020; Algorithm 2 of the paper prints the output without the alpha factor);
conjugate gradients on the (damped) system is the alternative at the same number of HVPs.
Everything is a Hessian-vector or mixed vector product, i.e. a double backward through one
batch; no Hessian is ever materialised, except in `exact_hypergradient`, which exists to check
the estimates on models small enough to afford it.

Callers supply the two objectives as closures over fixed batches:
`train_loss(params, w) -> scalar` (L_w on a batch of source data) and
`val_loss(params) -> scalar` (M, e.g. cross-entropy on held-out data).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from domainbed_itl.meta.base_model import Params
from domainbed_itl.meta.linear_solve import (
    Solution,
    SolverSettings,
    Space,
    solve,
    top_eigenvalue,
)

TrainLoss = Callable[[Params, torch.Tensor], torch.Tensor]
ValLoss = Callable[[Params], torch.Tensor]


@dataclass
class Hypergradient:
    """dM/dw estimate and what it was computed from.

    `neumann_ratio` is the relative residual the solve leaves (for Neumann
    |(I - alpha H)^J v| / |v|): well below 1 means the solve has converged; above 1 means the
    series diverged even after its restarts and the estimate is not to be trusted. `alpha` is
    the Neumann step finally used, `restarts` the number of Neumann restarts (or CG stops at
    negative curvature), `hvps` the Hessian-vector products spent, `solution` u ~ H^-1 v
    (a warm start for the next solve).
    """

    grad: torch.Tensor
    val_loss: float
    v_norm: float
    neumann_ratio: float
    alpha: float = float("nan")
    restarts: int = 0
    hvps: int = 0
    solution: list[torch.Tensor] | None = field(default=None, repr=False)


def _fresh(params: Sequence[torch.Tensor]) -> Params:
    return [p.detach().requires_grad_() for p in params]


def _norm(vectors: Sequence[torch.Tensor]) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in vectors)))


def hessian_vector_product(
    grads: Sequence[torch.Tensor], params: Params, vector: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """H @ vector, from `grads` = dL/dparams built with create_graph=True (graph is kept)."""
    return list(torch.autograd.grad(grads, params, grad_outputs=list(vector),
                                    retain_graph=True))


def mixed_vector_product(
    grads: Sequence[torch.Tensor], w: torch.Tensor, vector: Sequence[torch.Tensor]
) -> torch.Tensor:
    """vector . d2L/(dparams dw), a vector shaped like w; `grads` must be built with
    create_graph=True from a loss that depends on `w` (a leaf with requires_grad)."""
    (mixed,) = torch.autograd.grad(grads, w, grad_outputs=list(vector), retain_graph=True)
    return mixed


def _objectives(
    params: Params, w: torch.Tensor, train_loss: TrainLoss, val_loss: ValLoss
) -> tuple[Params, torch.Tensor, tuple[torch.Tensor, ...], list[torch.Tensor], float]:
    theta = _fresh(params)
    w_leaf = w.detach().requires_grad_()
    m = val_loss(theta)
    v = list(torch.autograd.grad(m, theta))
    grads = torch.autograd.grad(train_loss(theta, w_leaf), theta, create_graph=True)
    return theta, w_leaf, grads, v, float(m.detach())


def solve_with(
    grads: Sequence[torch.Tensor], params: Params, v: Sequence[torch.Tensor],
    settings: SolverSettings, space: Space, start: Sequence[torch.Tensor] | None = None,
) -> Solution:
    """u ~ H^-1 v for the Hessian behind `grads` (create_graph=True), by `settings`."""
    return solve(lambda x: hessian_vector_product(grads, params, x), v, settings, space, start)


def implicit_hypergradient(
    params: Params,
    w: torch.Tensor,
    train_loss: TrainLoss,
    val_loss: ValLoss,
    alpha: float | str = 0.01,
    terms: int = 15,
    solver: str = "neumann",
    damping: float = 0.0,
    start: Sequence[torch.Tensor] | None = None,
) -> Hypergradient:
    """dM/dw at the trained `params` by IFT, H^-1 v by `solver` with `terms` HVPs (Neumann's
    J; `alpha` its step or "auto"; CG's `damping` and warm `start`).

    The Hessian and the mixed derivative both come from the one `train_loss` closure, i.e. the
    same batch of training data. `params` and `w` are not modified.
    """
    settings = SolverSettings(solver, terms, alpha, damping)
    theta, w_leaf, grads, v, m = _objectives(params, w, train_loss, val_loss)
    sol = solve_with(grads, theta, v, settings, Space(), start)
    grad = -mixed_vector_product(grads, w_leaf, sol.u)
    return Hypergradient(grad.detach(), m, _norm(v), float(sol.residual), float(sol.alpha),
                         int(sol.restarts), sol.hvps, [t.detach() for t in sol.u])


def exact_hypergradient(
    params: Params, w: torch.Tensor, train_loss: TrainLoss, val_loss: ValLoss
) -> torch.Tensor:
    """dM/dw with the Hessian built row by row and solved exactly (small models only: costs one
    backward pass per parameter and O(n^2) memory). The reference for the Neumann estimate."""
    theta, w_leaf, grads, v, _ = _objectives(params, w, train_loss, val_loss)
    hessian = full_hessian(grads, theta)
    flat_v = torch.cat([t.reshape(-1) for t in v])
    u = torch.linalg.solve(hessian, flat_v)
    pieces = list(torch.split(u, [t.numel() for t in theta]))
    u_list = [piece.reshape(t.shape) for piece, t in zip(pieces, theta, strict=True)]
    return (-mixed_vector_product(grads, w_leaf, u_list)).detach()


def full_hessian(grads: Sequence[torch.Tensor], params: Params) -> torch.Tensor:
    """The n x n Hessian from `grads` (create_graph=True), one row per backward pass."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    rows = []
    for i in range(flat.numel()):
        row = torch.autograd.grad(flat[i], params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (r if r is not None else torch.zeros_like(p)).reshape(-1)
                    for r, p in zip(row, params, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def top_hessian_eigenvalue(
    params: Params,
    w: torch.Tensor,
    train_loss: TrainLoss,
    iters: int = 20,
    generator: torch.Generator | None = None,
) -> float:
    """Largest-magnitude Hessian eigenvalue of `train_loss` by power iteration on HVPs.

    The Neumann series converges for alpha < 2 / lambda_max (positive curvature); this is how
    the default alpha is checked against real inner-loop end points.
    """
    theta = _fresh(params)
    grads = torch.autograd.grad(train_loss(theta, w.detach()), theta, create_graph=True)
    start = [torch.randn(t.shape, generator=generator).to(t) for t in theta]
    return float(top_eigenvalue(lambda x: hessian_vector_product(grads, theta, x), start, iters,
                                Space()))
