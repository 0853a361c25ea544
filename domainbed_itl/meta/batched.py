"""The leave-one-domain-out splits of one outer step trained together, as one stack of K models.

Each split keeps exactly the randomness of its sequential counterpart (`meta.splits`): same
initial weights, same minibatches, same held-out and Hessian batches. What is shared is the
arithmetic: per inner step one batched matrix product per layer and one loss call for all K
models (`meta.device_loop`, replayed from a CUDA graph on a GPU), and per solver iteration one
Hessian-vector product for all K systems, whose Hessian is block diagonal. The results equal
the sequential path's up to float rounding; what pays off depends on the device (see
`splits.batching_for`).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    diverged,
    finish_split,
    held_out_loss,
    start_split,
)


def stacked_hypergradients(
    params: Params, w: torch.Tensor, family: LossFamily, batches: Sequence[SplitBatches],
    settings: SolverSettings, starts: Sequence[Sequence[torch.Tensor]] | None = None,
) -> list[Hypergradient]:
    """The implicit hypergradient of every stacked model k, each with its own held-out and
    Hessian batches, solved together (one HVP serves all K systems).

    w is copied into one row per model, so the mixed products come out per model instead of
    summed over the stack.
    """
    k_models = len(batches)
    space = Space(batched=True)
    theta = [p.detach().requires_grad_() for p in params]
    # One unbind per tensor: its backward stacks the K gradients once, where K separate views
    # would each scatter into a zero tensor of the whole stack.
    models = [list(m) for m in zip(*(p.unbind(0) for p in theta), strict=True)]
    w_rows = w.detach().expand(k_models, -1).clone().requires_grad_()
    meta_losses = [held_out_loss(models[k], b) for k, b in enumerate(batches)]
    v = list(torch.autograd.grad(sum(meta_losses), theta))
    train = sum(family.loss(mlp_forward(models[k], b.xt), b.yt, w_rows[k])
                for k, b in enumerate(batches))
    grads = torch.autograd.grad(train, theta, create_graph=True)
    start = None if starts is None else [torch.stack(list(t)) for t in zip(*starts, strict=True)]
    sol = solve_with(grads, theta, v, settings, space, start)
    mixed = mixed_vector_product(grads, w_rows, sol.u).detach()
    v_norms = space.norm(v)
    return [Hypergradient(-mixed[k], float(meta_losses[k].detach()), float(v_norms[k]),
                          float(sol.residual[k]), float(sol.alpha[k]), int(sol.restarts[k]),
                          sol.hvps, [u[k].detach() for u in sol.u])
            for k in range(k_models)]


def run_splits_batched(
    data: DomainSet, w: torch.Tensor, family: LossFamily, cfg: MetaConfig, step: int,
    compute_hypergrad: bool = True,
    starts: Sequence[Sequence[torch.Tensor]] | None = None,
) -> list[SplitResult]:
    """outer.run_split for every held-out domain, all models trained and solved as one stack.
    `starts` (one per domain) warm-start the CG solves."""
    device = data.x.device
    splits = [start_split(data, d, cfg, step) for d in range(data.n_domains)]
    params = stack_params([s.params for s in splits])
    table = torch.stack([s.batches for s in splits], dim=1)
    w_fixed = w.detach().to(device)

    def inner_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return family.loss(logits, y, w_fixed)

    finite = train_stacked(params, data.x, data.y, inner_loss, table, cfg.inner_lr,
                           capture=cfg.cuda_graphs and device.type == "cuda")
    live = [k for k, ok in enumerate(finite) if ok]
    results: dict[int, SplitResult] = {k: diverged(k) for k, ok in enumerate(finite) if not ok}
    batches = {k: finish_split(data, splits[k], model_view(params, k), cfg, compute_hypergrad)
               for k in live}
    if not compute_hypergrad:
        for k in live:
            with torch.no_grad():
                m = float(held_out_loss(model_view(params, k), batches[k]))
            results[k] = SplitResult.without_hypergrad(k, batches[k], m)
    elif live:
        index = torch.tensor(live, device=device)
        hgs = stacked_hypergradients(
            [p.detach().index_select(0, index) for p in params], w_fixed, family,
            [batches[k] for k in live], cfg.solver(),
            None if starts is None else [starts[k] for k in live])
        for k, hg in zip(live, hgs, strict=True):
            results[k] = SplitResult.from_hypergradient(k, batches[k], hg)
    return [results[k] for k in range(data.n_domains)]
