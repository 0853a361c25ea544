"""Meta-train a loss function by implicit gradients (the paper's Algorithm 1).

    python -m domainbed_itl.scripts.meta_train --dataset RotatedMNIST --data_dir D --output_dir O

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
(`check_endpoints`, results/hypergrad_paper). Flags given explicitly override the preset.
Without it the defaults are this command's earlier ones (Adam from the ce_like start), so run
directories saved before the preset existed resume unchanged.

`--backend ray` runs the inner trainings of each step as parallel Ray tasks
(`meta.ray_backend`), with the same results. The library behind this command line is
`meta.ift_settings` (its flags and the preset), `meta.ift_run` (the run and its files),
`meta.trainer` (the outer loop and its guard rails), `meta.data` and `meta.run_settings`
(what this command shares with `meta_cmaes`). After --max_skips skipped steps in a row the run
stops with an error; no non-finite w is ever written.
"""

from __future__ import annotations

import argparse
import sys

import torch

from domainbed.datasets.multiple_domain import DataUnavailableError
from domainbed.lib.cli import OneLineParser, UsageError, command
from domainbed.lib.output_dir import make_output_dir
from domainbed_itl.meta.ift_run import read_checkpoint, train
from domainbed_itl.meta.ift_settings import (
    OPERATIONAL,
    RECORDED_OFF_DEFAULT,
    add_arguments,
    parse_args,
    validate,
)
from domainbed_itl.meta.ray_backend import RayBackend
from domainbed_itl.meta.run_settings import prepare, run_config
from domainbed_itl.meta.state import check_config

PROG = "domainbed_itl.scripts.meta_train"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m domainbed_itl.scripts.meta_train",
        description="Meta-learn a loss function by implicit gradients (Gao et al., ICML 2022).",
    )
    add_arguments(p)
    return p


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, build_parser())
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    backend = None
    try:
        try:
            validate(args)
            backend = RayBackend(args.ray_address) if args.backend == "ray" else None
            run = prepare(args, read_checkpoint)
            config = run_config(args, run.family, run.w0, OPERATIONAL, RECORDED_OFF_DEFAULT)
            if run.saved is not None:
                check_config(run.saved["config"], config)
            make_output_dir(run.out)
        except (ValueError, DataUnavailableError) as err:
            raise UsageError(str(err)) from None
        return train(args, run, config, backend, PROG)
    finally:
        if backend is not None:
            backend.close()


if __name__ == "__main__":
    sys.exit(main())
