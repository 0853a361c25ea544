"""How good is the trainer's hypergradient where the trainer really uses it? A study at the real
inner end points of the paper's setting.

    python -m domainbed_itl.meta.check_endpoints --data_dir data --out results/hypergrad_paper

`meta.check_hypergrad` measures the solvers on problems small enough to solve exactly. Here the
base model is the paper's (MLP 784-1024-256-10, ReLU) on real RotatedMNIST, and each end point
is a leave-one-domain-out split exactly as the trainer builds it (`meta.splits`: same initial
weights, minibatches, held-out and Hessian batches), trained for T SGD steps (lr 0.01, batch 32)
with L_w at a candidate start w. There the trainer's estimates (Neumann, J terms, at several
alphas; CG with the same number of HVPs) are compared with two references:

- `ift`: the implicit gradient -dM/dtheta (H + delta I)^-1 d2L/dtheta dw with H the Hessian of
  the same batch, solved by MINRES to a relative residual `tol` (the true residual is
  recomputed and reported). A ReLU MLP's Hessian at a finite-T end point is singular and
  indefinite, so the undamped system has no meaningful solution; the reference is given for
  delta a fixed fraction of the largest eigenvalue, at two fractions, to show how much it moves;
- `unrolled`: the exact gradient, with respect to w, of the held-out loss after the T SGD steps
  actually taken (reverse mode through the inner loop, recomputed segment by segment from
  stored checkpoints so memory stays small). This is what a gradient step on w descends.

Each row reports cosine, relative error |h - h*| / |h*| and norm ratio |h| / |h*|.
`--descent_scales` asks instead whether one outer step's combined hypergradient descends the
real objective: the held-out loss of the same splits at w - s h.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from domainbed.datasets.base import DataUnavailableError
from domainbed.lib import atomic
from domainbed.lib.cli import UsageError, command
from domainbed.lib.misc import seed_hash
from domainbed_itl.meta import data as meta_data
from domainbed_itl.meta.base_model import Params, mlp_forward
from domainbed_itl.meta.families import LossFamily, init_presets, initial_w, make_family
from domainbed_itl.meta.hypergrad import (
    _objectives,
    hessian_vector_product,
    implicit_hypergradient,
    mixed_vector_product,
)
from domainbed_itl.meta.inner import train_on_batches
from domainbed_itl.meta.linear_solve import Space, parse_alpha, top_eigenvalue
from domainbed_itl.meta.outer import leave_one_domain_out
from domainbed_itl.meta.splits import (
    DomainSet,
    MetaConfig,
    SplitBatches,
    finish_split,
    held_out_loss,
    make_domain_set,
    start_split,
)
from domainbed_itl.meta.trainer import MetaTrainer

PROG = "domainbed_itl.meta.check_endpoints"
POWER_ITERS = 20
# Checkpoints of the inner loop kept for the unrolled gradient: one every SEGMENT steps.
SEGMENT = 50

Flat = torch.Tensor


def _flatten(vectors: Sequence[torch.Tensor]) -> Flat:
    return torch.cat([t.reshape(-1) for t in vectors])


def _unflatten(flat: Flat, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    pieces = torch.split(flat, [t.numel() for t in like])
    return [p.reshape(t.shape) for p, t in zip(pieces, like, strict=True)]


def minres(matvec: Callable[[Flat], Flat], b: Flat, tol: float, max_iters: int
           ) -> tuple[Flat, int]:
    """x ~ A^-1 b for symmetric (possibly indefinite) A by MINRES (Paige and Saunders, 1975):
    Lanczos vectors with a running QR of the tridiagonal matrix, minimising |b - A x| over the
    Krylov space. Stops when the recurrence's residual estimate is below `tol` |b|. Returns
    (x, products spent)."""
    beta1 = float(b.norm())
    x = torch.zeros_like(b)
    if beta1 == 0:
        return x, 0
    r1, r2, y = b.clone(), b.clone(), b.clone()
    beta, oldb, dbar, epsln, phibar = beta1, 0.0, 0.0, 0.0, beta1
    cs, sn = -1.0, 0.0
    w, w2 = torch.zeros_like(b), torch.zeros_like(b)
    k = 0
    while k < max_iters:
        k += 1
        v = y / beta
        y = matvec(v)
        if k >= 2:
            y = y - (beta / oldb) * r1
        alfa = float(v @ y)
        y = y - (alfa / beta) * r2
        r1, r2 = r2, y
        oldb, beta = beta, float(y.norm())
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln, dbar = sn * beta, -cs * beta
        gamma = max(math.hypot(gbar, beta), torch.finfo(b.dtype).tiny)
        cs, sn = gbar / gamma, beta / gamma
        phi, phibar = cs * phibar, sn * phibar
        w1, w2 = w2, w
        w = (v - oldeps * w1 - delta * w2) / gamma
        x = x + phi * w
        if phibar / beta1 < tol or beta == 0:
            break
    return x, k


@dataclasses.dataclass
class Endpoint:
    """A trained split: its initial and final weights, the rows of its inner minibatches and
    its held-out and Hessian batches."""

    init: Params
    params: Params
    rows: torch.Tensor
    batches: SplitBatches


def train_endpoint(data: DomainSet, family: LossFamily, w: torch.Tensor, cfg: MetaConfig,
                   held_out: int, step: int = 0) -> Endpoint:
    """The split the trainer would build at outer step `step` with this w, trained."""
    split = start_split(data, held_out, cfg, step)
    init = [p.detach().clone() for p in split.params]
    w = w.detach()
    trained = train_on_batches(split.params, data.x, data.y,
                               lambda logits, y: family.loss(logits, y, w), split.batches,
                               cfg.inner_lr)
    if not trained.finite:
        raise ValueError(f"held-out domain {held_out}: the inner loop went non-finite")
    batches = finish_split(data, split, trained.params, cfg, True)
    return Endpoint(init, [p.detach() for p in trained.params], split.batches, batches)


def with_hessian_batch(data: DomainSet, end: Endpoint, cfg: MetaConfig, held_out: int,
                       step: int = 0) -> Endpoint:
    """The same end point with the batches the trainer draws under `cfg` (another
    hessian_batch): the split's generator is replayed, so no retraining is needed."""
    split = start_split(data, held_out, cfg, step)
    return dataclasses.replace(end, batches=finish_split(data, split, end.params, cfg, True))


