"""CMA-ES baseline for meta-learning the loss (the paper's Sec. 4.3 and Fig. 4).

    python -m domainbed_itl.scripts.meta_cmaes --dataset RotatedMNIST --data_dir D --output_dir O \
        --budget 600

Why it exists: the paper argues that implicit gradients reach a good loss with far fewer inner
trainings than an evolutionary search. To compare fairly, a candidate costs n_domains inner
trainings, as one implicit-gradient outer step does (`meta.cma_search`).

Outputs, rewritten after every generation: log.jsonl (cumulative inner trainings, best and mean
held-out accuracy and fitness of the generation, sigma), learned_loss.json (the best candidate
seen so far) and state.json (every generation's candidates and fitness values, from which
`cma_state.replay` rebuilds the optimizer exactly). Rerunning the same command resumes; other
settings (except --budget and where it runs: --threads, --backend, ...) are refused. Nothing in
the output directory is ever unpickled: a state.pkl from an earlier version is refused, not
loaded. `--backend ray` evaluates the candidates of a generation as parallel Ray tasks
(`meta.ray_backend`), with the same results.

The search itself is `meta.cma_run` (the search and its files), `meta.cma_search` (fitness,
optimizer) and `meta.cma_state` (saving and replay); the arguments it shares with `meta_train`
come from `meta.run_settings`.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from domainbed.datasets.multiple_domain import DataUnavailableError
from domainbed.lib.cli import OneLineParser, UsageError, command
from domainbed.lib.output_dir import make_output_dir
from domainbed_itl.meta.cma_run import OPERATIONAL, load_state, search
from domainbed_itl.meta.cma_search import FITNESS, new_strategy
from domainbed_itl.meta.cma_state import SearchState, replay
from domainbed_itl.meta.ray_backend import RayBackend
from domainbed_itl.meta.run_settings import (
    add_execution_arguments,
    add_problem_arguments,
    prepare,
    run_config,
    validate_problem,
)
from domainbed_itl.meta.state import check_config


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m domainbed_itl.scripts.meta_cmaes",
                      description="CMA-ES search of a loss function (baseline).")
    add_problem_arguments(p)
    p.add_argument("--budget", type=int, required=True,
                   help="inner-loop trainings to spend in all (n_domains per candidate)")
    p.add_argument("--sigma0", type=float, default=0.1,
                   help="initial CMA-ES step size, relative: coordinate i starts with standard "
                   "deviation sigma0 * max(|w0_i|, 1), since the ce_like coefficients span "
                   "three orders of magnitude")
    p.add_argument("--popsize", type=int, default=0, help="candidates per generation "
                   "(0 = CMA-ES's default, 4 + 3 ln n)")
    p.add_argument("--fitness", default="ce", choices=FITNESS,
                   help="minimise mean held-out cross-entropy or error rate")
    add_execution_arguments(p)
    return p


@command("domainbed_itl.scripts.meta_cmaes")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    backend = None
    try:
        try:
            if args.budget < 1 or not args.sigma0 > 0 or args.popsize < 0:
                raise ValueError("--budget must be >= 1, --sigma0 > 0, --popsize >= 0")
            validate_problem(args)
            backend = RayBackend(args.ray_address) if args.backend == "ray" else None
            run = prepare(args, load_state)
            config = run_config(args, run.family, run.w0, OPERATIONAL)
            if run.saved is not None:
                check_config(run.saved.config, config)
            popsize = args.popsize or 4 + int(3 * math.log(run.family.n_params))
            per_generation = popsize * len(run.domains)
            if args.budget < per_generation:
                raise ValueError(f"--budget {args.budget} is below one generation "
                                 f"({popsize} candidates x {len(run.domains)} domains)")
            state = run.saved or SearchState(config)
            es = replay(lambda: new_strategy(run.w0.double().numpy(), args.sigma0, popsize,
                                             args.seed), state.generations)
            make_output_dir(run.out)
        except (ValueError, DataUnavailableError) as err:
            raise UsageError(str(err)) from None
        return search(args, run, state, es, popsize, backend)
    finally:
        if backend is not None:
            backend.close()


if __name__ == "__main__":
    sys.exit(main())
