"""How good is the trainer's hypergradient where the trainer really uses it? A study at the real
inner end points of the paper's setting.

    python -m domainbed_itl.scripts.check_endpoints --data_dir data --out results/hypergrad_paper

`check_hypergrad` measures the solvers on problems small enough to solve exactly. Here the
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
real objective: the held-out loss of the same splits at w - s h. The study itself is
`meta.endpoint_study`, its end points and references `meta.endpoint_references`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from domainbed.datasets.multiple_domain import DataUnavailableError
from domainbed.lib.cli import UsageError, command
from domainbed.lib.misc import seed_hash
from domainbed_itl.meta import data as meta_data
from domainbed_itl.meta.endpoint_study import Study, descent_rows, run_study, summarise, write_table
from domainbed_itl.meta.families import init_presets, initial_w, make_family
from domainbed_itl.meta.linear_solve import parse_alpha
from domainbed_itl.meta.splits import MetaConfig, make_domain_set

PROG = "domainbed_itl.scripts.check_endpoints"


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
