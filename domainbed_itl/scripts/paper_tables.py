"""The paper's tables (Gao et al., ICML 2022) and its Fig. 2 from sweep directories.

    python -m domainbed_itl.scripts.paper_tables --input_dir D [--input_dir D2 ...]
        --table {1,2,3,4,5,6,9,10} [--selection training_domain|leave_one_domain_out|oracle]
        [--format text|markdown|latex] [--compare_paper] [--versus ERM]
        [--cd_diagram fig2.png] [--cd_blocks dataset|domain]

Tables 1, 2, 3 and 9 read multi-source sweeps (`domainbed.scripts.sweep`) and select runs with
DomainBed's own selection methods; Tables 4 and 10 read single-source sweeps
(`domainbed_itl.scripts.sweep_single_source`): every record with exactly one training
environment, grouped by (dataset, algorithm, trial seed, source), selected by the source's
held-out split (training_domain) or the targets' held-out splits (oracle, labelled);
leave-one-domain-out does not apply to one source and is refused. Which records are which
kind, and why a 3-environment dataset's pair runs count as both, is in
`domainbed_itl.tables.kinds`; a record of the other kind in a table's input is an error.

Every cell is a mean over trial seeds +/- `domainbed.lib.reporting.standard_error`; a cell lacking
jobs of the grid inferred in `domainbed_itl.tables.grid` says how many; nothing is imputed.
`--compare_paper` prints the published figure beside each cell (`tables/published.json`),
`--versus ALG` adds paired differences from ALG, `--cd_diagram` prints the Friedman and
Nemenyi statistics and draws the critical difference diagram.

Tables 5 and 6 read deployment records instead (every `records.jsonl` under the directories,
written by `scripts.deploy` or `compare_losses`): learned losses over their meta-training seeds
against CE and the published ITL, with their paired differences always printed; model
selection, --versus and --cd_diagram do not apply to them
(`domainbed_itl.tables.deployment_tables`).
An unknown table, records of the wrong kind or an impossible request: one line on stderr and
exit status 2. Sweep directories that hold no record yet: one line and exit status 3
(`NO_RECORDS`), so that a caller (the Makefile's table step) can tell jobs that have not
finished from a request that cannot work.
"""

from __future__ import annotations

import argparse
import os
import sys

from domainbed.lib import reporting
from domainbed.lib.cli import OneLineParser, command, path_arg, print_error
from domainbed.lib.query import Q
from domainbed_itl.tables import critical_difference, deploy_records, order, selection
from domainbed_itl.tables.deployment_tables import table5, table6
from domainbed_itl.tables.kinds import (
    MULTI,
    SINGLE,
    TableError,
    pair_only_datasets,
    require_kind,
)
from domainbed_itl.tables.per_domain import per_domain_tables
from domainbed_itl.tables.render import render
from domainbed_itl.tables.request import Request
from domainbed_itl.tables.scores import Scores, multi_source_scores, single_source_scores
from domainbed_itl.tables.summary import summary_tables

TABLES = {
    "1": (MULTI, per_domain_tables),
    "2": (MULTI, summary_tables),
    "3": (MULTI, summary_tables),
    "4": (SINGLE, summary_tables),
    "9": (MULTI, per_domain_tables),
    "10": (SINGLE, per_domain_tables),
}
# Tables of deployment records (`scripts.deploy`), not of sweeps.
DEPLOYMENT = {"5": table5, "6": table6}
NO_RECORDS = 3  # exit status: the sweep directories exist and hold no record yet
FORMATS = ("text", "markdown", "latex")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="paper_tables",
        description="Print one of the paper's tables (1, 2, 3, 4, 9, 10 from sweep "
        "directories; 5, 6 from deployment directories)"
    )
    parser.add_argument("--input_dir", action="append", required=True, type=path_arg,
                        help="a sweep directory; repeat to read several")
    parser.add_argument("--table", required=True, help="1, 2, 3, 4, 5, 6, 9 or 10")
    parser.add_argument("--selection", choices=sorted(selection.MULTI_SOURCE),
                        default="training_domain", help="model selection (default: %(default)s)")
    parser.add_argument("--format", choices=FORMATS, default="text")
    parser.add_argument("--compare_paper", action="store_true",
                        help="print the published figure beside each cell")
    parser.add_argument("--versus", metavar="ALGORITHM",
                        help="add each algorithm's paired difference from ALGORITHM")
    parser.add_argument("--cd_diagram", metavar="PNG",
                        help="Friedman + Nemenyi test; draw the critical difference diagram here")
    parser.add_argument("--cd_blocks", choices=critical_difference.BLOCKS, default="dataset",
                        help="blocks of the test: datasets, or (dataset, domain) pairs")
    return parser


