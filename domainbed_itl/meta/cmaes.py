"""CMA-ES baseline for meta-learning the loss (the paper's Sec. 4.3 and Fig. 4).

    python -m domainbed_itl.meta.cmaes --dataset RotatedMNIST --data_dir D --output_dir O \
        --budget 600

Why it exists: the paper argues that implicit gradients reach a good loss with far fewer inner
trainings than an evolutionary search. To compare fairly, CMA-ES here evaluates a candidate w
with exactly the inner loops the implicit-gradient trainer runs (`outer.leave_one_domain_out`
without hypergradients), and spends the same currency: one inner training per held-out domain,
so a candidate costs n_domains inner trainings, as one implicit-gradient outer step does.
All candidates of a generation share the same seeds (common random numbers), so they are ranked
on equal terms.

Outputs, rewritten after every generation: log.jsonl (cumulative inner trainings, best and mean
held-out accuracy and fitness of the generation, sigma), learned_loss.json (the best candidate
seen so far) and state.json (every generation's candidates and fitness values, from which
`cma_state.replay` rebuilds the optimizer exactly). Rerunning the same command resumes; other
settings (except --budget and --threads) are refused. Nothing in the output directory is ever
unpickled: a state.pkl from an earlier version is refused, not loaded.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import cma
import numpy as np
import torch
from tqdm import tqdm

from domainbed.datasets.base import DataUnavailableError
from domainbed.lib.misc import seed_hash
from domainbed.lib.output_dir import check_output_dir, make_output_dir
from domainbed_itl.meta.cma_state import Generation, SearchState, read_state, replay
from domainbed_itl.meta.families import (
    INIT_PRESETS,
    LossFamily,
    initial_w,
    make_family,
    w_from_file,
)
from domainbed_itl.meta.outer import DomainSet, MetaConfig, leave_one_domain_out, make_domain_set
from domainbed_itl.meta.state import (
    ConfigMismatchError,
    atomic_write_bytes,
    atomic_write_json,
    check_config,
    remove_temporaries,
    rewrite_log,
)
from domainbed_itl.meta.train import check_dataset, drop_envs, load_domains

LOG = "log.jsonl"
LEARNED = "learned_loss.json"
STATE = "state.json"
# What earlier versions saved; never loaded, since unpickling a file can run any code.
LEGACY_STATE = "state.pkl"
OPERATIONAL = ("budget", "threads", "data_dir", "output_dir")
# Fitness of a candidate whose inner loops diverged: worse than any finite outcome.
DIVERGED = 1e6


def build_parser() -> argparse.ArgumentParser:
    d = MetaConfig()
    p = argparse.ArgumentParser(prog="python -m domainbed_itl.meta.cmaes",
                                description="CMA-ES search of a loss function (baseline).")
    p.add_argument("--dataset", default="RotatedMNIST")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--exclude_envs", type=int, nargs="+", default=[])
    p.add_argument("--budget", type=int, required=True,
                   help="inner-loop trainings to spend in all (n_domains per candidate)")
    p.add_argument("--family", default="taylor", choices=("taylor", "isce"))
    p.add_argument("--order", type=int, default=4)
    p.add_argument("--init", default="ce_like",
                   help=f"mean of the first generation: {', '.join(INIT_PRESETS)} or a JSON file")
    p.add_argument("--sigma0", type=float, default=0.1,
                   help="initial CMA-ES step size, relative: coordinate i starts with standard "
                   "deviation sigma0 * max(|w0_i|, 1), since the ce_like coefficients span "
                   "three orders of magnitude")
    p.add_argument("--popsize", type=int, default=0, help="candidates per generation "
                   "(0 = CMA-ES's default, 4 + 3 ln n)")
    p.add_argument("--fitness", default="ce", choices=("ce", "error"),
                   help="minimise mean held-out cross-entropy or error rate")
    p.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden))
    p.add_argument("--inner_steps", type=int, default=d.inner_steps)
    p.add_argument("--inner_lr", type=float, default=d.inner_lr)
    p.add_argument("--inner_batch", type=int, default=d.inner_batch)
    p.add_argument("--val_batch", type=int, default=d.val_batch)
    p.add_argument("--eval_examples", type=int, default=d.eval_examples)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    return p


def evaluate(
    data: DomainSet, w: np.ndarray, family: LossFamily, cfg: MetaConfig, generation: int,
    fitness: str,
) -> tuple[float, float | None]:
    """(fitness, mean held-out accuracy) of one candidate over all leave-one-domain-out splits;
    a diverged split makes the candidate DIVERGED."""
    results = leave_one_domain_out(data, torch.tensor(w, dtype=torch.float32), family, cfg,
                                   generation, compute_hypergrad=False)
    if not all(r.finite and math.isfinite(r.held_out_acc) for r in results):
        return DIVERGED, None
    acc = sum(r.held_out_acc for r in results) / len(results)
    loss = sum(r.meta_loss for r in results) / len(results)
    return (loss if fitness == "ce" else 1.0 - acc), acc


def _config(args: argparse.Namespace, family: LossFamily, w0: torch.Tensor) -> dict[str, Any]:
    config = {k: v for k, v in vars(args).items() if k not in OPERATIONAL}
    config["exclude_envs"] = sorted(args.exclude_envs)
    config["family_spec"] = family.spec()
    config["w0"] = [float(v) for v in w0]
    return config


def new_strategy(start: np.ndarray, sigma0: float, popsize: int,
                 seed: int) -> cma.CMAEvolutionStrategy:
    """The optimizer of a fresh search. It samples from its own generator (the same stream
    pycma's `seed` option would put into numpy's global one), so nothing else that draws from
    numpy can shift it, and a replay reproduces it exactly."""
    rng = np.random.RandomState(seed_hash(seed, "cma") % 2**31 + 1)
    return cma.CMAEvolutionStrategy(start, sigma0, {
        "popsize": popsize, "seed": np.nan, "randn": rng.randn, "verbose": -9,
        "CMA_stds": np.maximum(np.abs(start), 1.0)})


def load_state(out: Path, n_params: int) -> SearchState | None:
    """The saved search in `out`, None for a new one; refuses what it must not load."""
    if (out / LEGACY_STATE).exists():
        raise ConfigMismatchError(
            f"{out / LEGACY_STATE} is a pickled search from an earlier version and is never "
            "loaded (unpickling can run code); choose a new --output_dir, or remove "
            f"{LEGACY_STATE} and {LOG} from {out} to start the search over there")
    saved = read_state(out / STATE, n_params)
    if saved is None and (out / LOG).exists():
        raise ConfigMismatchError(f"{out} holds a log but no {STATE}; choose a new --output_dir")
    return saved


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        if args.budget < 1 or args.inner_steps < 1 or not args.sigma0 > 0 or args.popsize < 0:
            raise ValueError("--budget and --inner_steps must be >= 1, --sigma0 > 0, "
                             "--popsize >= 0")
        check_dataset(args.dataset)
        family = make_family(args.family, args.order)
        if args.init not in INIT_PRESETS:
            w_from_file(family, args.init)  # a bad file is refused before the data loads
        out = check_output_dir(args.output_dir)
        saved = load_state(out, family.n_params)
        domains, num_classes = load_domains(args.dataset, args.data_dir, args.seed)
        domains = drop_envs(domains, args.exclude_envs)
        w0 = initial_w(family, args.init, num_classes,
                       torch.Generator().manual_seed(seed_hash(args.seed, "init")))
        config = _config(args, family, w0)
        if saved is not None:
            check_config(saved.config, config)
        n_domains = len(domains)
        popsize = args.popsize or 4 + int(3 * math.log(family.n_params))
        if args.budget < popsize * n_domains:
            raise ValueError(f"--budget {args.budget} is below one generation "
                             f"({popsize} candidates x {n_domains} domains)")
        state = saved or SearchState(config)
        es = replay(lambda: new_strategy(w0.double().numpy(), args.sigma0, popsize, args.seed),
                    state.generations)
        make_output_dir(out)
    except (ValueError, DataUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    remove_temporaries(out, (STATE, LOG, LEARNED))

    cfg = MetaConfig(hidden=tuple(args.hidden), inner_steps=args.inner_steps,
                     inner_lr=args.inner_lr, inner_batch=args.inner_batch,
                     val_batch=args.val_batch, eval_examples=args.eval_examples, seed=args.seed)
    data = make_domain_set(domains, num_classes, cfg.eval_examples, args.seed)
    records = state.records
    rewrite_log(out / LOG, records)
    per_generation = popsize * n_domains
    spent = len(state.generations) * per_generation
    bar = tqdm(total=args.budget, initial=spent, desc="inner trainings", dynamic_ncols=True)
    while spent + per_generation <= args.budget:
        start = time.perf_counter()
        generation = len(records)
        candidates = es.ask()
        scored = [evaluate(data, w, family, cfg, generation, args.fitness) for w in candidates]
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
        atomic_write_bytes(out / STATE, state.to_json().encode())
        rewrite_log(out / LOG, records)
        _, best_w, _ = state.best()
        atomic_write_json(out / LEARNED, family.hparams(torch.tensor(best_w, dtype=torch.float64)))
        bar.update(per_generation)
        best = records[-1]["best_held_out_acc"]
        bar.set_postfix(generation=generation,
                        best_held_out="diverged" if best is None else f"{best:.4f}")
    bar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