def unrolled_hypergradient(data: DomainSet, family: LossFamily, w: torch.Tensor,
                           end: Endpoint, lr: float, segment: int = SEGMENT
                           ) -> tuple[torch.Tensor, float]:
    """d M(theta_T(w)) / dw through the T SGD steps the end point took, by reverse mode.

    The forward pass is redone with the trainer's own update (same ops, so the same floats:
    the recomputed end point is checked against the trainer's), keeping one checkpoint per
    `segment` steps; each segment is then replayed and walked backwards, one double backward
    per step. Returns (gradient, max |recomputed - trainer's end point|).
    """
    w = w.detach()
    steps = len(end.rows)
    checkpoints, theta = [], [p.clone() for p in end.init]
    for t in range(steps):
        if t % segment == 0:
            checkpoints.append([p.clone() for p in theta])
        theta = _sgd_step(theta, data, family, w, end.rows[t], lr)
    gap = max(float((a - b).abs().max()) for a, b in zip(theta, end.params, strict=True))
    lam = list(torch.autograd.grad(held_out_loss([p.requires_grad_() for p in theta],
                                                 end.batches), theta))
    grad_w = torch.zeros_like(w)
    for s in reversed(range(len(checkpoints))):
        t0, t1 = s * segment, min(steps, (s + 1) * segment)
        states = [checkpoints[s]]
        for t in range(t0, t1 - 1):
            states.append(_sgd_step(states[-1], data, family, w, end.rows[t], lr))
        for t in reversed(range(t0, t1)):
            th = [p.detach().requires_grad_() for p in states[t - t0]]
            w_leaf = w.clone().requires_grad_()
            rows = end.rows[t]
            loss = family.loss(mlp_forward(th, data.x[rows]), data.y[rows], w_leaf)
            grads = torch.autograd.grad(loss, th, create_graph=True)
            *h_lam, mixed = torch.autograd.grad(grads, [*th, w_leaf], grad_outputs=lam)
            grad_w -= lr * mixed
            lam = [a - lr * b for a, b in zip(lam, h_lam, strict=True)]
    return grad_w.detach(), gap


def _sgd_step(theta: Params, data: DomainSet, family: LossFamily, w: torch.Tensor,
              rows: torch.Tensor, lr: float) -> Params:
    params = [p.detach().clone().requires_grad_() for p in theta]
    loss = family.loss(mlp_forward(params, data.x[rows]), data.y[rows], w)
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.sub_(g, alpha=lr)
    return [p.detach() for p in params]


def ift_reference(end: Endpoint, family: LossFamily, w: torch.Tensor, damping: float,
                  tol: float, max_hvps: int) -> dict[str, Any]:
    """-dM/dtheta (H + damping I)^-1 d2L/dtheta dw by MINRES, with its true relative residual."""
    def train_loss(theta: Params, w_leaf: torch.Tensor) -> torch.Tensor:
        return family.loss(mlp_forward(theta, end.batches.xt), end.batches.yt, w_leaf)

    theta, w_leaf, grads, v, _ = _objectives(end.params, w, train_loss,
                                             lambda th: held_out_loss(th, end.batches))

    def matvec(x: Flat) -> Flat:
        hx = hessian_vector_product(grads, theta, _unflatten(x, theta))
        return _flatten(hx) + damping * x

    b = _flatten(v)
    u, hvps = minres(matvec, b, tol, max_hvps)
    residual = float((b - matvec(u)).norm() / b.norm())
    grad = -mixed_vector_product(grads, w_leaf, _unflatten(u, theta))
    return {"grad": grad.detach(), "residual": residual, "hvps": hvps + 1}


