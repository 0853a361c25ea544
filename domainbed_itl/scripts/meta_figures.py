"""The paper's Fig. 3 (the meta-training curve) and Fig. 6 (the Taylor order), over seeds.

    python -m domainbed_itl.scripts.meta_figures fig3 --runs DIR [DIR ...] --out fig3.png
    python -m domainbed_itl.scripts.meta_figures fig6 --runs DIR [DIR ...] --out fig6.png \
        [--last 10]

A DIR is a `meta_train` run directory or any folder above such directories (a `train_many`
output directory): every run below it is read. One run is one seed's curve; the paper draws a
single run, we draw the mean over seeds with the spread, so that a reader can tell a trend from
one seed's luck.

Fig. 3: inner accuracy (the leave-one-out models on their source domains, averaged) and
held-out accuracy (on the domain each left out) against the outer step; the line is the mean
over runs, the band their minimum to maximum, at the steps every run has reached. Fig. 6: per
Taylor order, each run's mean over its last --last outer steps (one step is noisy: each draws
new inner batches), then mean +/- standard deviation over runs. The runs of a figure must differ
in their seed only (and, for Fig. 6, their order): anything else would draw one setting's
curve as another's; such a mix is refused, naming the settings that differ. Each command also
prints the figure's numbers as a Markdown table, and writes the PNG whole or not at all. The
library behind it is `meta.run_reader` (the runs read back) and `meta.seed_figures`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from domainbed.lib.cli import UsageError, command
from domainbed_itl.meta.run_reader import check_comparable, find_runs, read_run
from domainbed_itl.meta.seed_figures import (
    FIG3_FREE,
    FIG6_FREE,
    draw_fig3,
    draw_fig6,
    fig3_table,
    fig6_table,
)

PROG = "domainbed_itl.scripts.meta_figures"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="figure", required=True)
    for name, what in (("fig3", "meta-training curve over seeds"),
                       ("fig6", "inner and held-out accuracy per Taylor order")):
        fig = sub.add_parser(name, help=what)
        fig.add_argument("--runs", nargs="+", required=True,
                         help="meta_train run directories, or folders above them")
        fig.add_argument("--out", required=True, help="PNG to write")
        if name == "fig6":
            fig.add_argument("--last", type=int, default=10,
                             help="outer steps averaged at the end of each run")
    return p


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = [read_run(path) for path in find_runs(args.runs)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.figure == "fig3":
        check_comparable(runs, FIG3_FREE)
        draw_fig3(runs, out)
        text = fig3_table(runs)
    else:
        if args.last < 1:
            raise UsageError("--last must be at least 1")
        if any(run.order is None for run in runs):
            raise UsageError("Fig. 6 compares Taylor orders; some runs are not of the Taylor "
                             "family")
        check_comparable(runs, FIG6_FREE)
        draw_fig6(runs, out, args.last)
        text = fig6_table(runs, args.last)
    print(text + f"\nFigure: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
