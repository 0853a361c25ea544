"""One implicit-gradient meta-training run and its files: the outer loop on a run's data, resumed
from its checkpoint, writing after every outer step the checkpoint (first: it carries the log
records), log.jsonl, learned_loss.json and learning_curve.png.

`meta_train` makes one such run; `meta_train_many` (`ift_job`) makes several with the same files,
so either command resumes the other's runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tqdm import tqdm

from domainbed.lib import atomic
from domainbed.lib.cli import UsageError, print_error
from domainbed_itl.meta.guard import require_finite
from domainbed_itl.meta.outer import DomainSet, make_domain_set
from domainbed_itl.meta.plot import plot_learning_curve
from domainbed_itl.meta.ray_backend import RayBackend, RaySplitRunner
from domainbed_itl.meta.run_files import CHECKPOINT, CURVE, LEARNED, LOG
from domainbed_itl.meta.run_settings import Prepared, meta_config
from domainbed_itl.meta.state import append_log, load_checkpoint, rewrite_log, save_checkpoint
from domainbed_itl.meta.trainer import MetaTrainer

# What a checkpoint must hold to resume from.
CHECKPOINT_KEYS = ("config", "w", "opt", "step", "lr_scale", "consecutive_skips", "rollback",
                   "records")


def write_outputs(
    out: Path, trainer: MetaTrainer, config: dict[str, Any], record: dict[str, Any], title: str
) -> None:
    """Checkpoint first (it carries the log records), then the files derived from it."""
    require_finite(trainer.w.detach(), "learned w")
    save_checkpoint(out / CHECKPOINT, {"config": config, **trainer.state_dict()})
    append_log(out / LOG, record)
    atomic.write_text(out / LEARNED, trainer.family.learned(trainer.w.detach()).to_json())
    plot_learning_curve(trainer.records, out / CURVE, title)


def read_checkpoint(out: Path, family: Any) -> dict[str, Any] | None:
    """The run's saved state, None for a new run (the reader `run_settings.prepare` takes)."""
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
          backend: RayBackend | None, prog: str) -> int:
    """Run (or resume) the outer loop to --outer_steps, writing the outputs after each step;
    3, with an error line from `prog`, once --max_skips steps in a row were skipped."""
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
            print_error(prog, f"{trainer.consecutive_skips} outer steps in a row were skipped "
                        f"(last: {record['reason']}); lower --outer_lr or --neumann_alpha, or "
                        "pick another --init")
            return 3
    return 0