def spectrum_top(end: Endpoint, family: LossFamily, w: torch.Tensor, seed: int) -> float:
    """Largest-magnitude eigenvalue of the Hessian batch's Hessian (signed), by power
    iteration."""
    def train_loss(theta: Params, w_leaf: torch.Tensor) -> torch.Tensor:
        return family.loss(mlp_forward(theta, end.batches.xt), end.batches.yt, w_leaf)

    theta, _, grads, _, _ = _objectives(end.params, w, train_loss,
                                        lambda th: held_out_loss(th, end.batches))
    g = torch.Generator().manual_seed(seed)
    start = [torch.randn(t.shape, generator=g) for t in theta]
    return float(top_eigenvalue(lambda x: hessian_vector_product(grads, theta, x), start,
                                POWER_ITERS, Space()))


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


def build_parser() -> argparse.ArgumentParser:
    d = Study()
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default="data", help="holds MNIST/raw")
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default="RotatedMNIST")
    p.add_argument("--exclude_envs", type=int, nargs="*", default=[0])
    p.add_argument("--inits", nargs="+", default=list(d.inits), choices=init_presets())
    p.add_argument("--inner_steps", type=int, nargs="+", default=list(d.inner_steps))
    p.add_argument("--hessian_batches", type=int, nargs="+", default=list(d.hessian_batches))
    p.add_argument("--held_out", type=int, nargs="+", default=list(d.held_out),
                   help="held-out domains, indices among the domains left after --exclude_envs")
    p.add_argument("--alphas", type=parse_alpha, nargs="+", default=list(d.alphas))
    p.add_argument("--terms", type=int, default=d.terms)
    p.add_argument("--damping_fractions", type=float, nargs="+",
                   default=list(d.damping_fractions))
    p.add_argument("--tol", type=float, default=d.tol)
    p.add_argument("--max_hvps", type=int, default=d.max_hvps)
    p.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden))
    p.add_argument("--val_batch", type=int, default=d.val_batch)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--descent_scales", type=float, nargs="+", default=None,
                   help="instead of the study: the held-out loss of one outer step's splits "
                   "at w - s h for these s (with the first --inits, --inner_steps, "
                   "--hessian_batches and --alphas), written to descent.csv/.md")
    return p


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if (min(args.inner_steps) < 1 or min(args.hessian_batches) < 1 or args.terms < 0
            or not 0 < args.tol < 1 or args.max_hvps < 1
            or not all(f > 0 for f in args.damping_fractions)):
        raise UsageError("--inner_steps, --hessian_batches, --max_hvps >= 1, --terms >= 0, "
                         "0 < --tol < 1, --damping_fractions > 0")
    study = Study(tuple(args.inits), tuple(args.inner_steps), tuple(args.hessian_batches),
                  tuple(args.held_out), tuple(args.alphas), args.terms,
                  tuple(args.damping_fractions), args.tol, args.max_hvps, tuple(args.hidden),
                  args.val_batch, args.seed)
    family = make_family("taylor", 4)
    try:
        meta_data.check_dataset(args.dataset)
        domains, num_classes = meta_data.load_domains(args.dataset, args.data_dir, args.seed)
        domains = meta_data.drop_envs(domains, args.exclude_envs)
        bad = [d for d in args.held_out if not 0 <= d < len(domains)]
        if bad:
            raise ValueError(f"--held_out {bad} out of range 0..{len(domains) - 1}")
        data = make_domain_set(domains, num_classes, 2000, args.seed)
    except (ValueError, DataUnavailableError) as err:
        raise UsageError(str(err)) from None
    header = (f"{args.dataset} without envs {args.exclude_envs}, MLP {study.hidden}, SGD lr "
              f"0.01 batch 32, J = {study.terms}, MINRES tol {study.tol} (max "
              f"{study.max_hvps} HVPs); held-out domain indices {list(study.held_out)}")
    if args.descent_scales is not None:
        cfg = MetaConfig(hidden=study.hidden, inner_steps=study.inner_steps[0],
                         hessian_batch=study.hessian_batches[0], val_batch=study.val_batch,
                         neumann_alpha=study.alphas[0], neumann_terms=study.terms,
                         seed=study.seed)
        w = initial_w(family, study.inits[0], num_classes,
                      torch.Generator().manual_seed(seed_hash(study.seed, "init")))
        rows = descent_rows(data, family, w, cfg, args.descent_scales)
        write_table(rows, f"Along the combined hypergradient from --init {study.inits[0]}: "
                    f"{header}; T = {cfg.inner_steps}, Hessian batch {cfg.hessian_batch}, "
                    f"alpha {cfg.neumann_alpha}", Path(args.out), "descent")
        return 0
    run_study(data, family, num_classes, study,
              lambda rows: write_table(rows, "Hypergradients at the real inner end points "
                                       f"(means over held-out domains): {header}",
                                       Path(args.out), "check_endpoints", summarise(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
