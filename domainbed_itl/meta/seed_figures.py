"""The paper's Fig. 3 (the meta-training curve) and Fig. 6 (the Taylor order) over seeds: the
numbers (per-step mean and min-max over runs; per order, mean and standard deviation over runs
of each run's mean over its last steps), their PNGs and Markdown tables.

One run is one seed's curve; the paper draws a single run, these draw the mean over seeds with
the spread, so that a reader can tell a trend from one seed's luck.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from domainbed_itl.meta.plot import new_figure, write_png
from domainbed_itl.meta.run_reader import SERIES, Run, describe

# Settings allowed to differ between the runs of one figure, beyond the seed: the starting w
# follows the seed (random starts) and the order (its length).
FIG3_FREE = ("seed", "w0")
FIG6_FREE = ("seed", "w0", "order", "family_spec")


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
