"""The end-point study: the trainer's hypergradient estimates (Neumann at several alphas, CG
with the same number of HVPs) against the references of `endpoint_references`, at the real inner
end points, as rows of cosine, relative error and norm ratio; and whether one outer step's
combined hypergradient descends the real objective.

Each row reports how close an estimate is where the trainer really uses it, which is what
chose the paper preset's unstated settings (results/hypergrad_paper).
"""

from __future__ import annotations

import csv
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from domainbed.lib import atomic
from domainbed.lib.misc import seed_hash
from domainbed_itl.meta.base_model import Params, mlp_forward
from domainbed_itl.meta.endpoint_references import (
    Endpoint,
    ift_reference,
    spectrum_top,
    train_endpoint,
    unrolled_hypergradient,
    with_hessian_batch,
)
from domainbed_itl.meta.families import LossFamily, initial_w
from domainbed_itl.meta.hypergrad import implicit_hypergradient
from domainbed_itl.meta.outer import leave_one_domain_out
from domainbed_itl.meta.splits import DomainSet, MetaConfig, held_out_loss
from domainbed_itl.meta.trainer import MetaTrainer


def compare(estimate: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Cosine, relative error and norm ratio; also the cosine over the coefficients alone
    (w[2:]), since the two centres' derivatives are usually far larger than the rest and
    would otherwise decide the cosine on their own."""
    norm = float(truth.norm())
    return {"cosine": float(F.cosine_similarity(estimate, truth, dim=0)),
            "rel_error": float((estimate - truth).norm()) / norm,
            "norm_ratio": float(estimate.norm()) / norm,
            "coef_cosine": float(F.cosine_similarity(estimate[2:], truth[2:], dim=0))}


@dataclasses.dataclass(frozen=True)
class Study:
    """What to measure: start points, inner lengths, Hessian batches, held-out domains, the
    candidate Neumann alphas, the budget J, the damping fractions of the IFT reference."""

    inits: tuple[str, ...] = ("ce_bounded",)
    inner_steps: tuple[int, ...] = (1000, 2000, 300)
    hessian_batches: tuple[int, ...] = (256, 1024)
    held_out: tuple[int, ...] = (0, 4)
    alphas: tuple[float | str, ...] = (0.01, 0.1, 0.3, 1.0, 3.0, "auto")
    terms: int = 15
    damping_fractions: tuple[float, ...] = (1e-1, 1e-2)
    tol: float = 1e-4
    max_hvps: int = 150
    hidden: tuple[int, ...] = (1024, 256)
    val_batch: int = 2048
    seed: int = 0


def endpoint_rows(data: DomainSet, family: LossFamily, init: str, w: torch.Tensor,
                  steps: int, held_out: int, study: Study) -> list[dict[str, Any]]:
    """At one end point (trained once), for each Hessian batch size: every candidate against
    every reference, and each reference against the others (one row each)."""
    rows = []
    cfg = MetaConfig(hidden=study.hidden, inner_steps=steps, val_batch=study.val_batch,
                     seed=study.seed)
    trained = train_endpoint(data, family, w, cfg, held_out)
    unrolled, gap = unrolled_hypergradient(data, family, w, trained, cfg.inner_lr)
    for hb in study.hessian_batches:
        started = time.perf_counter()
        cfg = dataclasses.replace(cfg, hessian_batch=hb)
        end = with_hessian_batch(data, trained, cfg, held_out)
        lam = spectrum_top(end, family, w, seed_hash(study.seed, "power", held_out))
        refs = {"unrolled": (unrolled, {"ref_residual": gap, "ref_hvps": 0})}
        for frac in study.damping_fractions:
            ref = ift_reference(end, family, w, frac * abs(lam), study.tol, study.max_hvps)
            refs[f"ift delta={frac:g}*lam"] = (ref["grad"], {"ref_residual": ref["residual"],
                                                            "ref_hvps": ref["hvps"]})
        cands = {f"neumann alpha={a}": _estimate(end, family, w, a, study.terms, "neumann")
                 for a in study.alphas}
        cands[f"cg {study.terms}"] = _estimate(end, family, w, 0.01, study.terms, "cg")
        cands.update({name: (grad, {}) for name, (grad, _) in refs.items()})
        base = {"init": init, "w_max": float(w.abs().max()), "inner_steps": steps,
                "hessian_batch": hb, "held_out": held_out, "lambda_max": lam,
                "inner_acc": end.batches.inner_acc, "held_out_acc": end.batches.held_out_acc}
        for ref_name, (truth, ref_info) in refs.items():
            for cand_name, (est, info) in cands.items():
                if cand_name != ref_name:
                    rows.append({**base, "reference": ref_name, **ref_info,
                                 "ref_norm": float(truth.norm()), "candidate": cand_name,
                                 **info, **compare(est, truth)})
        print(f"{init} T={steps} hessian_batch={hb} held_out={held_out}: "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def _estimate(end: Endpoint, family: LossFamily, w: torch.Tensor, alpha: float | str,
              terms: int, solver: str) -> tuple[torch.Tensor, dict[str, Any]]:
    def train_loss(theta: Params, w_leaf: torch.Tensor) -> torch.Tensor:
        return family.loss(mlp_forward(theta, end.batches.xt), end.batches.yt, w_leaf)

    hg = implicit_hypergradient(end.params, w, train_loss,
                                lambda th: held_out_loss(th, end.batches), alpha, terms,
                                solver)
    return hg.grad, {"solver_residual": hg.neumann_ratio, "alpha_used": hg.alpha,
                     "hvps": hg.hvps, "restarts": hg.restarts}


def run_study(data: DomainSet, family: LossFamily, num_classes: int, study: Study,
              done: Callable[[list[dict[str, Any]]], None] | None = None
              ) -> list[dict[str, Any]]:
    """Every end point of the study; `done` sees the rows so far after each one (so a long
    study leaves its results behind as it goes)."""
    rows: list[dict[str, Any]] = []
    for init in study.inits:
        w = initial_w(family, init, num_classes,
                      torch.Generator().manual_seed(seed_hash(study.seed, "init")))
        for steps in study.inner_steps:
            for held_out in study.held_out:
                try:
                    rows.extend(endpoint_rows(data, family, init, w, steps, held_out, study))
                except ValueError as err:  # an inner loop went non-finite
                    print(f"{init} T={steps}: {err}", file=sys.stderr, flush=True)
                    continue
                if done is not None:
                    done(rows)
    return rows


def descent_rows(data: DomainSet, family: LossFamily, w: torch.Tensor, cfg: MetaConfig,
                 scales: Sequence[float], step: int = 0) -> list[dict[str, Any]]:
    """Does the trainer's combined hypergradient h (PCGrad over all splits, as an outer step
    computes it) point downhill on the real objective? The held-out loss and accuracy of the
    same splits (outer step `step`: same initial weights and batches) at w - s h, per scale s;
    the paper's GD step is s = 0.01."""
    trainer = MetaTrainer(data, family, cfg, w, "sgd", 0.01)
    h = trainer.combine(leave_one_domain_out(data, w, family, cfg, step))
    rows = []
    for s in scales:
        results = leave_one_domain_out(data, w - s * h, family, cfg, step,
                                       compute_hypergrad=False)
        rows.append({"scale": s, "shift_norm": s * float(h.norm()),
                     "h_norm": float(h.norm()),
                     "meta_loss": sum(r.meta_loss for r in results) / len(results),
                     "held_out_acc": sum(r.held_out_acc for r in results) / len(results),
                     "held_out_accs": " ".join(f"{r.held_out_acc:.4f}" for r in results)})
        print(f"descent: scale {s}: {rows[-1]['held_out_acc']:.4f}", file=sys.stderr,
              flush=True)
    return rows


