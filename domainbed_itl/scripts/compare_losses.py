"""Deploy losses with ERM on one dataset, side by side, and print the table.

A learned loss only matters if training with it generalises better, so this is the check after
meta-learning: ERM with cross-entropy, ERM_ITL with the published omega and, for every
`--learned NAME=FILE`, the learned loss in that file (the `learned_loss.json` that
`scripts.meta_train` or `scripts.meta_cmaes` writes: a Taylor loss deploys with ERM_ITL, iSCE
with ERM_iSCE), all on the same splits, test domains and trial seeds. Each run is a
`domainbed.scripts.sweep` job run by `--command_launcher`, so the output directory is also a
sweep directory (`collect_results` reads it) and an interrupted comparison picks up where it
stopped: finished runs are reused and a killed run resumes from its last checkpoint
(`domainbed_itl.deployment.domainbed_protocol` explains how). Every finished run is appended
once to `<output_dir>/records.jsonl` as a deployment record, the format `scripts.deploy`
writes, and the table is the one `scripts.deploy` prints.

    python -m domainbed_itl.scripts.compare_losses --data_dir data --output_dir out/compare \\
        --test_envs 0 5 --steps 1000 --learned learned=results/meta_rotatedmnist/learned_loss.json
"""

from __future__ import annotations

import argparse
import sys

from domainbed import datasets, launchers
from domainbed.lib.cli import OneLineParser, UsageError, command, path_arg
from domainbed.lib.output_dir import check_output_dir
from domainbed.lib.precision import warn_if_bf16_is_slow
from domainbed.lib.sweep_jobs import check_launcher
from domainbed.scripts.sweep import launcher_options
from domainbed_itl.deployment import domainbed_protocol

PROG = "compare_losses"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=path_arg, default="data")
    parser.add_argument("--output_dir", type=path_arg, required=True)
    parser.add_argument("--dataset", default="RotatedMNIST")
    parser.add_argument("--test_envs", type=int, nargs="+", default=[0])
    parser.add_argument("--trial_seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--checkpoint_freq", type=int,
                        help="default: --steps (evaluate only at the first and last step)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="passed to train: bf16 autocast is ~2.5x faster on CPUs with "
                        "bf16 units")
    parser.add_argument("--table_splits_only", action="store_true",
                        help="evaluate only at the last step and only the splits the table "
                        "reads (the test domain's in split, the others' out splits): about 3x "
                        "less evaluation, but the runs cannot serve DomainBed model selection")
    parser.add_argument("--learned", action="append", default=[], type=path_arg,
                        metavar="NAME=FILE",
                        help="a learned_loss.json to deploy (Taylor with ERM_ITL, iSCE with "
                        "ERM_iSCE; repeatable)")
    parser.add_argument("--command_launcher", default="local", choices=list(launchers.REGISTRY),
                        help="how the runs are run, as in domainbed.scripts.sweep (dummy: print "
                        "the plan, run and create nothing)")
    parser.add_argument("--max_parallel", type=int,
                        help="runs at once, for launchers that take it (local: default 1)")
    parser.add_argument("--no_wait", action="store_true",
                        help="return once the runs are queued, for launchers that queue them "
                        "(slurm); run the same command again later to tabulate them")
    parser.add_argument("--quiet", action="store_true",
                        help="do not list every run's state (the runs' own output always goes "
                        "to their out.txt)")
    return parser


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or (args.checkpoint_freq is not None and args.checkpoint_freq < 1):
        raise UsageError("--steps and --checkpoint_freq must be at least 1")
    if args.dataset not in datasets.DATASETS:
        raise UsageError(f"unknown dataset {args.dataset!r} (known: "
                         f"{', '.join(datasets.DATASETS)})")
    rows = domainbed_protocol.candidates(args.learned)
    options = launcher_options(args)
    launcher = check_launcher(args.command_launcher, options)
    check_output_dir(args.output_dir)
    warn_if_bf16_is_slow(args.precision, PROG)
    try:
        outcome = domainbed_protocol.compare(args, rows, launcher, options,
                                             verbose=not args.quiet)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if outcome.report is not None:
        print(outcome.report)
    if outcome.failed:
        raise domainbed_protocol.failure(outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
