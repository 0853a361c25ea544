"""Meta-train a loss function by implicit gradients (the paper's Algorithm 1).

    python -m domainbed_itl.meta.train --dataset RotatedMNIST --data_dir D --output_dir O

Every outer step runs one leave-one-domain-out sweep (a fresh MLP per held-out domain, trained
on the others with L_w), combines the per-domain hypergradients by PCGrad and takes one step
on w. After each step the output directory gets: checkpoint.pt (everything needed to resume),
log.jsonl (one line per outer step), learned_loss.json (the current w as ERM_ITL's --hparams)
and learning_curve.png. Rerunning the same command resumes after the last finished step; other
settings are refused, except --outer_steps (to extend a run) and --device.

Guard rails: a step whose inner loops or hypergradients go non-finite is skipped and logged; the
previous update is then rolled back and the outer learning rate halved, since the w it produced
is what made training unstable. After --max_skips skips in a row the run stops with an error.
No non-finite w is ever written.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset
from tqdm import tqdm

from domainbed import datasets, hparams_registry
from domainbed.datasets import get_dataset_class
from domainbed.datasets.base import DataUnavailableError
from domainbed.lib.misc import seed_hash
from domainbed.lib.output_dir import check_output_dir, make_output_dir
from domainbed_itl.meta.families import (
    INIT_PRESETS,
    LossFamily,
    initial_w,
    make_family,
    w_from_file,
)
from domainbed_itl.meta.guard import all_finite, require_finite
from domainbed_itl.meta.linear_solve import SOLVERS, parse_alpha
from domainbed_itl.meta.outer import (
    DomainSet,
    MetaConfig,
    SplitResult,
    leave_one_domain_out,
    make_domain_set,
)
from domainbed_itl.meta.plot import plot_learning_curve
from domainbed_itl.meta.splits import BATCHING
from domainbed_itl.meta.state import (
    append_log,
    atomic_write_json,
    check_config,
    load_checkpoint,
    remove_temporaries,
    rewrite_log,
    save_checkpoint,
)
from domainbed_itl.meta.surgery import METHODS, aggregate

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
LEARNED = "learned_loss.json"
CURVE = "learning_curve.png"
# What a checkpoint must hold to resume from.
CHECKPOINT_KEYS = ("config", "w", "opt", "step", "lr_scale", "consecutive_skips", "rollback",
                   "records")
# Settings that may change between the pieces of one resumed run.
OPERATIONAL = ("outer_steps", "device", "threads", "max_skips", "data_dir", "output_dir",
               "inner_batching", "cuda_graphs")
# Settings added after runs had been saved: recorded only when not at their default, so those
# checkpoints still resume.
LATER_SETTINGS: dict[str, Any] = {"exclude_envs": [], "outer_step_scale": "absolute",
                                  "hypergrad_solver": "neumann", "cg_damping": 0.0,
                                  "cg_warm_start": False}


def build_parser() -> argparse.ArgumentParser:
    defaults = MetaConfig()
    p = argparse.ArgumentParser(
        prog="python -m domainbed_itl.meta.train",
        description="Meta-learn a loss function by implicit gradients (Gao et al., ICML 2022).",
    )
    p.add_argument("--dataset", default="RotatedMNIST", help="any dataset of domainbed.datasets")
    p.add_argument("--exclude_envs", type=int, nargs="+", default=[],
                   help="environments left out of meta-training entirely (e.g. the test "
                   "domain a learned loss will later be deployed on)")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--family", default="taylor", choices=("taylor", "isce"))
    p.add_argument("--order", type=int, default=4, help="Taylor polynomial order (2-5)")
    p.add_argument("--init", default="ce_like",
                   help=f"starting w: {', '.join(INIT_PRESETS)} or a JSON file")
    p.add_argument("--outer_steps", type=int, default=200)
    p.add_argument("--outer_lr", type=float, default=0.01)
    p.add_argument("--outer_optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--outer_step_scale", default="absolute", choices=("absolute", "relative"),
                   help="relative: coordinate i's outer step is multiplied by max(|w0_i|, 1), "
                   "as CMA-ES's --sigma0 is; the CE-like start has coefficients near 100, "
                   "which an absolute step of lr 0.01 barely moves")
    p.add_argument("--surgery", default="pcgrad", choices=METHODS)
    p.add_argument("--hidden", type=int, nargs="+", default=list(defaults.hidden),
                   help="hidden widths of the MLP base model")
    p.add_argument("--inner_steps", type=int, default=defaults.inner_steps)
    p.add_argument("--inner_lr", type=float, default=defaults.inner_lr)
    p.add_argument("--inner_batch", type=int, default=defaults.inner_batch)
    p.add_argument("--neumann_terms", type=int, default=defaults.neumann_terms)
    p.add_argument("--neumann_alpha", type=parse_alpha, default=defaults.neumann_alpha,
                   help="Neumann step, or auto: 1 / |largest Hessian eigenvalue| by 10 power "
                   "iterations per split")
    p.add_argument("--hypergrad_solver", default=defaults.hypergrad_solver, choices=SOLVERS,
                   help="how H^-1 v is solved, with --neumann_terms Hessian-vector products")
    p.add_argument("--cg_damping", type=float, default=defaults.cg_damping,
                   help="CG solves (H + damping I) u = v")
    p.add_argument("--cg_warm_start", action="store_true",
                   help="start each CG solve from the previous outer step's solution of the "
                   "same held-out domain (optimally rescaled; costs one HVP of the budget)")
    p.add_argument("--inner_batching", default=defaults.inner_batching, choices=BATCHING,
                   help="train the leave-one-out models one after another or stacked; auto: "
                   "stacked on GPUs, sequential on CPUs (same results either way)")
    p.add_argument("--cuda_graphs", default="on", choices=("on", "off"),
                   help="replay the stacked inner step from a CUDA graph (GPU only)")
    p.add_argument("--hessian_batch", type=int, default=defaults.hessian_batch,
                   help="source examples for the Hessian and mixed derivative")
    p.add_argument("--val_batch", type=int, default=defaults.val_batch,
                   help="held-out examples for the meta-loss gradient (0 = all)")
    p.add_argument("--eval_examples", type=int, default=defaults.eval_examples,
                   help="examples per domain for the logged accuracies (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_skips", type=int, default=5,
                   help="stop after this many skipped outer steps in a row")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default); 1 is fastest on a shared "
                   "2-core machine, where threads of concurrent jobs otherwise spin-wait")
    return p


def validate(args: argparse.Namespace) -> None:
    """Reject settings that cannot work before anything is loaded or written."""
    positive = ("inner_steps", "inner_batch", "hessian_batch", "outer_steps", "max_skips")
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    for name in ("outer_lr", "inner_lr"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name} must be positive")
    if not args.cg_damping >= 0:
        raise ValueError("--cg_damping must be >= 0")
    if args.neumann_terms < 0 or any(h < 1 for h in args.hidden):
        raise ValueError("--neumann_terms must be >= 0 and --hidden widths >= 1")
    if len(set(args.exclude_envs)) != len(args.exclude_envs):
        raise ValueError(f"--exclude_envs lists an environment twice: {args.exclude_envs}")
    check_dataset(args.dataset)


def check_dataset(name: str) -> None:
    """Refuse an unknown --dataset by name, before seconds of loading (used by cmaes too)."""
    if name not in datasets.DATASETS:
        raise ValueError(f"unknown --dataset {name!r}; choose one of: "
                         + ", ".join(datasets.DATASETS))


def drop_envs(
    domains: list[tuple[torch.Tensor, torch.Tensor]], exclude: list[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The domains that stay after --exclude_envs; at least two must remain for
    leave-one-domain-out."""
    n = len(domains)
    bad = [e for e in exclude if not 0 <= e < n]
    if bad:
        raise ValueError(f"--exclude_envs {bad} out of range: the dataset has environments "
                         f"0..{n - 1}")
    skip = set(exclude)
    kept = [d for i, d in enumerate(domains) if i not in skip]
    if len(kept) < 2:
        raise ValueError(f"--exclude_envs leaves {len(kept)} environment(s); "
                         "leave-one-domain-out needs at least two")
    return kept