SUMMARY_KEYS = ("init", "inner_steps", "hessian_batch", "reference", "candidate")
SUMMARY_VALUES = ("cosine", "coef_cosine", "rel_error", "norm_ratio", "ref_norm", "ref_residual",
                  "solver_residual", "held_out_acc", "lambda_max")


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means over the held-out domains, plus the worst cosine."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in SUMMARY_KEYS), []).append(r)
    out = []
    for key, members in groups.items():
        entry = dict(zip(SUMMARY_KEYS, key, strict=True))
        for name in SUMMARY_VALUES:
            values = [m[name] for m in members if name in m]
            entry[name] = sum(values) / len(values) if values else ""
        entry["min_cosine"] = min(m["cosine"] for m in members)
        entry["domains"] = len(members)
        out.append(entry)
    return out


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def write_table(rows: Sequence[dict[str, Any]], title: str, out: Path, name: str,
                table: Sequence[dict[str, Any]] | None = None) -> None:
    """`name`.csv (every row) and `name`.md (`table`, default the rows, as markdown)."""
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic.atomic_open(out / f"{name}.csv") as handle:
        writer = csv.DictWriter(handle, keys)
        writer.writeheader()
        writer.writerows(rows)
    table = rows if table is None else table
    cols = list(dict.fromkeys(k for r in table for k in r))
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k in cols) + " |" for r in table]
    atomic.write_text(out / f"{name}.md", "\n".join(lines) + "\n")
