"""CMA-ES baseline for meta-learning the loss (the paper's Sec. 4.3 and Fig. 4).

    python -m domainbed_itl.meta.cmaes --dataset RotatedMNIST --data_dir D --output_dir O \
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

The search itself is `meta.cma_search` (fitness, optimizer) and `meta.cma_state` (saving and
replay); the arguments it shares with `meta.train` come from `meta.run_settings`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import cma
import numpy as np
import torch
from tqdm import tqdm

from domainbed.datasets.base import DataUnavailableError
from domainbed.lib import atomic
from domainbed.lib.cli import OneLineParser, UsageError, command
from domainbed.lib.output_dir import make_output_dir
from domainbed_itl.meta.cma_search import FITNESS, evaluate, new_strategy
from domainbed_itl.meta.cma_state import Generation, SearchState, read_state, replay
from domainbed_itl.meta.families import LossFamily
from domainbed_itl.meta.outer import make_domain_set
from domainbed_itl.meta.ray_backend import RayBackend
from domainbed_itl.meta.run_files import LEARNED, LOG, SEARCH_STATE
from domainbed_itl.meta.run_settings import (
    Prepared,
    add_execution_arguments,
    add_problem_arguments,
    meta_config,
    prepare,
    run_config,
    validate_problem,
)
from domainbed_itl.meta.state import ConfigMismatchError, check_config, rewrite_log

# A pickled search state: refused, never loaded, since unpickling a file can run any code.
LEGACY_STATE = "state.pkl"
# Settings of this command that may change between the pieces of one resumed search (besides
# run_settings.WHERE_IT_RUNS).
OPERATIONAL = ("budget",)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m domainbed_itl.meta.cmaes",
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


def load_state(out: Path, family: LossFamily) -> SearchState | None:
    """The saved search in `out`, None for a new one; refuses what it must not load."""
    if (out / LEGACY_STATE).exists():
        raise ConfigMismatchError(
            f"{out / LEGACY_STATE} is a pickled search from an earlier version and is never "
            "loaded (unpickling can run code); choose a new --output_dir, or remove "
            f"{LEGACY_STATE} and {LOG} from {out} to start the search over there")
    saved = read_state(out / SEARCH_STATE, family.n_params)
    if saved is None and (out / LOG).exists():
        raise ConfigMismatchError(f"{out} holds a log but no {SEARCH_STATE}; choose a new "
                                  "--output_dir")
    return saved


def search(args: argparse.Namespace, run: Prepared[SearchState], state: SearchState,
           es: cma.CMAEvolutionStrategy, popsize: int, backend: RayBackend | None) -> int:
    """Spend the budget generation by generation from the replayed `es`, writing the outputs
    after each."""
    out, family = run.out, run.family
    atomic.remove_leftovers(out)
    cfg = meta_config(args)
    data = make_domain_set(run.domains, run.num_classes, cfg.eval_examples, args.seed)
    shared = backend.share(data) if backend is not None else data
    records = state.records
    rewrite_log(out / LOG, records)
    per_generation = popsize * len(run.domains)
    spent = len(state.generations) * per_generation
    bar = tqdm(total=args.budget, initial=spent, desc="inner trainings", dynamic_ncols=True)
    while spent + per_generation <= args.budget:
        start = time.perf_counter()
        generation = len(records)
        candidates = es.ask()
        calls = [(shared, w, family, cfg, generation, args.fitness) for w in candidates]
        scored = (backend.map(evaluate, calls) if backend is not None
                  else [evaluate(*call) for call in calls])
        es.tell(candidates, [f for f, _ in scored])
        spent += per_generation
        state.generations.append(Generation([[float(v) for v in w] for w in candidates],
                                            [float(f) for f, _ in scored],
                                            [a for _, a in scored]))
        accs = [a for _, a in scored if a is not None]
        i_best = min(range(len(scored)), key=lambda i: scored[i][0])
        records.append({
            "generation": generation,
            "inner_trainings": spent,
            "best_fitness": scored[i_best][0],
            "mean_fitness": float(np.mean([f for f, _ in scored])),
            "best_held_out_acc": max(accs) if accs else None,
            "mean_held_out_acc": float(np.mean(accs)) if accs else None,
            "n_diverged": len(scored) - len(accs),
            "sigma": float(es.sigma),
            "seconds": round(time.perf_counter() - start, 3),
            "best_w": [float(v) for v in candidates[i_best]],
        })
        atomic.write_text(out / SEARCH_STATE, state.to_json())
        rewrite_log(out / LOG, records)
        _, best_w, _ = state.best()
        atomic.write_text(out / LEARNED,
                          family.learned(torch.tensor(best_w, dtype=torch.float64)).to_json())
        bar.update(per_generation)
        best = records[-1]["best_held_out_acc"]
        bar.set_postfix(generation=generation,
                        best_held_out="diverged" if best is None else f"{best:.4f}")
    bar.close()
    return 0


@command("domainbed_itl.meta.cmaes")
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
