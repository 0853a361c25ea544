"""Turn a sweep directory into DomainBed's results tables.

    python -m domainbed.scripts.collect_results --input_dir SWEEP [--latex | --markdown]

The tables come from domainbed.lib.results_tables; the plain text form is the public DomainBed's,
character for character; `--latex` adds a compilable document around the same tables and
`--markdown` writes GitHub-style pipe tables. The output is printed and also saved in SWEEP as
results.txt, results.tex or results.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from domainbed.lib import atomic, reporting
from domainbed.lib.cli import OneLineParser, UsageError, command, path_arg
from domainbed.lib.results_tables import render_report

_SUFFIX = {"text": "txt", "latex": "tex", "markdown": "md"}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="collect_results",
                           description="Print the results tables of a sweep")
    parser.add_argument("--input_dir", type=path_arg, required=True)
    style = parser.add_mutually_exclusive_group()
    style.add_argument("--latex", action="store_true", help="a LaTeX document")
    style.add_argument("--markdown", action="store_true", help="Markdown pipe tables")
    return parser


@command("collect_results")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fmt = "latex" if args.latex else "markdown" if args.markdown else "text"
    if not os.path.isdir(args.input_dir):
        raise UsageError(f"no directory {args.input_dir}")
    records = reporting.load_records(args.input_dir)
    report = render_report(records, fmt)
    sys.stdout.write(report)
    sys.stdout.flush()
    out_path = os.path.join(args.input_dir, f"results.{_SUFFIX[fmt]}")
    try:
        atomic.write_text(out_path, report)
    except OSError as err:
        print(f"collect_results: could not save {out_path}: {err}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
