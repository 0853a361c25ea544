"""One leave-one-domain-out sweep: for every domain, train a fresh base model on the others with
L_w and measure it on the held-out domain, optionally with the implicit hypergradient.

This is the part both meta-optimisers share: the implicit-gradient trainer uses the
hypergradients, an evolutionary one (CMA-ES) only the held-out loss and accuracy
(`compute_hypergrad=False`). The splits run one after another here (`run_split`), as one
stack of models (`meta.batched`) or as parallel tasks elsewhere (`meta.ray_backend`): a
`SplitRunner` each. `MetaConfig.inner_batching` picks between the first two unless a runner
is given; all give the same results up to float rounding (`meta.splits` fixes every split's
randomness).
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Protocol

import torch

from domainbed_itl.meta.base_model import Params, mlp_forward
from domainbed_itl.meta.batched import Starts, run_splits_batched
from domainbed_itl.meta.families import LossFamily
from domainbed_itl.meta.hypergrad import implicit_hypergradient
from domainbed_itl.meta.inner import train_on_batches
from domainbed_itl.meta.splits import (
    DomainSet,
    MetaConfig,
    SplitResult,
    batching_for,
    diverged,
    finish_split,
    held_out_loss,
    make_domain_set,
    start_split,
)

__all__ = ["DomainSet", "MetaConfig", "SplitResult", "SplitRunner", "Starts", "keep_solutions",
           "leave_one_domain_out", "make_domain_set", "run_split", "split_starts"]

# Warm starts of the CG solves: the previous outer step's solution per held-out domain.
WarmStarts = MutableMapping[int, list[torch.Tensor]]


class SplitRunner(Protocol):
    """Runs every split of one outer step; `starts` holds one CG start per held-out domain."""

    def __call__(self, data: DomainSet, w: torch.Tensor, family: LossFamily, cfg: MetaConfig,
                 step: int, compute_hypergrad: bool, starts: Starts | None
                 ) -> list[SplitResult]: ...


def run_split(
    data: DomainSet,
    held_out: int,
    w: torch.Tensor,
    family: LossFamily,
    cfg: MetaConfig,
    step: int,
    compute_hypergrad: bool = True,
    start: Sequence[torch.Tensor] | None = None,
) -> SplitResult:
    """Train on every domain but `held_out` with L_w, evaluate on `held_out`, and (optionally)
    return dM/dw with M = cross-entropy on a random `val_batch` of the held-out domain.

    Hessian and mixed derivative use one random batch of `hessian_batch` examples from the
    pooled source domains. `start` warm-starts a CG solve.
    """
    split = start_split(data, held_out, cfg, step)
    w_fixed = w.detach().to(data.x.device)

    def inner_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return family.loss(logits, y, w_fixed)

    trained = train_on_batches(split.params, data.x, data.y, inner_loss, split.batches,
                               cfg.inner_lr)
    if not trained.finite:
        return diverged(held_out)
    params = trained.params
    batches = finish_split(data, split, params, cfg, compute_hypergrad)
    if not compute_hypergrad:
        with torch.no_grad():
            return SplitResult.without_hypergrad(held_out, batches,
                                                 float(held_out_loss(params, batches)))

    def train_loss(theta: Params, w_leaf: torch.Tensor) -> torch.Tensor:
        return family.loss(mlp_forward(theta, batches.xt), batches.yt, w_leaf)

    hg = implicit_hypergradient(params, w_fixed, train_loss,
                                lambda theta: held_out_loss(theta, batches), cfg.neumann_alpha,
                                cfg.neumann_terms, cfg.hypergrad_solver, cfg.cg_damping, start)
    return SplitResult.from_hypergradient(held_out, batches, hg)


def run_splits_sequential(data: DomainSet, w: torch.Tensor, family: LossFamily,
                          cfg: MetaConfig, step: int, compute_hypergrad: bool = True,
                          starts: Starts | None = None) -> list[SplitResult]:
    """run_split for every held-out domain, one after another."""
    return [run_split(data, d, w, family, cfg, step, compute_hypergrad,
                      None if starts is None else starts[d])
            for d in range(data.n_domains)]


# The in-process runners, by MetaConfig.inner_batching (after splits.batching_for).
LOCAL_RUNNERS: dict[str, SplitRunner] = {"sequential": run_splits_sequential,
                                         "batched": run_splits_batched}


def split_starts(data: DomainSet, cfg: MetaConfig, warm: WarmStarts | None
                 ) -> list[list[torch.Tensor]] | None:
    """One CG start per split when warm starts apply: the previous solution, else zeros (so
    every split spends the same HVPs on its start, on either path)."""
    if warm is None or not cfg.cg_warm_start or cfg.hypergrad_solver != "cg":
        return None
    widths = (data.x.shape[1], *cfg.hidden, data.num_classes)
    shapes = [s for a, b in zip(widths[:-1], widths[1:], strict=True) for s in ((a, b), (b,))]
    zeros = [torch.zeros(s, device=data.x.device) for s in shapes]
    return [warm.get(d, zeros) for d in range(data.n_domains)]


def keep_solutions(warm: WarmStarts, results: Sequence[SplitResult]) -> None:
    """Store each split's solve as the next outer step's start for its held-out domain."""
    for r in results:
        if r.solution is not None:
            warm[r.held_out] = r.solution


def leave_one_domain_out(
    data: DomainSet,
    w: torch.Tensor,
    family: LossFamily,
    cfg: MetaConfig,
    step: int,
    compute_hypergrad: bool = True,
    warm: WarmStarts | None = None,
    runner: SplitRunner | None = None,
) -> list[SplitResult]:
    """Every split of one outer step, by `runner`, else one after another or stacked
    (`cfg.inner_batching`). `warm` (used with CG and `cfg.cg_warm_start`) is read for the
    starts and updated with the new solutions."""
    starts = split_starts(data, cfg, warm) if compute_hypergrad else None
    run = runner or LOCAL_RUNNERS[batching_for(cfg, data.x.device)]
    results = run(data, w, family, cfg, step, compute_hypergrad, starts)
    if starts is not None:
        keep_solutions(warm, results)
    return results
