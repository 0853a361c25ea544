"""The paper's Fig. 3 (the meta-training curve) and Fig. 6 (the Taylor order), over seeds.

    python -m domainbed_itl.meta.figures fig3 --runs DIR [DIR ...] --out fig3.png
    python -m domainbed_itl.meta.figures fig6 --runs DIR [DIR ...] --out fig6.png [--last 10]

A DIR is a `meta.train` run directory or any folder above such directories (a `train_many`
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
prints the figure's numbers as a Markdown table, and writes the PNG whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from domainbed.lib.cli import UsageError, command
from domainbed_itl.meta.plot import new_figure, write_png
from domainbed_itl.meta.run_files import CHECKPOINT, LOG
from domainbed_itl.meta.state import CheckpointError, load_checkpoint

PROG = "domainbed_itl.meta.figures"
# Settings allowed to differ between the runs of one figure, beyond the seed: the starting w
# follows the seed (random starts) and the order (its length).
FIG3_FREE = ("seed", "w0")
FIG6_FREE = ("seed", "w0", "order", "family_spec")
SERIES = (("inner_acc", "inner (mean over source domains)"),
          ("held_out_acc", "held-out domain"))


@dataclass(frozen=True)
class Run:
    """One meta-training run's settings and per-step accuracies (NaN where a step has none)."""

    path: Path
    config: dict[str, Any]
    accs: dict[str, np.ndarray]  # "inner_acc" / "held_out_acc" -> one value per outer step

    @property
    def steps(self) -> int:
        return len(self.accs["held_out_acc"])

    @property
    def order(self) -> int | None:
        return (self.config.get("family_spec") or {}).get("order")


def find_runs(paths: Iterable[str]) -> list[Path]:
    """Every run directory (one with a log.jsonl) at or below the paths, each once."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise UsageError(f"no directory at {path}")
        runs = [path] if (path / LOG).is_file() else sorted(p.parent for p in path.rglob(LOG))
        if not runs:
            raise UsageError(f"no meta-training run ({LOG}) at or below {path}")
        found += [run for run in runs if run not in found]
    return found


def _log_records(path: Path) -> list[dict[str, Any]]:
    """The log's records; a line a kill cut short is skipped with a warning, as the tables'
    readers do."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"warning: {path}:{number}: skipped a malformed line", file=sys.stderr)
    return records


def read_run(path: Path) -> Run:
    try:
        saved = load_checkpoint(path / CHECKPOINT, ("config",))
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    if saved is None:
        raise UsageError(f"{path} has no {CHECKPOINT}: not a meta.train run")
    records = _log_records(path / LOG)
    if not records or any("inner_acc" not in r or "held_out_acc" not in r for r in records):
        raise UsageError(f"{path / LOG} is empty or not a meta.train log")
    accs = {key: np.array([np.nan if r[key] is None else float(r[key]) for r in records])
            for key, _ in SERIES}
    return Run(path, saved["config"], accs)


def check_comparable(runs: Sequence[Run], free: Sequence[str]) -> None:
    """UsageError naming every setting, other than the `free` ones, in which runs differ."""
    first = runs[0].config
    for run in runs[1:]:
        differing = sorted(key for key in first.keys() | run.config.keys()
                           if key not in free and first.get(key) != run.config.get(key))
        if differing:
            raise UsageError(f"{runs[0].path} and {run.path} differ in {', '.join(differing)}; "
                             "give the runs of one setting")


def describe(runs: Sequence[Run]) -> str:
    config = runs[0].config
    seeds = " ".join(str(seed) for seed in sorted({run.config.get("seed") for run in runs}))
    excluded = config.get("exclude_envs") or []
    without = f" without env {', '.join(map(str, excluded))}" if excluded else ""
    return f"{config.get('dataset')}{without}, {config.get('family')}, seeds {seeds}"


# --- Fig. 3 -----------------------------------------------------------------------------------


def curve_stats(runs: Sequence[Run]) -> dict[str, dict[str, np.ndarray]]:
    """series -> {"mean", "min", "max"} over runs, per outer step that every run has."""
    steps = min(run.steps for run in runs)
    out = {}
    for key, _ in SERIES:
        values = np.stack([run.accs[key][:steps] for run in runs])
        with np.errstate(all="ignore"):  # a step that no run has a value for stays NaN
            out[key] = {"mean": np.nanmean(values, 0), "min": np.nanmin(values, 0),
                        "max": np.nanmax(values, 0)}
    return out


