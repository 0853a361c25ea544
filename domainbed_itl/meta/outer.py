"""One leave-one-domain-out sweep: for every domain, train a fresh base model on the others with
L_w and measure it on the held-out domain, optionally with the implicit hypergradient.

This is the part both meta-optimisers share: the implicit-gradient trainer uses the
hypergradients, an evolutionary one (CMA-ES) only the held-out loss and accuracy
(`compute_hypergrad=False`). All randomness of a split comes from one generator seeded by
(seed, outer step, held-out domain), so any split of any step can be recomputed on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from domainbed.lib.misc import seed_hash
from domainbed_itl.meta.base_model import Params, accuracy, init_mlp, mlp_forward
from domainbed_itl.meta.families import LossFamily
from domainbed_itl.meta.guard import all_finite
from domainbed_itl.meta.hypergrad import implicit_hypergradient
from domainbed_itl.meta.inner import train_inner


@dataclass(frozen=True)
class MetaConfig:
    """Settings of the inner problem and of the hypergradient (paper values where it gives
    them: SGD lr 0.01, batch 32, J = 15; the others are ours, see the README)."""

    hidden: tuple[int, ...] = (1024, 256)
    inner_steps: int = 2000
    inner_lr: float = 0.01
    inner_batch: int = 32
    neumann_terms: int = 15
    neumann_alpha: float = 0.01
    hessian_batch: int = 1024
    val_batch: int = 2048
    eval_examples: int = 2000
    seed: int = 0


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
    or when the split went non-finite (`reason` then says where)."""

    held_out: int
    inner_acc: float
    held_out_acc: float
    meta_loss: float
    hypergrad: torch.Tensor | None
    neumann_ratio: float
    finite: bool
    reason: str = ""


def _sample(rows: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    if k <= 0 or k >= len(rows):
        return rows
    return rows[torch.randperm(len(rows), generator=generator)[:k]]


def run_split(
    data: DomainSet,
    held_out: int,
    w: torch.Tensor,
    family: LossFamily,
    cfg: MetaConfig,
    step: int,
    compute_hypergrad: bool = True,
) -> SplitResult:
    """Train on every domain but `held_out` with L_w, evaluate on `held_out`, and (optionally)
    return dM/dw with M = cross-entropy on a random `val_batch` of the held-out domain.

    Hessian and mixed derivative use one random batch of `hessian_batch` examples from the
    pooled source domains.
    """
    g = torch.Generator().manual_seed(seed_hash(cfg.seed, step, held_out))
    device = data.x.device
    widths = (data.x.shape[1], *cfg.hidden, data.num_classes)
    params = init_mlp(widths, g, device=device)
    w_fixed = w.detach().to(device)
    source = data.rows_except(held_out)

    def inner_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return family.loss(logits, y, w_fixed)

    trained = train_inner(params, data.x, data.y, inner_loss, cfg.inner_steps, cfg.inner_lr,
                          cfg.inner_batch, g, pool=source)
    if not trained.finite:
        return SplitResult(held_out, float("nan"), float("nan"), float("nan"), None,
                           float("nan"), False, "inner loop went non-finite")
    params = trained.params
    source_domains = [d for d in range(data.n_domains) if d != held_out]
    inner_acc = sum(
        accuracy(params, data.x[data.eval_rows[d]], data.y[data.eval_rows[d]])
        for d in source_domains
    ) / len(source_domains)
    rows = data.eval_rows[held_out]
    held_out_acc = accuracy(params, data.x[rows], data.y[rows])

    val_rows = _sample(data.rows(held_out), cfg.val_batch, g).to(device)
    xv, yv = data.x[val_rows], data.y[val_rows]

    def val_loss(theta: Params) -> torch.Tensor:
        return F.cross_entropy(mlp_forward(theta, xv), yv)

    if not compute_hypergrad:
        with torch.no_grad():
            m = float(val_loss(params))
        ok = all_finite(torch.tensor(m))
        return SplitResult(held_out, inner_acc, held_out_acc, m, None, float("nan"), ok,
                           "" if ok else "held-out loss non-finite")

    train_rows = _sample(source, cfg.hessian_batch, g).to(device)
    xt, yt = data.x[train_rows], data.y[train_rows]

    def train_loss(theta: Params, w_leaf: torch.Tensor) -> torch.Tensor:
        return family.loss(mlp_forward(theta, xt), yt, w_leaf)

    hg = implicit_hypergradient(params, w_fixed, train_loss, val_loss, cfg.neumann_alpha,
                                cfg.neumann_terms)
    ok = all_finite(hg.grad) and all_finite(torch.tensor(hg.val_loss))
    return SplitResult(held_out, inner_acc, held_out_acc, hg.val_loss,
                       hg.grad.cpu() if ok else None, hg.neumann_ratio, ok,
                       "" if ok else "hypergradient non-finite")


def leave_one_domain_out(
    data: DomainSet,
    w: torch.Tensor,
    family: LossFamily,
    cfg: MetaConfig,
    step: int,
    compute_hypergrad: bool = True,
) -> list[SplitResult]:
    """`run_split` for every domain in turn (sequentially: batching the models was slower on
    CPU, see FACTS.md)."""
    return [run_split(data, d, w, family, cfg, step, compute_hypergrad)
            for d in range(data.n_domains)]
