"""Held-out accuracy against inner-loop trainings spent, for implicit-gradient and CMA-ES runs
(the paper's Fig. 4).

    python -m domainbed_itl.meta.compare_curves --runs IFT_DIR CMA_DIR --out fig4.png

Inner trainings are the common currency because they dominate both methods' cost: an
implicit-gradient outer step trains one model per held-out domain, as does every CMA-ES
candidate. For an implicit-gradient run the count after step k is (k + 1) * n_domains; a CMA-ES
log records it directly. CMA-ES is drawn with its generation's best and mean candidate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_curve(run_dir: Path) -> dict[str, Any]:
    """{'kind', 'x', 'y', 'y_mean'} from a run's log.jsonl, whichever trainer wrote it."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} does not exist; pass meta-training output directories")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path} is empty")
    if "inner_trainings" in records[0]:
        return {"kind": "CMA-ES", "x": [r["inner_trainings"] for r in records],
                "y": [r["best_held_out_acc"] for r in records],
                "y_mean": [r["mean_held_out_acc"] for r in records]}
    if "held_out_accs" in records[0]:
        n = len(records[0]["held_out_accs"])
        return {"kind": "implicit gradient", "x": [(r["step"] + 1) * n for r in records],
                "y": [r["held_out_acc"] for r in records], "y_mean": None}
    raise ValueError(f"{path} is neither a domainbed_itl.meta.train nor a cmaes log")


def plot(curves: list[tuple[str, dict[str, Any]]], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, c in curves:
        (line,) = ax.plot(c["x"], c["y"], marker=".", label=f"{c['kind']} ({label})")
        if c["y_mean"] is not None:
            ax.plot(c["x"], c["y_mean"], linestyle="--", color=line.get_color(),
                    label=f"{c['kind']} ({label}), generation mean")
    ax.set_xlabel("inner-loop trainings spent")
    ax.set_ylabel("mean held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m domainbed_itl.meta.compare_curves",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="output directories of runs")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)
    try:
        curves = [(Path(r).name, read_curve(Path(r))) for r in args.runs]
    except (ValueError, json.JSONDecodeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    plot(curves, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
