"""The hypergradient accuracy study's files: a CSV of every row, a Markdown report (problems,
then each sweep) and a figure of cosine and relative error against HVPs and inner steps, so the
numbers and their trend can be read without rerunning the study.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from domainbed.lib import atomic
from domainbed_itl.meta.hypergrad_study import SOLVER_ROWS


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_outputs(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in result["rows"] for k in r))
    with atomic.atomic_open(out / "hypergrad_check.csv") as handle:
        writer = csv.DictWriter(handle, keys)
        writer.writeheader()
        writer.writerows(result["rows"])
    lines = ["# Neumann and CG hypergradients against the exact implicit gradient", "",
             "## Problems (truth = exact IFT at the L-BFGS optimum)", ""]
    skeys = list(result["summaries"][0])
    lines += ["| " + " | ".join(skeys) + " |", "|" + "---|" * len(skeys)]
    lines += ["| " + " | ".join(_fmt(s[k]) for k in skeys) + " |" for s in result["summaries"]]
    for sweep in ("J", "inner_steps"):
        rows = [r for r in result["rows"] if r["sweep"] == sweep]
        cols = list(dict.fromkeys(k for r in rows for k in r if k != "sweep"))
        lines += ["", f"## Sweep over {sweep}", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k in cols) + " |" for r in rows]
    atomic.write_text(out / "hypergrad_check.md", "\n".join(lines) + "\n")
    _plot(result, out / "hypergrad_check.png")


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 7))
    for s in result["summaries"]:
        name = s["problem"]
        for alpha, solver, _ in SOLVER_ROWS:
            rows = [r for r in result["rows"] if r["problem"] == name and r["sweep"] == "J"
                    and r["alpha"] == alpha and r["solver"] == solver]
            label = f"{name}, CG" if solver == "cg" else f"{name}, Neumann alpha={alpha}"
            style = "s-" if solver == "cg" else "o-"
            axes[0, 0].plot([r["hvps"] for r in rows], [r["cosine"] for r in rows], style,
                            label=label)
            axes[1, 0].plot([r["hvps"] for r in rows], [r["rel_error"] for r in rows], style,
                            label=label)
        rows = [r for r in result["rows"] if r["problem"] == name and r["sweep"] == "inner_steps"]
        axes[0, 1].plot([r["inner_steps"] for r in rows], [r["cosine"] for r in rows], "o-",
                        label=f"{name}, Neumann J=15")
        axes[0, 1].plot([r["inner_steps"] for r in rows],
                        [r["exact_at_end_cosine"] for r in rows], "x--",
                        label=f"{name}, exact solve at end point")
        axes[1, 1].plot([r["inner_steps"] for r in rows], [r["rel_error"] for r in rows], "o-",
                        label=f"{name}, Neumann J=15")
        axes[0, 1].plot([r["inner_steps"] for r in rows], [r["cg_cosine"] for r in rows], "s-",
                        label=f"{name}, CG 15 HVPs")
        axes[1, 1].plot([r["inner_steps"] for r in rows], [r["cg_rel_error"] for r in rows],
                        "s-", label=f"{name}, CG 15 HVPs")
    for ax, (xl, yl) in zip(axes.flat, (("Hessian-vector products", "cosine"),
                                        ("SGD inner steps", "cosine"),
                                        ("Hessian-vector products", "relative error"),
                                        ("SGD inner steps", "relative error")), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(f"{yl} to true dM/dw")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_yscale("log")
    fig.tight_layout()
    with atomic.atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
