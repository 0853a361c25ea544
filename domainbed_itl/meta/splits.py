"""What every leave-one-domain-out split needs, whichever way the splits are run (one after
another, `meta.outer`, or stacked, `meta.batched`): the settings, the pooled data, the split's
own generator and the order in which it draws, and the per-split result.

All randomness of a split comes from one generator seeded by (seed, outer step, held-out
domain), drawn in a fixed order: initial weights, the inner loop's minibatch rows, the held-out
batch, the Hessian batch. Any split of any step can therefore be recomputed on its own, and
the sequential and stacked paths train on exactly the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from domainbed.lib.misc import seed_hash
from domainbed_itl.meta.base_model import Params, accuracy, init_mlp, mlp_forward
from domainbed_itl.meta.guard import all_finite
from domainbed_itl.meta.hypergrad import Hypergradient
from domainbed_itl.meta.inner import sample_batches
from domainbed_itl.meta.linear_solve import SolverSettings

BATCHING = ("auto", "batched", "sequential")


@dataclass(frozen=True)
class MetaConfig:
    """Settings of the inner problem and of the hypergradient (paper values where it gives
    them: SGD lr 0.01, batch 32, J = 15; the others are ours, see the README).

    `neumann_terms` is the budget of Hessian-vector products of either solver (J for Neumann).
    `inner_batching` and `cuda_graphs` change only speed, not results (up to float rounding).
    """

    hidden: tuple[int, ...] = (1024, 256)
    inner_steps: int = 2000
    inner_lr: float = 0.01
    inner_batch: int = 32
    neumann_terms: int = 15
    neumann_alpha: float | str = 0.01
    hessian_batch: int = 1024
    val_batch: int = 2048
    eval_examples: int = 2000
    seed: int = 0
    hypergrad_solver: str = "neumann"
    cg_damping: float = 0.0
    cg_warm_start: bool = False
    inner_batching: str = "auto"
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        if self.inner_batching not in BATCHING:
            raise ValueError(f"unknown inner batching {self.inner_batching!r}; choose "
                             f"{', '.join(BATCHING)}")
        self.solver()  # validates the solver settings

    def solver(self) -> SolverSettings:
        return SolverSettings(self.hypergrad_solver, self.neumann_terms, self.neumann_alpha,
                              self.cg_damping)


def batching_for(cfg: MetaConfig, device: torch.device) -> str:
    """The path `auto` picks: stacked models on accelerators, one after another on CPU, where
    batched matrix products of six MLPs measured slower than six separate ones
    (results/meta_step_benchmark.txt)."""
    if cfg.inner_batching != "auto":
        return cfg.inner_batching
    return "sequential" if device.type == "cpu" else "batched"


@dataclass
class DomainSet:
    """All domains pooled in one tensor, flattened for the MLP; domain d owns rows
    blocks[d][0]:blocks[d][1]. `eval_rows[d]` is a fixed subset used for accuracies, so the
    learning curve is not noisier than it needs to be."""

    x: torch.Tensor
    y: torch.Tensor
    blocks: list[tuple[int, int]]
    num_classes: int
    eval_rows: list[torch.Tensor]

    @property
    def n_domains(self) -> int:
        return len(self.blocks)

    def rows(self, domain: int) -> torch.Tensor:
        start, end = self.blocks[domain]
        return torch.arange(start, end)

    def rows_except(self, domain: int) -> torch.Tensor:
        return torch.cat([self.rows(d) for d in range(self.n_domains) if d != domain])


def make_domain_set(
    domains: Sequence[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    eval_examples: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> DomainSet:
    """Pool per-domain (x, y) pairs; x of any shape is flattened per example.

    `eval_examples` (0 = all) caps the rows per domain used to report accuracies.
    """
    if len(domains) < 2:
        raise ValueError("leave-one-domain-out needs at least two domains")
    xs, ys, blocks, eval_rows = [], [], [], []
    start = 0
    for d, (x, y) in enumerate(domains):
        n = len(y)
        if n == 0:
            raise ValueError(f"domain {d} is empty")
        xs.append(x.reshape(n, -1).float())
        ys.append(y.long())
        blocks.append((start, start + n))
        g = torch.Generator().manual_seed(seed_hash(seed, "eval_rows", d))
        take = n if eval_examples <= 0 else min(n, eval_examples)
        eval_rows.append(start + torch.randperm(n, generator=g)[:take])
        start += n
    return DomainSet(torch.cat(xs).to(device), torch.cat(ys).to(device), blocks, num_classes,
                     eval_rows)


@dataclass
class SplitResult:
    """What one leave-one-domain-out split produced. `hypergrad` is None when not requested
    or when the split went non-finite (`reason` then says where). `neumann_ratio` is the
    solve's relative residual, `alpha` / `restarts` / `hvps` as in hypergrad.Hypergradient,
    `solution` u ~ H^-1 v (kept for a warm start)."""

    held_out: int
    inner_acc: float
    held_out_acc: float
    meta_loss: float
    hypergrad: torch.Tensor | None
    neumann_ratio: float
    finite: bool
    reason: str = ""
    alpha: float = float("nan")
    restarts: int = 0
    hvps: int = 0
    solution: list[torch.Tensor] | None = field(default=None, repr=False)

    @classmethod
    def without_hypergrad(cls, held_out: int, batches: SplitBatches,
                          meta_loss: float) -> SplitResult:
        ok = math.isfinite(meta_loss)
        return cls(held_out, batches.inner_acc, batches.held_out_acc, meta_loss, None,
                   float("nan"), ok, "" if ok else "held-out loss non-finite")

    @classmethod
    def from_hypergradient(cls, held_out: int, batches: SplitBatches,
                           hg: Hypergradient) -> SplitResult:
        ok = all_finite(hg.grad) and math.isfinite(hg.val_loss)
        return cls(held_out, batches.inner_acc, batches.held_out_acc, hg.val_loss,
                   hg.grad.cpu() if ok else None, hg.neumann_ratio, ok,
                   "" if ok else "hypergradient non-finite", hg.alpha, hg.restarts, hg.hvps,
                   hg.solution if ok else None)


def diverged(held_out: int) -> SplitResult:
    nan = float("nan")
    return SplitResult(held_out, nan, nan, nan, None, nan, False, "inner loop went non-finite")


@dataclass
class SplitStart:
    """A split before training: its generator (already advanced past the draws below), fresh
    parameters, source rows and the inner loop's minibatch rows (steps x batch, global rows)."""

    held_out: int
    generator: torch.Generator
    params: Params
    source: torch.Tensor
    batches: torch.Tensor


