"""The real inner end points of the paper's setting and the reference hypergradients there,
against which `endpoint_study` measures the trainer's estimates.

An end point is a leave-one-domain-out split built exactly as the trainer builds it
(`splits`: same initial weights, minibatches, held-out and Hessian batches) and trained for T
SGD steps with L_w. A ReLU MLP's Hessian at such a point is singular and indefinite, so the IFT
reference needs a damped, symmetric-indefinite solve (MINRES) and the unrolled reference (reverse
mode through the steps actually taken) is what a gradient step on w really descends.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from domainbed_itl.meta.base_model import Params, mlp_forward
from domainbed_itl.meta.families import LossFamily
from domainbed_itl.meta.hypergrad import (
    _objectives,
    hessian_vector_product,
    mixed_vector_product,
)
from domainbed_itl.meta.inner import train_on_batches
from domainbed_itl.meta.linear_solve import Space, top_eigenvalue
from domainbed_itl.meta.splits import (
    DomainSet,
    MetaConfig,
    SplitBatches,
    finish_split,
    held_out_loss,
    start_split,
)

POWER_ITERS = 20
# Checkpoints of the inner loop kept for the unrolled gradient: one every SEGMENT steps.
SEGMENT = 50

Flat = torch.Tensor


def _flatten(vectors: Sequence[torch.Tensor]) -> Flat:
    return torch.cat([t.reshape(-1) for t in vectors])


def _unflatten(flat: Flat, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    pieces = torch.split(flat, [t.numel() for t in like])
    return [p.reshape(t.shape) for p, t in zip(pieces, like, strict=True)]


def minres(matvec: Callable[[Flat], Flat], b: Flat, tol: float, max_iters: int
           ) -> tuple[Flat, int]:
    """x ~ A^-1 b for symmetric (possibly indefinite) A by MINRES (Paige and Saunders, 1975):
    Lanczos vectors with a running QR of the tridiagonal matrix, minimising |b - A x| over the
    Krylov space. Stops when the recurrence's residual estimate is below `tol` |b|. Returns
    (x, products spent)."""
    beta1 = float(b.norm())
    x = torch.zeros_like(b)
    if beta1 == 0:
        return x, 0
    r1, r2, y = b.clone(), b.clone(), b.clone()
    beta, oldb, dbar, epsln, phibar = beta1, 0.0, 0.0, 0.0, beta1
    cs, sn = -1.0, 0.0
    w, w2 = torch.zeros_like(b), torch.zeros_like(b)
    k = 0
    while k < max_iters:
        k += 1
        v = y / beta
        y = matvec(v)
        if k >= 2:
            y = y - (beta / oldb) * r1
        alfa = float(v @ y)
        y = y - (alfa / beta) * r2
        r1, r2 = r2, y
        oldb, beta = beta, float(y.norm())
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln, dbar = sn * beta, -cs * beta
        gamma = max(math.hypot(gbar, beta), torch.finfo(b.dtype).tiny)
        cs, sn = gbar / gamma, beta / gamma
        phi, phibar = cs * phibar, sn * phibar
        w1, w2 = w2, w
        w = (v - oldeps * w1 - delta * w2) / gamma
        x = x + phi * w
        if phibar / beta1 < tol or beta == 0:
            break
    return x, k


@dataclasses.dataclass
class Endpoint:
    """A trained split: its initial and final weights, the rows of its inner minibatches and
    its held-out and Hessian batches."""

    init: Params
    params: Params
    rows: torch.Tensor
    batches: SplitBatches


def train_endpoint(data: DomainSet, family: LossFamily, w: torch.Tensor, cfg: MetaConfig,
                   held_out: int, step: int = 0) -> Endpoint:
    """The split the trainer would build at outer step `step` with this w, trained."""
    split = start_split(data, held_out, cfg, step)
    init = [p.detach().clone() for p in split.params]
    w = w.detach()
    trained = train_on_batches(split.params, data.x, data.y,
                               lambda logits, y: family.loss(logits, y, w), split.batches,
                               cfg.inner_lr)
    if not trained.finite:
        raise ValueError(f"held-out domain {held_out}: the inner loop went non-finite")
    batches = finish_split(data, split, trained.params, cfg, True)
    return Endpoint(init, [p.detach() for p in trained.params], split.batches, batches)


def with_hessian_batch(data: DomainSet, end: Endpoint, cfg: MetaConfig, held_out: int,
                       step: int = 0) -> Endpoint:
    """The same end point with the batches the trainer draws under `cfg` (another
    hessian_batch): the split's generator is replayed, so no retraining is needed."""
    split = start_split(data, held_out, cfg, step)
    return dataclasses.replace(end, batches=finish_split(data, split, end.params, cfg, True))


