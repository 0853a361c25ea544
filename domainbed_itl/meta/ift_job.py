"""Several implicit-gradient meta-training runs as one job: one run per (dataset, order, seed),
each in its own directory under the job's and exactly the run `meta_train` would make there.

The runs advance one outer step at a time together (`trainer.RunGroups`), so runs that differ
in their seed only train their splits as one stack of models where the splits are stacked.
Every run has its own w, optimiser and guard rails: one that reaches --max_skips stops while the
others go on. Every run is loaded and resumed in memory before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from domainbed.datasets.multiple_domain import DataUnavailableError
from domainbed.lib import atomic
from domainbed.lib.cli import UsageError, print_error
from domainbed.lib.output_dir import make_output_dir
from domainbed_itl.losses.families import get_family
from domainbed_itl.meta.families import make_family
from domainbed_itl.meta.ift_run import make_trainer, read_checkpoint, write_outputs
from domainbed_itl.meta.ift_settings import OPERATIONAL, RECORDED_OFF_DEFAULT, validate
from domainbed_itl.meta.outer import DomainSet, make_domain_set
from domainbed_itl.meta.ray_backend import RayBackend
from domainbed_itl.meta.run_files import LOG
from domainbed_itl.meta.run_settings import Prepared, prepare, run_config
from domainbed_itl.meta.state import check_config, rewrite_log
from domainbed_itl.meta.trainer import MetaTrainer, RunGroups

# The job's own flags (the rest are one run's), dropped from each run's settings.
MANY = ("seeds", "orders", "datasets")


def run_name(args: argparse.Namespace) -> str:
    """The directory of one run under --output_dir."""
    if get_family(args.family).order is not None:
        return f"{args.dataset}_order{args.order}_seed{args.seed}"
    return f"{args.dataset}_{args.family}_seed{args.seed}"


def expand(args: argparse.Namespace) -> list[argparse.Namespace]:
    """The arguments of each run, as `meta_train` would parse them for that run."""
    values = {"seeds": args.seeds or [args.seed], "orders": args.orders or [args.order],
              "datasets": args.datasets or [args.dataset]}
    for name, given in values.items():
        twice = sorted({v for v in given if given.count(v) > 1})
        if twice:
            raise UsageError(f"--{name} lists {', '.join(map(str, twice))} more than once")
    if args.orders and get_family(args.family).order is None:
        raise UsageError(f"--orders applies to a family with orders, not --family {args.family}")
    base = {k: v for k, v in vars(args).items() if k not in MANY}
    runs = []
    for dataset in values["datasets"]:
        for order in values["orders"]:
            for seed in values["seeds"]:
                run = argparse.Namespace(**{**base, "dataset": dataset, "order": order,
                                            "seed": seed})
                run.output_dir = str(Path(args.output_dir) / run_name(run))
                runs.append(run)
    return runs


@dataclass
class Job:
    """One run of the job: its arguments, what `prepare` found, its recorded settings and
    its trainer."""

    args: argparse.Namespace
    run: Prepared[dict[str, Any]]
    config: dict[str, Any]
    trainer: MetaTrainer

    @property
    def name(self) -> str:
        return run_name(self.args)

    @property
    def title(self) -> str:
        spec = ", ".join(f"{k} {v}" for k, v in self.run.family.spec().items())
        return f"{self.args.dataset}: {spec}"


def _domain_set(args: argparse.Namespace, run: Prepared[Any],
                cache: dict[tuple[str, int], DomainSet]) -> DomainSet:
    """The run's domains on its device, shared by the runs of one dataset and seed (their
    data are the same: only the order differs)."""
    key = (args.dataset, args.seed)
    if key not in cache:
        cache[key] = make_domain_set(run.domains, run.num_classes, args.eval_examples,
                                     args.seed, args.device)
    return cache[key]


def _job(args: argparse.Namespace, cache: dict[tuple[str, int], DomainSet],
         backend: RayBackend | None) -> Job:
    """One run prepared and, if it has a checkpoint, resumed in memory; nothing written."""
    try:
        run = prepare(args, read_checkpoint)
        config = run_config(args, run.family, run.w0, OPERATIONAL, RECORDED_OFF_DEFAULT)
        if run.saved is not None:
            check_config(run.saved["config"], config)
    except (ValueError, DataUnavailableError) as err:
        raise UsageError(f"{run_name(args)}: {err}") from None
    data = _domain_set(args, run, cache)
    run = dataclasses.replace(run, domains=[])  # the DomainSet holds the data now
    return Job(args, run, config, make_trainer(args, run, data, backend))


def checked_runs(args: argparse.Namespace) -> list[argparse.Namespace]:
    """The runs, each refused (as a UsageError) for what `meta_train` would refuse it before
    loading anything."""
    runs = expand(args)
    for run in runs:
        try:
            validate(run)
            make_family(run.family, run.order)
        except ValueError as err:
            raise UsageError(str(err)) from None
    return runs


def prepare_jobs(runs: Sequence[argparse.Namespace], backend: RayBackend | None) -> list[Job]:
    """Every run loaded and resumed in memory before anything is written; a run that cannot
    start is a UsageError naming it."""
    cache: dict[tuple[str, int], DomainSet] = {}
    return [_job(run, cache, backend) for run in runs]


def _held_out_by_group(jobs: Sequence[Job]) -> dict[str, str]:
    """The mean held-out accuracy of each (dataset, order) group's last records."""
    groups: dict[str, list[float]] = {}
    for job in jobs:
        label = job.name.rsplit("_seed", 1)[0]
        last = job.trainer.records[-1]["held_out_acc"] if job.trainer.records else None
        groups.setdefault(label, [])
        if last is not None:
            groups[label].append(last)
    return {label: f"{sum(accs) / len(accs):.4f}" for label, accs in groups.items() if accs}


def train_all(jobs: Sequence[Job], outer_steps: int, max_skips: int, prog: str) -> int:
    """Advance every run to `outer_steps`, one outer step of all at a time, writing each run's
    outputs after each of its steps; 3, with an error line from `prog` per run stopped, if a
    run reached `max_skips` skipped steps in a row."""
    for job in jobs:
        make_output_dir(job.run.out)
        atomic.remove_leftovers(job.run.out)
        rewrite_log(job.run.out / LOG, job.trainer.records)
    groups = RunGroups([job.trainer for job in jobs])
    active = [i for i, job in enumerate(jobs) if job.trainer.step < outer_steps]
    status = 0
    bar = tqdm(total=outer_steps, initial=min(job.trainer.step for job in jobs),
               desc="outer steps", dynamic_ncols=True)
    with bar:
        while active:
            for i, record in groups.step(active).items():
                job = jobs[i]
                write_outputs(job.run.out, job.trainer, job.config, record, job.title)
                if job.trainer.consecutive_skips >= max_skips:
                    print_error(prog, f"{job.name}: {job.trainer.consecutive_skips} outer steps "
                                f"in a row were skipped (last: {record['reason']}); it stops "
                                "here, the other runs go on; lower --outer_lr or "
                                "--neumann_alpha, or pick another --init")
                    status = 3
            active = [i for i in active if jobs[i].trainer.step < outer_steps
                      and jobs[i].trainer.consecutive_skips < max_skips]
            bar.set_postfix(_held_out_by_group(jobs), refresh=False)
            bar.update(min((jobs[i].trainer.step for i in active), default=outer_steps)
                       - bar.n)
    return status