def start_split(data: DomainSet, held_out: int, cfg: MetaConfig, step: int) -> SplitStart:
    g = torch.Generator().manual_seed(seed_hash(cfg.seed, step, held_out))
    widths = (data.x.shape[1], *cfg.hidden, data.num_classes)
    params = init_mlp(widths, g, device=data.x.device)
    source = data.rows_except(held_out)
    batches = source[sample_batches(len(source), cfg.inner_steps, cfg.inner_batch, g)]
    return SplitStart(held_out, g, params, source, batches)


def sample_rows(rows: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k of `rows` without replacement (all of them when k <= 0 or k >= len(rows))."""
    if k <= 0 or k >= len(rows):
        return rows
    return rows[torch.randperm(len(rows), generator=generator)[:k]]


@dataclass
class SplitBatches:
    """A trained split's accuracies and the batches of its meta-objective: held-out (xv, yv)
    for M, source (xt, yt) for the Hessian and mixed derivative (None unless requested)."""

    inner_acc: float
    held_out_acc: float
    xv: torch.Tensor
    yv: torch.Tensor
    xt: torch.Tensor | None
    yt: torch.Tensor | None


def finish_split(data: DomainSet, split: SplitStart, params: Params, cfg: MetaConfig,
                 with_hessian_batch: bool) -> SplitBatches:
    """Accuracies of the trained `params`, then the held-out and Hessian batches drawn from
    the split's generator (in that order)."""
    held_out, g, device = split.held_out, split.generator, data.x.device
    sources = [d for d in range(data.n_domains) if d != held_out]
    inner_acc = sum(
        accuracy(params, data.x[data.eval_rows[d]], data.y[data.eval_rows[d]]) for d in sources
    ) / len(sources)
    rows = data.eval_rows[held_out]
    held_out_acc = accuracy(params, data.x[rows], data.y[rows])
    val_rows = sample_rows(data.rows(held_out), cfg.val_batch, g).to(device)
    xt = yt = None
    if with_hessian_batch:
        train_rows = sample_rows(split.source, cfg.hessian_batch, g).to(device)
        xt, yt = data.x[train_rows], data.y[train_rows]
    return SplitBatches(inner_acc, held_out_acc, data.x[val_rows], data.y[val_rows], xt, yt)


def held_out_loss(params: Params, batches: SplitBatches) -> torch.Tensor:
    """M: cross-entropy of the held-out batch."""
    return F.cross_entropy(mlp_forward(params, batches.xv), batches.yv)
