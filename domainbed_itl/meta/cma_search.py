"""The CMA-ES baseline as a library: the optimizer of a fresh search and the fitness of a
candidate loss.

A candidate w is evaluated with exactly the inner loops the implicit-gradient trainer runs
(`outer.leave_one_domain_out` without hypergradients), so both optimisers spend the same
currency: one inner training per held-out domain. All candidates of a generation share the
same seeds (common random numbers), so they are ranked on equal terms, and each candidate's
evaluation is a pure function of its arguments (a Ray task computes the same numbers).
"""

from __future__ import annotations

import math

import cma
import numpy as np
import torch

from domainbed.lib.misc import seed_hash
from domainbed_itl.meta.families import LossFamily
from domainbed_itl.meta.outer import DomainSet, MetaConfig, leave_one_domain_out

FITNESS = ("ce", "error")
# Fitness of a candidate whose inner loops diverged: worse than any finite outcome.
DIVERGED = 1e6


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


def new_strategy(start: np.ndarray, sigma0: float, popsize: int,
                 seed: int) -> cma.CMAEvolutionStrategy:
    """The optimizer of a fresh search. It samples from its own generator (the same stream
    pycma's `seed` option would put into numpy's global one), so nothing else that draws from
    numpy can shift it, and a replay reproduces it exactly."""
    rng = np.random.RandomState(seed_hash(seed, "cma") % 2**31 + 1)
    return cma.CMAEvolutionStrategy(start, sigma0, {
        "popsize": popsize, "seed": np.nan, "randn": rng.randn, "verbose": -9,
        "CMA_stds": np.maximum(np.abs(start), 1.0)})