def meta_config(args: argparse.Namespace) -> MetaConfig:
    return MetaConfig(
        hidden=tuple(args.hidden), inner_steps=args.inner_steps, inner_lr=args.inner_lr,
        inner_batch=args.inner_batch, neumann_terms=args.neumann_terms,
        neumann_alpha=args.neumann_alpha, hessian_batch=args.hessian_batch,
        val_batch=args.val_batch, eval_examples=args.eval_examples, seed=args.seed,
        hypergrad_solver=args.hypergrad_solver, cg_damping=args.cg_damping,
        cg_warm_start=args.cg_warm_start, inner_batching=args.inner_batching,
        cuda_graphs=args.cuda_graphs == "on",
    )


def load_domains(
    dataset: str, data_dir: str, seed: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """Every environment of `dataset` as in-memory (x, y) tensors, split as DomainBed would
    with this seed (the dataset shuffles with the global generator, so it is seeded here in a
    forked RNG scope that leaves the caller's state alone)."""
    hparams = hparams_registry.default_hparams("ERM", dataset)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        ds = get_dataset_class(dataset)(data_dir, [], hparams)
    domains = []
    for env in ds.datasets:
        if isinstance(env, TensorDataset):
            x, y = env.tensors[0], env.tensors[1]
        else:
            items = [env[i] for i in range(len(env))]
            x = torch.stack([item[0] for item in items])
            y = torch.tensor([int(item[1]) for item in items])
        domains.append((x, y))
    return domains, ds.num_classes


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
    """The outer loop's state and one outer step; kept apart from the CLI so tests and other
    optimisers can drive it directly."""

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
    ) -> None:
        self.data, self.family, self.cfg = data, family, cfg
        self.outer_lr, self.surgery = outer_lr, surgery
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
                                       warm=self.warm)
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
            "seconds": round(time.perf_counter() - start, 3),
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


