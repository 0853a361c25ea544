"""Leave-one-domain-out splits trained together as one stack of models: the K splits of one
outer step, or those of several independent meta-training runs (one stack per group of runs
that differ in their seed only, `meta.trainer.RunGroups`).

Each split keeps exactly the randomness of its sequential counterpart (`meta.splits`): same
initial weights, same minibatches, same held-out and Hessian batches, drawn from its own run's
seed, step and data. What is shared is the arithmetic: per inner step one batched matrix
product per layer and one loss evaluation for all models (`meta.device_loop`, replayed from a
CUDA graph on a GPU), and per solver iteration one Hessian-vector product for all systems,
whose Hessian is block diagonal. Every model is trained and differentiated with its own run's
w. The results equal the sequential path's up to float rounding; what pays off depends on the
device (see `splits.batching_for`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from domainbed_itl.meta.base_model import Params, mlp_forward, model_view, stack_params
from domainbed_itl.meta.device_loop import train_stacked
from domainbed_itl.meta.families import LossFamily
from domainbed_itl.meta.hypergrad import Hypergradient, mixed_vector_product, solve_with
from domainbed_itl.meta.linear_solve import SolverSettings, Space
from domainbed_itl.meta.splits import (
    DomainSet,
    MetaConfig,
    SplitBatches,
    SplitResult,
    SplitStart,
    diverged,
    finish_split,
    held_out_loss,
    start_split,
)

# CG warm starts, one per split: a solution shaped like the model's parameters.
Starts = Sequence[Sequence[torch.Tensor]]


@dataclass
class StackPart:
    """One run's share of a stack: its domains, its w, its settings and outer step, and the CG
    starts of its splits (one per held-out domain, or None)."""

    data: DomainSet
    w: torch.Tensor
    cfg: MetaConfig
    step: int
    starts: Starts | None = None


@dataclass
class Pool:
    """The distinct domain sets of a stack in one tensor, so that one gather per inner step
    serves every model; a set's rows start at its offset."""

    sets: list[DomainSet]
    offsets: list[int]
    x: torch.Tensor
    y: torch.Tensor

    def offset(self, data: DomainSet) -> int:
        for d, start in zip(self.sets, self.offsets, strict=True):
            if d is data:
                return start
        raise ValueError("this domain set is not in the pool")


def pool_domains(sets: Sequence[DomainSet]) -> Pool:
    """Pool the distinct sets (by identity; runs sharing one set share its rows). A single
    set is used as it is, without a copy."""
    distinct: list[DomainSet] = []
    for d in sets:
        if not any(d is seen for seen in distinct):
            distinct.append(d)
    starts = [0]
    for d in distinct[:-1]:
        starts.append(starts[-1] + len(d.y))
    if len(distinct) == 1:
        return Pool(distinct, starts, distinct[0].x, distinct[0].y)
    return Pool(distinct, starts, torch.cat([d.x for d in distinct]),
                torch.cat([d.y for d in distinct]))


def shared_settings(cfg: MetaConfig) -> MetaConfig:
    """What the runs of one stack must agree on: every setting but the seed."""
    return dataclasses.replace(cfg, seed=0)


def check_stackable(parts: Sequence[StackPart]) -> None:
    """Refuse parts that cannot share a stack: other settings than the seed, other model
    shapes, other devices, CG starts for some parts only."""
    first = parts[0]
    for p in parts[1:]:
        if shared_settings(p.cfg) != shared_settings(first.cfg):
            raise ValueError("the runs of a stack must share every setting but the seed")
        if (p.data.x.shape[1], p.data.num_classes) != (first.data.x.shape[1],
                                                       first.data.num_classes):
            raise ValueError("the runs of a stack must share input size and classes")
        if p.data.x.device != first.data.x.device:
            raise ValueError("the runs of a stack must be on one device")
        if (p.starts is None) != (first.starts is None):
            raise ValueError("CG starts must be given for every run of a stack or for none")


class SegmentedLoss:
    """L_w of a stack whose consecutive blocks of models belong to different runs.

    The inner step scores the stack's K x batch examples, flattened model by model, in one
    call and multiplies by K (`device_loop.stacked_sgd_step`). Here each run's block gets its
    own batch mean under its own w, weighted by its share of the stack, so every model still
    follows the gradient of its own batch mean. Slices are fixed numbers and the w are device
    tensors, so the step stays capturable in a CUDA graph.
    """

    def __init__(self, family: LossFamily, ws: Sequence[torch.Tensor],
                 counts: Sequence[int]) -> None:
        self.family, self.ws, self.counts = family, list(ws), list(counts)
        self.total = sum(counts)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per_model = len(y) // self.total
        terms, start = [], 0
        for w, count in zip(self.ws, self.counts, strict=True):
            rows = slice(start * per_model, (start + count) * per_model)
            terms.append(self.family.loss(logits[rows], y[rows], w) * (count / self.total))
            start += count
        return sum(terms)


