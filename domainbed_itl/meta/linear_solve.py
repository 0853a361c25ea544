"""Solving H u = v with Hessian-vector products only: the Neumann series and conjugate gradients.

The implicit gradient needs u = H^-1 v for a Hessian H that is never formed. Both solvers see
H only through a function `hvp(x) -> H x` and spend a fixed budget of such products, so they
can be compared at equal cost (`check_hypergrad` does).

Vectors are lists of tensors shaped like the model's parameters. A `Space` says whether the
tensors hold one system or a stack of independent systems along dimension 0 (the batched inner
loops of `meta.batched` train K models at once; their Hessian is block diagonal, so one HVP of
the stack is K HVPs). All scalars of a solve (step sizes, residuals, alphas) then have the batch
shape, () or (K,), and every system follows its own recursion, exactly as if solved alone.

Guard rails. The Neumann series diverges when alpha * lambda_max > 2 (or on strong negative
curvature): a system whose running term outgrows v restarts with half its alpha, at most
`MAX_RESTARTS` times. Conjugate gradients stops a system at the first direction of non-positive
curvature, keeping its last iterate. Both report the relative residual that remains.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Vector = list[torch.Tensor]
Hvp = Callable[[Vector], Vector]

SOLVERS = ("neumann", "cg")
MAX_RESTARTS = 3
# Power iterations behind `--neumann_alpha auto` (extra HVPs, reported separately).
POWER_ITERS = 10


@dataclass(frozen=True)
class Space:
    """One system, or a stack of independent systems along dimension 0 of every tensor."""

    batched: bool = False

    def dot(self, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.batched:
            return sum((x * y).flatten(1).sum(1) for x, y in zip(a, b, strict=True))
        return sum((x * y).sum() for x, y in zip(a, b, strict=True))

    def norm(self, a: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.dot(a, a).clamp(min=0).sqrt()


def _per(c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Scalar(s) of the batch shape, broadcastable against a tensor of the stack."""
    return c.reshape(c.shape + (1,) * (t.dim() - c.dim()))


def axpy(c: torch.Tensor, x: Sequence[torch.Tensor], y: Sequence[torch.Tensor]) -> Vector:
    """y + c x, system by system."""
    return [b + _per(c, a) * a for a, b in zip(x, y, strict=True)]


def scale(c: torch.Tensor, x: Sequence[torch.Tensor]) -> Vector:
    return [_per(c, a) * a for a in x]


