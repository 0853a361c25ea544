"""Several meta-training runs as one job: one run per (dataset, Taylor order, seed).

    python -m domainbed_itl.scripts.meta_train_many --data_dir D --output_dir OUT --seeds 0 1 2 \\
        [--orders 2 3 4 5] [--datasets RotatedMNIST ColoredMNIST] [any other meta_train flag]

Run (dataset, order, seed) lives in OUT/<dataset>_order<k>_seed<s>/ (iSCE runs:
OUT/<dataset>_isce_seed<s>/) and is exactly the run `meta_train` makes with --dataset, --order,
--seed and --output_dir set to those and every other flag as given here: the same files
(checkpoint.pt, log.jsonl, learned_loss.json, learning_curve.png) and the same recorded
settings, so either command resumes the other's runs. Rerunning this command resumes every run
after its own last finished outer step. --seeds, --orders and --datasets replace --seed, --order
and --dataset; --exclude_envs applies to every run.

Why one job: the runs advance one outer step at a time together (`meta.trainer.RunGroups`).
Where the splits are stacked (GPUs, or --inner_batching batched), the runs of one dataset and
order, which differ in their seed only, train all their splits as one stack of models, so a
GPU runs the paper's schedule for several seeds in about the time of one; the groups (other
datasets, orders) take turns. On a CPU, --inner_batching auto runs each run's splits one after
another, as `meta_train` does there. Every run has its own w, optimiser and guard rails: a run
whose steps go non-finite is skipped and rolled back on its own; one that reaches --max_skips
stops with an error line while the others go on, and the job then exits with status 3.

The library behind this command line is `meta.ift_job` (the runs of the job, advanced together)
over `meta.ift_run` and `meta.ift_settings`, which `meta_train` uses too.
"""

from __future__ import annotations

import argparse
import sys

import torch

from domainbed.lib.cli import OneLineParser, UsageError, command
from domainbed_itl.meta.ift_job import checked_runs, prepare_jobs, train_all
from domainbed_itl.meta.ift_settings import add_arguments, parse_args
from domainbed_itl.meta.ray_backend import RayBackend

PROG = "domainbed_itl.scripts.meta_train_many"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m domainbed_itl.scripts.meta_train_many",
                      description="Several meta-training runs (seeds x Taylor orders x datasets) "
                      "in one process, stacked where the inner loops are batched.")
    add_arguments(p)
    p.add_argument("--seeds", type=int, nargs="+", help="one run per seed (replaces --seed)")
    p.add_argument("--orders", type=int, nargs="+",
                   help="one run per Taylor order (replaces --order)")
    p.add_argument("--datasets", nargs="+", help="one run per dataset (replaces --dataset)")
    return p


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, build_parser())
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    runs = checked_runs(args)
    backend = None
    try:
        try:
            backend = RayBackend(args.ray_address) if args.backend == "ray" else None
        except ValueError as err:
            raise UsageError(str(err)) from None
        return train_all(prepare_jobs(runs, backend), args.outer_steps, args.max_skips, PROG)
    finally:
        if backend is not None:
            backend.close()


if __name__ == "__main__":
    sys.exit(main())
