"""The meta-training learning curve (the paper's Fig. 3): mean source-domain accuracy of the
inner models and mean held-out-domain accuracy, per outer step.

Uses a bare Agg canvas, not pyplot, so drawing leaves no global matplotlib state behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from domainbed.lib import atomic


def new_figure() -> Figure:
    """A 6 x 4 inch figure on its own Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def write_png(fig: Figure, path: Path) -> None:
    """Render and write atomically, so a killed run never leaves half a PNG."""
    with atomic.atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png")


def plot_learning_curve(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Write a PNG of inner and held-out accuracy against the outer step; skipped steps (no
    update) are marked on the held-out curve."""
    fig = new_figure()
    ax = fig.add_subplot()
    steps = [r["step"] for r in records]
    ax.plot(steps, [_value(r, "inner_acc") for r in records],
            label="inner (mean over source domains)")
    ax.plot(steps, [_value(r, "held_out_acc") for r in records], label="outer (held-out domain)")
    skipped = [r for r in records if r["skipped"]]
    if skipped:
        ax.scatter([r["step"] for r in skipped], [_value(r, "held_out_acc") for r in skipped],
                   marker="x", color="red", label="skipped update", zorder=3)
    ax.set_xlabel("outer step (loss update)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "ITL meta-training")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    write_png(fig, path)


def _value(record: dict[str, Any], key: str) -> float:
    """Log values are null where a step produced none (a diverged inner loop)."""
    value = record.get(key)
    return float("nan") if value is None else float(value)