def select(mask: torch.Tensor, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> Vector:
    """a where `mask` (batch shape) holds, else b."""
    return [torch.where(_per(mask, x), x, y) for x, y in zip(a, b, strict=True)]


@dataclass
class Solution:
    """u ~ H^-1 v and what it cost. `residual` = |v - A u| / |v| per system (for Neumann the
    remaining series term |(I - alpha H)^J v| / |v|, free to compute and within a factor
    |I - alpha H| of it); `alpha` is the Neumann step finally used (nan for CG); `restarts`
    counts Neumann restarts or CG's stops at non-positive curvature."""

    u: Vector
    residual: torch.Tensor
    alpha: torch.Tensor
    restarts: torch.Tensor
    hvps: int


def neumann(hvp: Hvp, v: Sequence[torch.Tensor], alpha: torch.Tensor, terms: int,
            space: Space) -> Solution:
    """u = alpha * sum_{j=0..terms} (I - alpha H)^j v (Algorithm 2 with Lorraine et al.'s scale).

    A system whose current term grows beyond |v| is diverging (alpha * lambda > 2 somewhere):
    it restarts from v with alpha halved and needs `terms` fresh terms, the others wait.
    """
    if terms < 0:
        raise ValueError(f"the Neumann series needs terms >= 0, got {terms}")
    v = [t.detach() for t in v]
    v_norm = space.norm(v)
    alpha = alpha.to(v_norm)
    if not bool((alpha > 0).all()):
        raise ValueError(f"the Neumann step alpha must be positive, got {alpha.tolist()}")
    term, total = list(v), list(v)
    count = torch.zeros_like(v_norm, dtype=torch.long)
    restarts = torch.zeros_like(count)
    hvps = 0
    while bool((count < terms).any()):
        active = count < terms
        hv = hvp(term)
        hvps += 1
        new_term = axpy(-alpha, hv, term)
        diverged = active & (space.norm(new_term) > v_norm) & (restarts < MAX_RESTARTS)
        stepping = active & ~diverged
        term = select(diverged, v, select(stepping, new_term, term))
        total = select(diverged, v, select(stepping, [s + t for s, t in
                                                      zip(total, new_term, strict=True)], total))
        count = torch.where(diverged, 0, count + stepping.long())
        restarts = restarts + diverged.long()
        alpha = torch.where(diverged, alpha / 2, alpha)
    residual = space.norm(term) / v_norm.clamp(min=torch.finfo(v_norm.dtype).tiny)
    return Solution(scale(alpha, total), residual, alpha, restarts, hvps)


def conjugate_gradient(hvp: Hvp, v: Sequence[torch.Tensor], damping: float, hvps: int,
                       space: Space, start: Sequence[torch.Tensor] | None = None) -> Solution:
    """u ~ (H + damping I)^-1 v by conjugate gradients with `hvps` Hessian-vector products.

    `start` (a previous solution) is used along its own direction only, scaled to minimise the
    A-norm error (c = <start, v> / <start, A start>): a useless start then costs one HVP and
    nothing else. A system meeting non-positive curvature keeps its current iterate.
    """
    if hvps < 0 or damping < 0:
        raise ValueError(f"CG needs hvps >= 0 and damping >= 0, got {hvps}, {damping}")
    v = [t.detach() for t in v]

    def apply(x: Vector) -> Vector:
        hx = hvp(x)
        return [h + damping * t for h, t in zip(hx, x, strict=True)] if damping else hx

    v_norm = space.norm(v)
    spent = 0
    stops = torch.zeros_like(v_norm, dtype=torch.long)
    if start is not None and hvps > 0:
        start = [t.detach().to(s) for t, s in zip(start, v, strict=True)]
        a_start = apply(start)
        spent += 1
        curv = space.dot(start, a_start)
        c = torch.where(curv > 0, space.dot(start, v) / torch.where(curv > 0, curv, 1.0), 0.0)
        u = scale(c, start)
        r = axpy(-c, a_start, v)
    else:
        u = [torch.zeros_like(t) for t in v]
        r = list(v)
    p = list(r)
    rr = space.dot(r, r)
    active = torch.ones_like(stops, dtype=torch.bool)
    while spent < hvps:
        ap = apply(p)
        spent += 1
        pap = space.dot(p, ap)
        ok = active & (pap > 0) & (rr > 0)
        stops = stops + (active & (pap <= 0) & (rr > 0)).long()
        active = ok
        step = torch.where(ok, rr / torch.where(ok, pap, 1.0), 0.0)
        u = axpy(step, p, u)
        r = axpy(-step, ap, r)
        rr_new = space.dot(r, r)
        beta = torch.where(ok, rr_new / torch.where(ok, rr, 1.0), 0.0)
        p = select(ok, axpy(beta, p, r), p)
        rr = torch.where(ok, rr_new, rr)
    residual = rr.clamp(min=0).sqrt() / v_norm.clamp(min=torch.finfo(v_norm.dtype).tiny)
    return Solution(u, residual, torch.full_like(v_norm, float("nan")), stops, spent)


def top_eigenvalue(hvp: Hvp, start: Sequence[torch.Tensor], iters: int,
                   space: Space) -> torch.Tensor:
    """Largest-magnitude eigenvalue by power iteration (Rayleigh quotient of the last iterate),
    started from `start`; `iters` HVPs."""
    x = [t.detach() for t in start]
    eig = torch.zeros_like(space.norm(x))
    for _ in range(iters):
        x = scale(1.0 / space.norm(x).clamp(min=torch.finfo(eig.dtype).tiny), x)
        hx = hvp(x)
        eig = space.dot(x, hx)
        x = [h.detach() for h in hx]
    return eig


@dataclass(frozen=True)
class SolverSettings:
    """How the implicit gradient solves H u = v: `name` in SOLVERS, `hvps` products in the
    solve (J for Neumann), Neumann's `alpha` (a number or "auto": 1 / |lambda_max| from
    POWER_ITERS power iterations started at v), CG's `damping`."""

    name: str = "neumann"
    hvps: int = 15
    alpha: float | str = 0.01
    damping: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SOLVERS:
            raise ValueError(f"unknown solver {self.name!r}; choose {', '.join(SOLVERS)}")
        if self.hvps < 0 or not self.damping >= 0:
            raise ValueError("the solver needs hvps >= 0 and damping >= 0")
        if self.alpha != "auto" and not (isinstance(self.alpha, float | int) and self.alpha > 0):
            raise ValueError(f"Neumann alpha must be positive or 'auto', got {self.alpha!r}")


def solve(hvp: Hvp, v: Sequence[torch.Tensor], settings: SolverSettings, space: Space,
          start: Sequence[torch.Tensor] | None = None) -> Solution:
    """u ~ H^-1 v by the solver `settings` names (the HVPs of an automatic alpha are added to
    the reported count)."""
    if settings.name == "cg":
        return conjugate_gradient(hvp, v, settings.damping, settings.hvps, space, start)
    extra = 0
    if settings.alpha == "auto":
        eig = top_eigenvalue(hvp, v, POWER_ITERS, space).abs()
        alpha = 1.0 / eig.clamp(min=torch.finfo(eig.dtype).eps)
        extra = POWER_ITERS
    else:
        alpha = torch.full_like(space.norm(v), float(settings.alpha))
    sol = neumann(hvp, v, alpha, settings.hvps, space)
    sol.hvps += extra
    return sol


def parse_alpha(text: str) -> float | str:
    """argparse type of --neumann_alpha: a positive number or "auto"."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}")
    return value