def draw_fig3(runs: Sequence[Run], out: Path) -> None:
    stats = curve_stats(runs)
    fig = new_figure()
    ax = fig.add_subplot()
    for key, label in SERIES:
        steps = np.arange(len(stats[key]["mean"]))
        (line,) = ax.plot(steps, stats[key]["mean"], label=label)
        ax.fill_between(steps, stats[key]["min"], stats[key]["max"], color=line.get_color(),
                        alpha=0.25, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("outer step (loss update)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ITL meta-training on {runs[0].config.get('dataset')}, mean of {len(runs)} "
                 "runs (band: min-max)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    write_png(fig, out)


def fig3_table(runs: Sequence[Run]) -> str:
    """The curve's numbers at about ten evenly spaced steps and the last."""
    stats = curve_stats(runs)
    n = len(stats["held_out_acc"]["mean"])
    shown = sorted({*range(0, n, max(1, n // 10)), n - 1})
    lines = [f"Fig. 3: {describe(runs)}; {n} outer steps reached by all {len(runs)} runs; "
             "accuracy (%), mean over runs (min-max)", "",
             "| outer step | " + " | ".join(label for _, label in SERIES) + " |",
             "|---:|---:|---:|"]
    for step in shown:
        cells = [f"{_pct(stats[key]['mean'][step])} ({_pct(stats[key]['min'][step])}-"
                 f"{_pct(stats[key]['max'][step])})" for key, _ in SERIES]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- Fig. 6 -----------------------------------------------------------------------------------


def order_stats(runs: Sequence[Run], last: int) -> dict[int, dict[str, Any]]:
    """order -> {"runs", "steps", series -> (mean, std) over runs of each run's mean over its
    last `last` steps}."""
    out: dict[int, dict[str, Any]] = {}
    for order in sorted({run.order for run in runs}):
        members = [run for run in runs if run.order == order]
        entry: dict[str, Any] = {"runs": len(members),
                                 "steps": sorted({run.steps for run in members})}
        for key, _ in SERIES:
            with np.errstate(all="ignore"):
                tails = [float(np.nanmean(run.accs[key][-last:])) for run in members]
            entry[key] = (float(np.mean(tails)), float(np.std(tails)))
        out[order] = entry
    return out


def draw_fig6(runs: Sequence[Run], out: Path, last: int) -> None:
    stats = order_stats(runs, last)
    orders = np.array(sorted(stats), dtype=float)
    fig = new_figure()
    ax = fig.add_subplot()
    for offset, (key, label) in zip((-0.05, 0.05), SERIES, strict=True):
        means = [stats[order][key][0] for order in stats]
        stds = [stats[order][key][1] for order in stats]
        ax.errorbar(orders + offset, means, yerr=stds, marker="o", capsize=4, label=label)
    ax.set_xticks(orders)
    ax.set_xlabel("Taylor polynomial order")
    ax.set_ylabel(f"accuracy, mean of the last {last} outer steps")
    ax.set_title("Taylor order (error bars: +/- std over runs)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    write_png(fig, out)


def fig6_table(runs: Sequence[Run], last: int) -> str:
    stats = order_stats(runs, last)
    lines = [f"Fig. 6: {describe(runs)}; accuracy (%) as each run's mean over its last {last} "
             "outer steps, then mean +/- standard deviation (population) over runs", "",
             "| order | runs | outer steps | " + " | ".join(label for _, label in SERIES) + " |",
             "|---:|---:|---:|---:|---:|"]
    for order, entry in stats.items():
        steps = "-".join(str(s) for s in (entry["steps"][0], entry["steps"][-1])
                         ) if len(entry["steps"]) > 1 else str(entry["steps"][0])
        cells = [f"{_pct(entry[key][0])} +/- {_pct(entry[key][1])}" for key, _ in SERIES]
        lines.append(f"| {order} | {entry['runs']} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pct(value: float) -> str:
    return "-" if np.isnan(value) else f"{100 * value:.1f}"


# --- Command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="figure", required=True)
    for name, what in (("fig3", "meta-training curve over seeds"),
                       ("fig6", "inner and held-out accuracy per Taylor order")):
        fig = sub.add_parser(name, help=what)
        fig.add_argument("--runs", nargs="+", required=True,
                         help="meta.train run directories, or folders above them")
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
