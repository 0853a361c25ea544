"""Held-out accuracy against the cost spent, for implicit-gradient and CMA-ES runs alike (the
paper's Fig. 4): each run's curve read from its log, drawn, and summarised as Markdown.

Inner trainings are the common currency because they dominate both methods' cost: an
implicit-gradient outer step trains one model per held-out domain, as does every CMA-ES
candidate. Wall-clock seconds charge the implicit gradient its Hessian-vector products too.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from domainbed_itl.meta.plot import new_figure, write_png
from domainbed_itl.meta.run_files import LOG

X_LABELS = {"trainings": "inner-loop trainings spent", "seconds": "wall-clock seconds"}


def read_curve(run_dir: Path) -> dict[str, Any]:
    """{'kind', 'x', 'seconds', 'y', 'y_mean'} from a run's log.jsonl, whichever trainer wrote
    it; 'seconds' is cumulative. Steps without an accuracy (a diverged inner loop) are None."""
    path = Path(run_dir) / LOG
    if not path.is_file():
        raise ValueError(f"{path} does not exist; pass meta-training output directories")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path} is empty")
    seconds = list(itertools.accumulate(r["seconds"] for r in records))
    if "inner_trainings" in records[0]:
        return {"kind": "CMA-ES", "x": [r["inner_trainings"] for r in records],
                "seconds": seconds, "y": [r["best_held_out_acc"] for r in records],
                "y_mean": [r["mean_held_out_acc"] for r in records]}
    if "held_out_accs" in records[0]:
        n = len(records[0]["held_out_accs"])
        return {"kind": "implicit gradient", "x": [(r["step"] + 1) * n for r in records],
                "seconds": seconds, "y": [r["held_out_acc"] for r in records], "y_mean": None}
    raise ValueError(f"{path} is neither a domainbed_itl.scripts.meta_train nor a cmaes log")


def plot(curves: list[tuple[str, dict[str, Any]]], out: Path, x: str = "trainings") -> None:
    """One line per run against `x` (a key of X_LABELS); CMA-ES adds its generation mean."""
    fig = new_figure()
    ax = fig.add_subplot()
    key = "x" if x == "trainings" else "seconds"
    for label, c in curves:
        (line,) = ax.plot(c[key], _nan(c["y"]), marker=".", label=f"{c['kind']} ({label})")
        if c["y_mean"] is not None:
            ax.plot(c[key], _nan(c["y_mean"]), linestyle="--", color=line.get_color(),
                    label=f"{c['kind']} ({label}), generation mean")
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel("mean held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_png(fig, out)


def summary(curves: list[tuple[str, dict[str, Any]]]) -> str:
    """A Markdown table: budget spent, and held-out accuracy at the first and last point, its
    best, and (for CMA-ES) the last generation's mean, so a reader gets the figure's numbers."""
    rows = ["| run | kind | points | inner trainings | seconds | first | last | best "
            "| last generation mean |", "|---|---|---|---|---|---|---|---|---|"]
    for label, c in curves:
        ys = [y for y in c["y"] if y is not None]
        mean = "" if c["y_mean"] is None else _fmt(c["y_mean"][-1])
        rows.append(f"| {label} | {c['kind']} | {len(c['x'])} | {c['x'][-1]} "
                    f"| {c['seconds'][-1]:.0f} | {_fmt(c['y'][0])} | {_fmt(c['y'][-1])} "
                    f"| {_fmt(max(ys) if ys else None)} | {mean} |")
    return "\n".join(rows)


def _nan(values: list[float | None]) -> list[float]:
    return [float("nan") if v is None else v for v in values]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
