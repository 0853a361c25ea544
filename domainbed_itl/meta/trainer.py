"""The implicit-gradient outer loop (the paper's Algorithm 1) as a library: the state of w
and its optimiser, and one outer step with its guard rails.

An outer step runs one leave-one-domain-out sweep at the current w, combines the per-domain
hypergradients (PCGrad by default) and takes one optimiser step on w. A step whose inner loops
or hypergradients go non-finite is skipped and logged; the previous update is then rolled back
and the outer learning rate halved, since the w it produced is what made training unstable. No
non-finite w is ever kept. `state_dict` / `load_state_dict` carry everything a resumed run
needs (the command line, `meta_train`, checkpoints them).

`RunGroups` advances several independent runs (other seeds, orders, datasets; the command
line is `meta_train_many`) an outer step at a time. Runs that differ in their seed only train
their splits as one stack of models (`meta.batched.run_stack`) where the splits are batched
anyway (on GPUs, or `inner_batching="batched"`); every other run steps on its own, exactly as
alone. Each run keeps its own w, optimiser and guard rails, so one that diverges is skipped and
rolled back while the others go on.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from domainbed.lib.misc import seed_hash
from domainbed_itl.meta.batched import Pool, StackPart, pool_domains, run_stack, shared_settings
from domainbed_itl.meta.families import LossFamily
from domainbed_itl.meta.guard import all_finite, require_finite
from domainbed_itl.meta.outer import (
    DomainSet,
    MetaConfig,
    SplitResult,
    SplitRunner,
    keep_solutions,
    leave_one_domain_out,
    split_starts,
)
from domainbed_itl.meta.splits import batching_for
from domainbed_itl.meta.surgery import aggregate


def make_optimizer(kind: str, w: torch.nn.Parameter, lr: float) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam([w], lr=lr)
    return torch.optim.SGD([w], lr=lr)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


class MetaTrainer:
    """The outer loop's state and one outer step. `runner` runs the splits of a step (default:
    in this process, `cfg.inner_batching`; `meta.ray_backend` runs them as parallel tasks)."""

    def __init__(
        self,
        data: DomainSet,
        family: LossFamily,
        cfg: MetaConfig,
        w0: torch.Tensor,
        optimizer: str = "adam",
        outer_lr: float = 0.01,
        surgery: str = "pcgrad",
        step_scale: str = "absolute",
        runner: SplitRunner | None = None,
    ) -> None:
        self.data, self.family, self.cfg = data, family, cfg
        self.outer_lr, self.surgery, self.runner = outer_lr, surgery, runner
        self.w = torch.nn.Parameter(require_finite(w0.detach().clone().float(), "initial w"))
        # The optimisers' state depends on gradients only, so scaling the applied update is a
        # per-coordinate learning rate.
        self.step_scale = (w0.detach().abs().float().clamp(min=1.0)
                           if step_scale == "relative" else None)
        self.opt = make_optimizer(optimizer, self.w, outer_lr)
        self.step = 0
        self.lr_scale = 1.0
        self.consecutive_skips = 0
        self.rollback: dict[str, Any] | None = None
        self.records: list[dict[str, Any]] = []
        # CG warm starts (previous solutions per held-out domain); not checkpointed.
        self.warm: dict[int, list[torch.Tensor]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "w": self.w.detach().clone(), "opt": self.opt.state_dict(), "step": self.step,
            "lr_scale": self.lr_scale, "consecutive_skips": self.consecutive_skips,
            "rollback": self.rollback, "records": self.records,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.w.copy_(require_finite(state["w"], "checkpointed w"))
        self.opt.load_state_dict(state["opt"])
        self.step, self.lr_scale = state["step"], state["lr_scale"]
        self.consecutive_skips, self.rollback = state["consecutive_skips"], state["rollback"]
        self.records = state["records"]

    def _snapshot(self) -> dict[str, Any]:
        return {"w": self.w.detach().clone(), "opt": copy.deepcopy(self.opt.state_dict())}

    def _restore(self, snap: dict[str, Any]) -> None:
        with torch.no_grad():
            self.w.copy_(snap["w"])
        self.opt.load_state_dict(copy.deepcopy(snap["opt"]))

    def combine(self, results: list[SplitResult]) -> torch.Tensor:
        """One update direction from the per-domain hypergradients."""
        grads = torch.stack([r.hypergrad for r in results])
        g = torch.Generator().manual_seed(seed_hash(self.cfg.seed, self.step, "surgery"))
        return aggregate(grads, self.surgery, g)

    def outer_step(self) -> dict[str, Any]:
        """Run one leave-one-domain-out sweep at the current w, update w unless something went
        non-finite, and return the log record of this step."""
        start = time.perf_counter()
        w_used = self.w.detach().clone()
        results = leave_one_domain_out(self.data, w_used, self.family, self.cfg, self.step,
                                       warm=self.warm, runner=self.runner)
        return self.finish_step(w_used, results, start)

    def finish_step(self, w_used: torch.Tensor, results: list[SplitResult],
                    started: float) -> dict[str, Any]:
        """The update of an outer step whose sweep at `w_used` (the current w) gave `results`,
        with its guard rails, and the step's log record (`started`: its perf_counter start;
        for runs stacked together, the start of the shared sweep)."""
        bad = [r for r in results if not r.finite]
        h = None
        reason = "; ".join(f"domain {r.held_out}: {r.reason}" for r in bad)
        if not bad:
            h = self.combine(results)
            if not all_finite(h):
                reason = "combined hypergradient non-finite"
        skipped = bool(reason)
        if not skipped:
            before = self._snapshot()
            for group in self.opt.param_groups:
                group["lr"] = self.outer_lr * self.lr_scale
            self.w.grad = h.to(self.w)
            self.opt.step()
            self.w.grad = None
            if self.step_scale is not None:
                with torch.no_grad():
                    self.w.copy_(before["w"] + self.step_scale * (self.w - before["w"]))
            if all_finite(self.w):
                self.rollback = before
                self.consecutive_skips = 0
            else:
                self._restore(before)
                skipped, reason = True, "updated w non-finite"
        rolled_back = False
        if skipped:
            self.consecutive_skips += 1
            if self.rollback is not None:
                self._restore(self.rollback)
                self.rollback = None
                self.lr_scale *= 0.5
                rolled_back = True
        record = {
            "step": self.step,
            "inner_acc": _mean([r.inner_acc for r in results]),
            "held_out_acc": _mean([r.held_out_acc for r in results]),
            "meta_loss": _mean([r.meta_loss for r in results]),
            "hypergrad_norm": _finite_or_none(float(h.norm())) if h is not None else None,
            "seconds": round(time.perf_counter() - started, 3),
            "skipped": skipped,
            "reason": reason,
            "rolled_back": rolled_back,
            "lr_scale": self.lr_scale,
            "held_out_accs": [_finite_or_none(r.held_out_acc) for r in results],
            "neumann_ratio_max": _finite_or_none(max(r.neumann_ratio for r in results)),
            "solver_restarts": sum(r.restarts for r in results),
            "neumann_alpha_min": _finite_or_none(min(
                (r.alpha for r in results if math.isfinite(r.alpha)), default=math.nan)),
            "w": [float(v) for v in w_used],
        }
        self.records.append(record)
        self.step += 1
        return record


def stack_key(trainer: MetaTrainer) -> tuple[Any, ...] | None:
    """What runs must share to be stacked together; None for a run that steps on its own (its
    splits run sequentially or through its own runner)."""
    data = trainer.data
    if trainer.runner is not None or batching_for(trainer.cfg, data.x.device) != "batched":
        return None
    return (trainer.family, shared_settings(trainer.cfg), data.x.shape[1], data.num_classes,
            str(data.x.device))


def step_stacked(trainers: Sequence[MetaTrainer], pool: Pool | None = None
                 ) -> list[dict[str, Any]]:
    """One outer step of every run in `trainers` (all of one `stack_key`), their splits
    trained and solved as one stack; the log records in the same order."""
    start = time.perf_counter()
    ws = [t.w.detach().clone() for t in trainers]
    parts = [StackPart(t.data, w, t.cfg, t.step, split_starts(t.data, t.cfg, t.warm))
             for t, w in zip(trainers, ws, strict=True)]
    results = run_stack(parts, trainers[0].family, True, pool)
    records = []
    for t, part, w, res in zip(trainers, parts, ws, results, strict=True):
        if part.starts is not None:
            keep_solutions(t.warm, res)
        records.append(t.finish_step(w, res, start))
    return records


class RunGroups:
    """Several runs advanced one outer step at a time: runs of one `stack_key` as one stack,
    every other run on its own, group after group. `groups` lists the runs' indices per
    group; `pools` holds each stack's data, pooled once (None for a run on its own)."""

    def __init__(self, trainers: Sequence[MetaTrainer]) -> None:
        self.trainers = list(trainers)
        stacks: dict[tuple[Any, ...], list[int]] = {}
        self.groups: list[list[int]] = []
        for i, trainer in enumerate(self.trainers):
            key = stack_key(trainer)
            if key is None:
                self.groups.append([i])
            elif key in stacks:
                stacks[key].append(i)
            else:
                stacks[key] = [i]
                self.groups.append(stacks[key])
        stacked = [stack_key(self.trainers[members[0]]) is not None for members in self.groups]
        self.pools: list[Pool | None] = [
            pool_domains([self.trainers[i].data for i in members]) if is_stack else None
            for members, is_stack in zip(self.groups, stacked, strict=True)]

    def step(self, active: Iterable[int]) -> dict[int, dict[str, Any]]:
        """One outer step of each run in `active` (indices into the trainers); the records."""
        wanted = set(active)
        records: dict[int, dict[str, Any]] = {}
        for members, pool in zip(self.groups, self.pools, strict=True):
            todo = [i for i in members if i in wanted]
            if not todo:
                continue
            if pool is None:
                records.update((i, self.trainers[i].outer_step()) for i in todo)
            else:
                stepped = step_stacked([self.trainers[i] for i in todo], pool)
                records.update(zip(todo, stepped, strict=True))
        return records
