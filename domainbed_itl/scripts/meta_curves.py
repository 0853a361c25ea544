"""Held-out accuracy against inner-loop trainings spent, for implicit-gradient and CMA-ES runs
(the paper's Fig. 4).

    python -m domainbed_itl.scripts.meta_curves --runs IFT_DIR CMA_DIR --out fig4.png

Inner trainings are the common currency because they dominate both methods' cost: an
implicit-gradient outer step trains one model per held-out domain, as does every CMA-ES
candidate. For an implicit-gradient run the count after step k is (k + 1) * n_domains; a CMA-ES
log records it directly. CMA-ES is drawn with its generation's best and mean candidate.
`--x seconds` plots against wall-clock time instead, which charges the implicit gradient its
Hessian-vector products too. The script also prints a Markdown summary of every run. The
library behind it is `meta.cost_curves`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from domainbed.lib.cli import UsageError, command
from domainbed_itl.meta.cost_curves import X_LABELS, plot, read_curve, summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domainbed_itl.scripts.meta_curves",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="output directories of runs")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--x", default="trainings", choices=tuple(X_LABELS),
                   help="horizontal axis: inner trainings spent (the paper's) or seconds")
    return p


@command("domainbed_itl.scripts.meta_curves")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        curves = [(Path(r).name, read_curve(Path(r))) for r in args.runs]
    except (ValueError, json.JSONDecodeError, KeyError) as err:
        raise UsageError(str(err)) from None
    plot(curves, Path(args.out), args.x)
    print(summary(curves))
    return 0


if __name__ == "__main__":
    sys.exit(main())
