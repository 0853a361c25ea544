"""One CMA-ES search run and its files: the saved search read back (a pickled one from an earlier
version refused, never loaded) and the budget spent generation by generation, rewriting after
each the search state, log.jsonl and learned_loss.json (the best candidate seen so far).

The candidates' fitness and the optimizer are `cma_search`; saving and replaying the search,
`cma_state`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cma
import numpy as np
import torch
from tqdm import tqdm

from domainbed.lib import atomic
from domainbed_itl.meta.cma_search import evaluate
from domainbed_itl.meta.cma_state import Generation, SearchState, read_state
from domainbed_itl.meta.families import LossFamily
from domainbed_itl.meta.outer import make_domain_set
from domainbed_itl.meta.ray_backend import RayBackend
from domainbed_itl.meta.run_files import LEARNED, LOG, SEARCH_STATE
from domainbed_itl.meta.run_settings import Prepared, meta_config
from domainbed_itl.meta.state import ConfigMismatchError, rewrite_log

# A pickled search state: refused, never loaded, since unpickling a file can run any code.
LEGACY_STATE = "state.pkl"
# Settings that may change between the pieces of one resumed search (besides
# run_settings.WHERE_IT_RUNS).
OPERATIONAL = ("budget",)


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