class NoRecords(TableError):
    """Sweep directories with no record in them: their jobs have not written any yet."""


def load(input_dirs: list[str]) -> Q:
    records = []
    for path in input_dirs:
        if not os.path.isdir(path):
            raise TableError(f"no sweep directory at {path}")
        records.extend(reporting.load_records(path))
    if not records:
        raise NoRecords(
            f"no records in {', '.join(input_dirs)}: run the sweep first, or give the "
            "directory that holds its job directories"
        )
    return Q(records)


def scores_for(records: Q, table: str, selection_name: str) -> Scores:
    kind, _ = TABLES[table]
    require_kind(records, kind, table)
    if kind == SINGLE:
        return single_source_scores(records, selection.single_source_method(selection_name))
    for dataset in pair_only_datasets(records):
        print(f"paper_tables: note: {dataset} has no run with a single test environment; "
              "if it is a single-source sweep, use --table 4 or 10", file=sys.stderr)
    return multi_source_scores(records, selection.MULTI_SOURCE[selection_name])


def _comment(lines: list[str], fmt: str) -> str:
    prefix = "% " if fmt == "latex" else ""
    return "".join(f"{prefix}{line}\n" for line in lines)


def deployment_table(args: argparse.Namespace) -> str:
    """Table 5 or 6 from deployment records; TableError for options that do not apply."""
    inapplicable = [flag for flag, given in (
        ("--selection", args.selection != "training_domain"),
        ("--versus", args.versus is not None),
        ("--cd_diagram", args.cd_diagram is not None),
    ) if given]
    if inapplicable:
        raise TableError(f"table {args.table} reads deployment records, to which "
                         f"{', '.join(inapplicable)} does not apply (its paired differences "
                         "are always printed)")
    runs = deploy_records.load(args.input_dir)
    request = Request(args.table, args.format, compare_paper=args.compare_paper)
    return render(DEPLOYMENT[args.table](runs, request), args.format)


def run(args: argparse.Namespace) -> str:
    """The whole output; raises TableError before anything is printed or written."""
    if args.table in DEPLOYMENT:
        return deployment_table(args)
    if args.table not in TABLES:
        known = sorted([*TABLES, *DEPLOYMENT], key=int)
        raise TableError(f"unknown table {args.table!r}; choose one of {', '.join(known)}")
    records = load(args.input_dir)
    scores = scores_for(records, args.table, args.selection)
    if args.versus is not None and args.versus not in scores.algorithms:
        raise TableError(
            f"--versus {args.versus}: no records of it; algorithms present: "
            + ", ".join(scores.algorithms)
        )
    request = Request(args.table, args.format, args.selection, args.compare_paper, args.versus)
    _, build = TABLES[args.table]
    output = render(build(scores, request), args.format)
    if args.cd_diagram:
        values, label = critical_difference.block_values(
            scores,
            order.datasets(args.table, scores.datasets),
            order.algorithms(args.table, scores.algorithms),
            args.cd_blocks,
        )
        result = critical_difference.friedman_nemenyi(values, label)
        critical_difference.draw(result, args.cd_diagram)
        lines = critical_difference.summary_lines(result)
        output += "\n" + _comment(lines + [f"Critical difference diagram: {args.cd_diagram}"],
                                  args.format)
    return output


@command("paper_tables", usage_errors=(OSError,))
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        output = run(args)
    except NoRecords as err:
        print_error("paper_tables", str(err))
        return NO_RECORDS
    sys.stdout.write(output)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
