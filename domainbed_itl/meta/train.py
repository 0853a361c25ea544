"""Meta-train a loss function by implicit gradients (the paper's Algorithm 1).

    python -m domainbed_itl.meta.train --dataset RotatedMNIST --data_dir D --output_dir O

Every outer step runs one leave-one-domain-out sweep (a fresh MLP per held-out domain, trained
on the others with L_w), combines the per-domain hypergradients by PCGrad and takes one step
on w. After each step the output directory gets: checkpoint.pt (everything needed to resume),
log.jsonl (one line per outer step), learned_loss.json (the current w as a `LearnedLoss`, in
the --hparams form that deploys it) and learning_curve.png. Rerunning the same command resumes
after the last finished step; other settings are refused, except those that change only where
and how fast it runs (--outer_steps to extend a run, --device, --threads, --inner_batching,
--backend ...).

`--preset paper` sets everything the paper states (Algorithm 1, Sec. 4.1 and A.5: gradient
descent on w at lr 0.01 for 200 steps, PCGrad, MLP 784-1024-256-10, inner SGD lr 0.01 batch 32,
Neumann J = 15) and the settings it leaves unstated, chosen by measurement
(`meta.check_endpoints`, results/hypergrad_paper). Flags given explicitly override the preset.
Without it the defaults are this command's earlier ones (Adam from the ce_like start), so run
directories saved before the preset existed resume unchanged.

`--backend ray` runs the inner trainings of each step as parallel Ray tasks
(`meta.ray_backend`), with the same results. The library behind this command line is
`meta.trainer` (the outer loop and its guard rails), `meta.data` and `meta.run_settings`
(what this command shares with `meta.cmaes`). After --max_skips skipped steps in a row the run
stops with an error; no non-finite w is ever written.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from domainbed.datasets.base import DataUnavailableError
from domainbed.lib import atomic
from domainbed.lib.cli import OneLineParser, UsageError, command, print_error
from domainbed.lib.output_dir import make_output_dir
from domainbed_itl.meta.guard import require_finite
from domainbed_itl.meta.linear_solve import SOLVERS, parse_alpha
from domainbed_itl.meta.outer import DomainSet, MetaConfig, make_domain_set
from domainbed_itl.meta.plot import plot_learning_curve
from domainbed_itl.meta.ray_backend import RayBackend, RaySplitRunner
from domainbed_itl.meta.run_files import CHECKPOINT, CURVE, LEARNED, LOG
from domainbed_itl.meta.run_settings import (
    Prepared,
    add_execution_arguments,
    add_problem_arguments,
    meta_config,
    prepare,
    run_config,
    validate_problem,
)
from domainbed_itl.meta.splits import BATCHING
from domainbed_itl.meta.state import (
    append_log,
    check_config,
    load_checkpoint,
    rewrite_log,
    save_checkpoint,
)
from domainbed_itl.meta.surgery import METHODS
from domainbed_itl.meta.trainer import MetaTrainer

# What a checkpoint must hold to resume from.
CHECKPOINT_KEYS = ("config", "w", "opt", "step", "lr_scale", "consecutive_skips", "rollback",
                   "records")
# Settings of this command that may change between the pieces of one resumed run (besides
# run_settings.WHERE_IT_RUNS).
OPERATIONAL = ("outer_steps", "device", "max_skips", "inner_batching", "cuda_graphs")
# Settings recorded in a run's configuration only when not at their default, so that a run saved
# without them resumes, and a run with them is refused by a command that would ignore them.
RECORDED_OFF_DEFAULT: dict[str, Any] = {"exclude_envs": [], "outer_step_scale": "absolute",
                                  "hypergrad_solver": "neumann", "cg_damping": 0.0,
                                  "cg_warm_start": False, "preset": "none"}

# The paper's method. Stated by the paper: the outer optimiser and its step (Algorithm 1 line
# 16, A.5), PCGrad, 200 outer steps, the base model, the inner SGD and J. Unstated, chosen by
# meta.check_endpoints at the real inner end points (results/hypergrad_paper): the start w,
# the Neumann step, the inner length and the Hessian batch.
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "paper": {
        "outer_optimizer": "sgd", "outer_lr": 0.01, "outer_step_scale": "absolute",
        "surgery": "pcgrad", "outer_steps": 200, "hidden": [1024, 256], "inner_lr": 0.01,
        "inner_batch": 32, "neumann_terms": 15, "hypergrad_solver": "neumann",
        "init": "ce_bounded", "neumann_alpha": 0.1, "inner_steps": 1000,
        "hessian_batch": 1024,
    },
}


PROG = "domainbed_itl.meta.train"


def build_parser() -> argparse.ArgumentParser:
    defaults = MetaConfig()
    p = OneLineParser(
        prog="python -m domainbed_itl.meta.train",
        description="Meta-learn a loss function by implicit gradients (Gao et al., ICML 2022).",
    )
    p.add_argument("--preset", default="none", choices=tuple(PRESETS),
                   help="paper: " + ", ".join(f"--{k} {_shown(v)}"
                                              for k, v in PRESETS["paper"].items())
                   + " (explicit flags override these); none: the defaults below")
    add_problem_arguments(p)
    p.add_argument("--outer_steps", type=int, default=200)
    p.add_argument("--outer_lr", type=float, default=0.01)
    p.add_argument("--outer_optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--outer_step_scale", default="absolute", choices=("absolute", "relative"),
                   help="relative: coordinate i's outer step is multiplied by max(|w0_i|, 1), "
                   "as CMA-ES's --sigma0 is; the CE-like start has coefficients near 100, "
                   "which an absolute step of lr 0.01 barely moves")
    p.add_argument("--surgery", default="pcgrad", choices=METHODS)
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
    p.add_argument("--max_skips", type=int, default=5,
                   help="stop after this many skipped outer steps in a row")
    p.add_argument("--device", default="cpu")
    add_execution_arguments(p)
    return p


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def parse_args(argv: list[str] | None,
               parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse the command line (with `build_parser()` unless another parser, built on it, is
    given) and apply --preset: its values stand in for the defaults, so a flag given
    explicitly still wins. The preset's name stays in the result, and so in the run's config."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if not preset:
        return args
    # argparse fills in a default only where the namespace has no value yet.
    return parser.parse_args(argv, argparse.Namespace(**copy.deepcopy(preset)))


def validate(args: argparse.Namespace) -> None:
    """Reject settings that cannot work before anything is loaded or written."""
    for name in ("hessian_batch", "outer_steps", "max_skips"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    if not args.outer_lr > 0:
        raise ValueError("--outer_lr must be positive")
    if not args.cg_damping >= 0:
        raise ValueError("--cg_damping must be >= 0")
    if args.neumann_terms < 0:
        raise ValueError("--neumann_terms must be >= 0")
    if args.backend == "ray" and args.device != "cpu":
        raise ValueError("--backend ray trains on the Ray workers' CPUs; leave --device out")
    validate_problem(args)


def write_outputs(
    out: Path, trainer: MetaTrainer, config: dict[str, Any], record: dict[str, Any], title: str
) -> None:
    """Checkpoint first (it carries the log records), then the files derived from it."""
    require_finite(trainer.w.detach(), "learned w")
    save_checkpoint(out / CHECKPOINT, {"config": config, **trainer.state_dict()})
    append_log(out / LOG, record)
    atomic.write_text(out / LEARNED, trainer.family.learned(trainer.w.detach()).to_json())
    plot_learning_curve(trainer.records, out / CURVE, title)


def _read_checkpoint(out: Path, family: Any) -> dict[str, Any] | None:
    return load_checkpoint(out / CHECKPOINT, CHECKPOINT_KEYS)


def make_trainer(args: argparse.Namespace, run: Prepared, data: DomainSet,
                 backend: RayBackend | None) -> MetaTrainer:
    """The run's outer loop on `data`, in the state its checkpoint saved (if any); UsageError
    when the checkpoint does not fit the run."""
    trainer = MetaTrainer(data, run.family, meta_config(args), run.w0, args.outer_optimizer,
                          args.outer_lr, args.surgery, args.outer_step_scale,
                          runner=RaySplitRunner(backend) if backend is not None else None)
    if run.saved is not None:
        try:
            trainer.load_state_dict(run.saved)
        except (ValueError, TypeError, KeyError, RuntimeError) as err:
            reason = " ".join(str(err).split())[:200]
            raise UsageError(f"{run.out / CHECKPOINT} does not fit this run ({reason}); delete "
                             "it to start over, or choose a new --output_dir") from None
    return trainer


def train(args: argparse.Namespace, run: Prepared, config: dict[str, Any],
          backend: RayBackend | None) -> int:
    """Run (or resume) the outer loop to --outer_steps, writing the outputs after each step."""
    out = run.out
    atomic.remove_leftovers(out)
    data = make_domain_set(run.domains, run.num_classes, args.eval_examples, args.seed,
                           args.device)
    trainer = make_trainer(args, run, data, backend)
    rewrite_log(out / LOG, trainer.records)
    title = f"{args.dataset}: " + ", ".join(f"{k} {v}" for k, v in run.family.spec().items())
    bar = tqdm(range(trainer.step, args.outer_steps), initial=trainer.step,
               total=args.outer_steps, desc="outer steps", dynamic_ncols=True)
    for _ in bar:
        record = trainer.outer_step()
        write_outputs(out, trainer, config, record, title)
        if record["held_out_acc"] is not None:
            bar.set_postfix(held_out=f"{record['held_out_acc']:.4f}",
                            skipped=record["skipped"])
        if trainer.consecutive_skips >= args.max_skips:
            print_error(PROG, f"{trainer.consecutive_skips} outer steps in a row were skipped "
                        f"(last: {record['reason']}); lower --outer_lr or --neumann_alpha, or "
                        "pick another --init")
            return 3
    return 0


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    backend = None
    try:
        try:
            validate(args)
            backend = RayBackend(args.ray_address) if args.backend == "ray" else None
            run = prepare(args, _read_checkpoint)
            config = run_config(args, run.family, run.w0, OPERATIONAL, RECORDED_OFF_DEFAULT)
            if run.saved is not None:
                check_config(run.saved["config"], config)
            make_output_dir(run.out)
        except (ValueError, DataUnavailableError) as err:
            raise UsageError(str(err)) from None
        return train(args, run, config, backend)
    finally:
        if backend is not None:
            backend.close()


if __name__ == "__main__":
    sys.exit(main())
