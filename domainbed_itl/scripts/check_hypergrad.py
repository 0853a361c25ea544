"""How accurate are the Neumann and CG hypergradients? A study on problems small enough to solve
exactly.

    python -m domainbed_itl.scripts.check_hypergrad --data_dir data --out results/hypergrad_check

The implicit-gradient trainer never sees the true dM/dw: it truncates the Neumann series at J
terms and evaluates it at the end of a finite SGD run, not at an optimum. Here both
approximations are measured against the truth on real MNIST (downsampled to 7x7, a few hundred
images; held-out = MNIST test images), with L_w the order-4 Taylor loss at its cross-entropy-like
start and a small L2 penalty so the inner problem has a well-defined optimum:

- truth: the exact implicit gradient (Hessian formed and solved) at the optimum found by L-BFGS,
  itself checked against central finite differences of the held-out loss of the re-solved
  problem;
- the J sweep: estimates at the optimum for several budgets J of Hessian-vector products:
  Neumann with three step sizes alpha (1 / lambda_max from the exact spectrum, where the series
  converges fastest without diverging; the trainer's former default 0.01; "auto", 1 / lambda_max
  from 10 power iterations, which add 10 HVPs) and conjugate gradients (no damping);
- the inner-length sweep: SGD (batch 32) for T steps from the same start, then the Neumann
  estimate (J = 15, alpha = 1 / lambda_max), CG with 15 HVPs and the exact IFT solve at that
  end point, all against the truth.

Two base models: softmax regression (convex) and a one-hidden-layer tanh MLP (not convex; its
Hessian's smallest eigenvalue is reported, since the Neumann series needs it positive). The
study itself is `meta.hypergrad_study`, its files `meta.hypergrad_report`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from domainbed.lib.cli import UsageError, command
from domainbed_itl.meta.hypergrad_report import write_outputs
from domainbed_itl.meta.hypergrad_study import PROBLEMS, run_study


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domainbed_itl.scripts.check_hypergrad",
                                description="Neumann and CG hypergradient accuracy study.")
    p.add_argument("--data_dir", default="data", help="holds MNIST/raw (see make demo)")
    p.add_argument("--out", required=True)
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    p.add_argument("--J", type=int, nargs="+", default=[1, 5, 15, 50, 200])
    p.add_argument("--inner_steps", type=int, nargs="+", default=[50, 200, 1000, 5000])
    p.add_argument("--n_train", type=int, default=300)
    p.add_argument("--inner_lr", type=float, default=0.1)
    p.add_argument("--l2", type=float, default=1e-2)
    p.add_argument("--threads", type=int, default=0)
    return p


@command("domainbed_itl.scripts.check_hypergrad")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if min(args.J) < 0 or min(args.inner_steps) < 1 or args.n_train < 1 or not args.l2 >= 0:
        raise UsageError("--J >= 0, --inner_steps >= 1, --n_train >= 1, --l2 >= 0")
    try:
        result = run_study(args.data_dir, args.problems, args.J, args.inner_steps,
                           args.n_train, args.n_train, args.l2, args.inner_lr)
    except RuntimeError as err:  # torchvision: MNIST files missing
        raise UsageError(f"{err}; prepare MNIST under --data_dir first") from None
    if not all(math.isfinite(r["cosine"]) for r in result["rows"]):
        print("warning: some estimates are not finite", file=sys.stderr)
    write_outputs(result, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