def unrolled_hypergradient(data: DomainSet, family: LossFamily, w: torch.Tensor,
                           end: Endpoint, lr: float, segment: int = SEGMENT
                           ) -> tuple[torch.Tensor, float]:
    """d M(theta_T(w)) / dw through the T SGD steps the end point took, by reverse mode.

    The forward pass is redone with the trainer's own update (same ops, so the same floats:
    the recomputed end point is checked against the trainer's), keeping one checkpoint per
    `segment` steps; each segment is then replayed and walked backwards, one double backward
    per step. Returns (gradient, max |recomputed - trainer's end point|).
    """
    w = w.detach()
    steps = len(end.rows)
    checkpoints, theta = [], [p.clone() for p in end.init]
    for t in range(steps):
        if t % segment == 0:
            checkpoints.append([p.clone() for p in theta])
        theta = _sgd_step(theta, data, family, w, end.rows[t], lr)
    gap = max(float((a - b).abs().max()) for a, b in zip(theta, end.params, strict=True))
    lam = list(torch.autograd.grad(held_out_loss([p.requires_grad_() for p in theta],
                                                 end.batches), theta))
    grad_w = torch.zeros_like(w)
    for s in reversed(range(len(checkpoints))):
        t0, t1 = s * segment, min(steps, (s + 1) * segment)
        states = [checkpoints[s]]
        for t in range(t0, t1 - 1):
            states.append(_sgd_step(states[-1], data, family, w, end.rows[t], lr))
        for t in reversed(range(t0, t1)):
            th = [p.detach().requires_grad_() for p in states[t - t0]]
            w_leaf = w.clone().requires_grad_()
            rows = end.rows[t]
            loss = family.loss(mlp_forward(th, data.x[rows]), data.y[rows], w_leaf)
            grads = torch.autograd.grad(loss, th, create_graph=True)
            *h_lam, mixed = torch.autograd.grad(grads, [*th, w_leaf], grad_outputs=lam)
            grad_w -= lr * mixed
            lam = [a - lr * b for a, b in zip(lam, h_lam, strict=True)]
    return grad_w.detach(), gap


def _sgd_step(theta: Params, data: DomainSet, family: LossFamily, w: torch.Tensor,
              rows: torch.Tensor, lr: float) -> Params:
    params = [p.detach().clone().requires_grad_() for p in theta]
    loss = family.loss(mlp_forward(params, data.x[rows]), data.y[rows], w)
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.sub_(g, alpha=lr)
    return [p.detach() for p in params]


def ift_reference(end: Endpoint, family: LossFamily, w: torch.Tensor, damping: float,
                  tol: float, max_hvps: int) -> dict[str, Any]:
    """-dM/dtheta (H + damping I)^-1 d2L/dtheta dw by MINRES, with its true relative residual."""
    def train_loss(theta: Params, w_leaf: torch.Tensor) -> torch.Tensor:
        return family.loss(mlp_forward(theta, end.batches.xt), end.batches.yt, w_leaf)

    theta, w_leaf, grads, v, _ = _objectives(end.params, w, train_loss,
                                             lambda th: held_out_loss(th, end.batches))

    def matvec(x: Flat) -> Flat:
        hx = hessian_vector_product(grads, theta, _unflatten(x, theta))
        return _flatten(hx) + damping * x

    b = _flatten(v)
    u, hvps = minres(matvec, b, tol, max_hvps)
    residual = float((b - matvec(u)).norm() / b.norm())
    grad = -mixed_vector_product(grads, w_leaf, _unflatten(u, theta))
    return {"grad": grad.detach(), "residual": residual, "hvps": hvps + 1}


def spectrum_top(end: Endpoint, family: LossFamily, w: torch.Tensor, seed: int) -> float:
    """Largest-magnitude eigenvalue of the Hessian batch's Hessian (signed), by power
    iteration."""
    def train_loss(theta: Params, w_leaf: torch.Tensor) -> torch.Tensor:
        return family.loss(mlp_forward(theta, end.batches.xt), end.batches.yt, w_leaf)

    theta, _, grads, _, _ = _objectives(end.params, w, train_loss,
                                        lambda th: held_out_loss(th, end.batches))
    g = torch.Generator().manual_seed(seed)
    start = [torch.randn(t.shape, generator=g) for t in theta]
    return float(top_eigenvalue(lambda x: hessian_vector_product(grads, theta, x), start,
                                POWER_ITERS, Space()))