def stacked_hypergradients(
    params: Params, w_rows: torch.Tensor, family: LossFamily, batches: Sequence[SplitBatches],
    settings: SolverSettings, starts: Starts | None = None,
) -> list[Hypergradient]:
    """The implicit hypergradient of every stacked model k at its own w (row k of `w_rows`),
    each with its own held-out and Hessian batches, solved together (one HVP serves all
    systems). The mixed products come out per model, as rows of the w leaf."""
    k_models = len(batches)
    space = Space(batched=True)
    theta = [p.detach().requires_grad_() for p in params]
    # One unbind per tensor: its backward stacks the K gradients once, where K separate views
    # would each scatter into a zero tensor of the whole stack.
    models = [list(m) for m in zip(*(p.unbind(0) for p in theta), strict=True)]
    w_leaf = w_rows.detach().clone().requires_grad_()
    meta_losses = [held_out_loss(models[k], b) for k, b in enumerate(batches)]
    v = list(torch.autograd.grad(sum(meta_losses), theta))
    train = sum(family.loss(mlp_forward(models[k], b.xt), b.yt, w_leaf[k])
                for k, b in enumerate(batches))
    grads = torch.autograd.grad(train, theta, create_graph=True)
    start = None if starts is None else [torch.stack(list(t)) for t in zip(*starts, strict=True)]
    sol = solve_with(grads, theta, v, settings, space, start)
    mixed = mixed_vector_product(grads, w_leaf, sol.u).detach()
    v_norms = space.norm(v)
    return [Hypergradient(-mixed[k], float(meta_losses[k].detach()), float(v_norms[k]),
                          float(sol.residual[k]), float(sol.alpha[k]), int(sol.restarts[k]),
                          sol.hvps, [u[k].detach() for u in sol.u])
            for k in range(k_models)]


def run_stack(parts: Sequence[StackPart], family: LossFamily, compute_hypergrad: bool = True,
              pool: Pool | None = None) -> list[list[SplitResult]]:
    """outer.run_split for every held-out domain of every part, all models trained and solved
    as one stack; the results per part, in domain order. `pool` (the parts' data pooled by
    `pool_domains`) saves pooling them again."""
    check_stackable(parts)
    pool = pool or pool_domains([p.data for p in parts])
    device = pool.x.device
    cfg = parts[0].cfg
    owner: list[int] = []
    splits: list[SplitStart] = []
    for i, p in enumerate(parts):
        for d in range(p.data.n_domains):
            owner.append(i)
            splits.append(start_split(p.data, d, p.cfg, p.step))
    params = stack_params([s.params for s in splits])
    table = torch.stack([s.batches + pool.offset(parts[i].data)
                         for i, s in zip(owner, splits, strict=True)], dim=1)
    ws = [p.w.detach().to(device) for p in parts]
    loss = SegmentedLoss(family, ws, [p.data.n_domains for p in parts])
    finite = train_stacked(params, pool.x, pool.y, loss, table, cfg.inner_lr,
                           capture=cfg.cuda_graphs and device.type == "cuda")
    live = [k for k, ok in enumerate(finite) if ok]
    results = {k: diverged(s.held_out) for k, s in enumerate(splits) if not finite[k]}
    batches = {k: finish_split(parts[owner[k]].data, splits[k], model_view(params, k),
                               parts[owner[k]].cfg, compute_hypergrad)
               for k in live}
    if not compute_hypergrad:
        for k in live:
            with torch.no_grad():
                m = float(held_out_loss(model_view(params, k), batches[k]))
            results[k] = SplitResult.without_hypergrad(splits[k].held_out, batches[k], m)
    elif live:
        index = torch.tensor(live, device=device)
        starts = (None if parts[0].starts is None
                  else [parts[owner[k]].starts[splits[k].held_out] for k in live])
        hgs = stacked_hypergradients(
            [p.detach().index_select(0, index) for p in params],
            torch.stack([ws[owner[k]] for k in live]), family, [batches[k] for k in live],
            cfg.solver(), starts)
        for k, hg in zip(live, hgs, strict=True):
            results[k] = SplitResult.from_hypergradient(splits[k].held_out, batches[k], hg)
    return [[results[k] for k in range(len(splits)) if owner[k] == i]
            for i in range(len(parts))]


def run_splits_batched(
    data: DomainSet, w: torch.Tensor, family: LossFamily, cfg: MetaConfig, step: int,
    compute_hypergrad: bool = True, starts: Starts | None = None,
) -> list[SplitResult]:
    """outer.run_split for every held-out domain of one run, as one stack. `starts` (one per
    domain) warm-start the CG solves."""
    return run_stack([StackPart(data, w, cfg, step, starts)], family, compute_hypergrad)[0]
