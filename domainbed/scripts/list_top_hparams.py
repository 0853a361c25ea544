"""Show which hyperparameters each model selection method ranks best, and where their runs are.

    python -m domainbed.scripts.list_top_hparams --input_dir SWEEP --dataset VLCS \\
        --algorithm ERM --test_env 0

For every selection method and trial: the hyperparameter settings from best to worst, each with
its {val_acc, test_acc}, its hyperparameters and its job directories. Useful to see why a table
cell has the value it has, or to rerun the winner.
"""

from __future__ import annotations

import argparse
import sys

from domainbed import model_selection
from domainbed.lib import reporting
from domainbed.lib.cli import OneLineParser, UsageError, command, path_arg, print_error

PROG = "list_top_hparams"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="List the best hyperparameters of a sweep")
    parser.add_argument("--input_dir", type=path_arg, required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--algorithm", required=True)
    parser.add_argument("--test_env", type=int, required=True)
    return parser


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        records = reporting.load_records(args.input_dir)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    print("Total records:", len(records))
    groups = reporting.get_grouped_records(records).filter(
        lambda group: (
            (group["dataset"], group["algorithm"], group["test_env"])
            == (args.dataset, args.algorithm, args.test_env)
        )
    )
    if not len(groups):
        print_error(PROG, f"no records of {args.algorithm} on {args.dataset} with test env "
                          f"{args.test_env} in {args.input_dir}")
        return 1
    groups = groups.sorted(key=lambda group: group["trial_seed"])
    for method in model_selection.SELECTION_METHODS:
        print(f"Model selection: {method.name}")
        for group in groups:
            print(f"trial_seed: {group['trial_seed']}")
            for run_acc, run_records in method.hparams_accs(group["records"]):
                print(f"\t{run_acc}")
                print("\t\thparams:")
                for name, value in sorted(run_records[0]["hparams"].items()):
                    print(f"\t\t\t{name}: {value}")
                print("\t\toutput_dirs:")
                # Records are validated for what selection reads; the directory is extra.
                output_dirs = run_records.select(
                    lambda record: record["args"].get("output_dir", "(not recorded)"))
                for output_dir in output_dirs.unique():
                    print(f"\t\t\t{output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