def run_config(args: argparse.Namespace, family: LossFamily, w0: torch.Tensor) -> dict[str, Any]:
    """What a resumed run must share with the original: every setting that changes results,
    with the starting w by value (an --init file could have changed)."""
    config = {k: v for k, v in vars(args).items() if k not in OPERATIONAL}
    config["hidden"] = list(args.hidden)
    config["exclude_envs"] = sorted(args.exclude_envs)
    for key, default in LATER_SETTINGS.items():
        if config[key] == default:
            del config[key]
    config["family_spec"] = family.spec()
    config["w0"] = [float(v) for v in w0]
    return config


def write_outputs(
    out: Path, trainer: MetaTrainer, config: dict[str, Any], record: dict[str, Any], title: str
) -> None:
    """Checkpoint first (it carries the log records), then the files derived from it."""
    require_finite(trainer.w.detach(), "learned w")
    save_checkpoint(out / CHECKPOINT, {"config": config, **trainer.state_dict()})
    append_log(out / LOG, record)
    atomic_write_json(out / LEARNED, trainer.family.hparams(trainer.w.detach()))
    plot_learning_curve(trainer.records, out / CURVE, title)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        validate(args)
        family = make_family(args.family, args.order)
        if args.init not in INIT_PRESETS:
            w_from_file(family, args.init)  # a bad file is refused before the data loads
        out = check_output_dir(args.output_dir)
        saved = load_checkpoint(out / CHECKPOINT, CHECKPOINT_KEYS)
        domains, num_classes = load_domains(args.dataset, args.data_dir, args.seed)
        domains = drop_envs(domains, args.exclude_envs)
        w0 = initial_w(family, args.init, num_classes,
                       torch.Generator().manual_seed(seed_hash(args.seed, "init")))
        config = run_config(args, family, w0)
        if saved is not None:
            check_config(saved["config"], config)
        make_output_dir(out)
    except (ValueError, DataUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    remove_temporaries(out, (CHECKPOINT, LOG, LEARNED, CURVE))

    cfg = meta_config(args)
    data = make_domain_set(domains, num_classes, cfg.eval_examples, args.seed, args.device)
    trainer = MetaTrainer(data, family, cfg, w0, args.outer_optimizer, args.outer_lr,
                          args.surgery, args.outer_step_scale)
    if saved is not None:
        try:
            trainer.load_state_dict(saved)
        except (ValueError, TypeError, KeyError, RuntimeError) as err:
            reason = " ".join(str(err).split())[:200]
            print(f"error: {out / CHECKPOINT} does not fit this run ({reason}); delete it to "
                  "start over, or choose a new --output_dir", file=sys.stderr)
            return 2
        rewrite_log(out / LOG, trainer.records)
    else:
        rewrite_log(out / LOG, [])
    title = f"{args.dataset}: " + ", ".join(f"{k} {v}" for k, v in family.spec().items())
    bar = tqdm(range(trainer.step, args.outer_steps), initial=trainer.step,
               total=args.outer_steps, desc="outer steps", dynamic_ncols=True)
    for _ in bar:
        record = trainer.outer_step()
        write_outputs(out, trainer, config, record, title)
        if record["held_out_acc"] is not None:
            bar.set_postfix(held_out=f"{record['held_out_acc']:.4f}",
                            skipped=record["skipped"])
        if trainer.consecutive_skips >= args.max_skips:
            print(f"error: {trainer.consecutive_skips} outer steps in a row were skipped "
                  f"(last: {record['reason']}); lower --outer_lr or --neumann_alpha, or pick "
                  "another --init", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
