"""The jobs a sweep should have, to count the missing ones per table cell.

Records do not say how many trials or hyperparameter seeds the sweep was launched with, so the
grid is inferred per dataset: every trial seed seen for that dataset (any algorithm) x every
hyperparameter seed seen x every test-environment set of the protocol, over the environments the
dataset registry gives it (a record cannot add any: the reader skips one that reports another
number, `domainbed.lib.reporting`). The protocol's sets are,
multi-source, each single test environment, and each pair when any pair run of that dataset is
present (a full sweep for leave-one-domain-out; `--single_test_envs` sweeps have none);
single-source, "all environments but s" for every environment s. Sets seen in the data are added.
A job is present when it left at least one usable record (an interrupted job counts with the
checkpoints it reached, as in DomainBed); every other job of the grid is missing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import combinations
from typing import Any

from domainbed import datasets

Job = tuple[int, int, tuple[int, ...]]  # trial seed, hyperparameter seed, test environments


def _job(record: dict[str, Any]) -> Job:
    args = record["args"]
    return args["trial_seed"], args["hparams_seed"], tuple(sorted(args["test_envs"]))


def protocol_env_sets(n_envs: int, single_source: bool, with_pairs: bool) -> set[tuple[int, ...]]:
    envs = range(n_envs)
    if single_source:
        return {tuple(env for env in envs if env != source) for source in envs}
    sets = {(env,) for env in envs}
    if with_pairs:
        sets |= set(combinations(envs, 2))
    return sets


class JobGrid:
    """Expected jobs per dataset and present jobs per (dataset, algorithm)."""

    def __init__(self, records: Iterable[dict[str, Any]], single_source: bool):
        present: dict[tuple[str, str], set[Job]] = defaultdict(set)
        trials, hparams, sets = defaultdict(set), defaultdict(set), defaultdict(set)
        for record in records:
            dataset, algorithm = record["args"]["dataset"], record["args"]["algorithm"]
            trial, hseed, test_envs = _job(record)
            present[(dataset, algorithm)].add((trial, hseed, test_envs))
            trials[dataset].add(trial)
            hparams[dataset].add(hseed)
            sets[dataset].add(test_envs)
        self.expected: dict[str, set[Job]] = {}
        for dataset, seen in sets.items():
            with_pairs = any(len(test_envs) == 2 for test_envs in seen)
            n_envs = datasets.num_environments(dataset)
            all_sets = seen | protocol_env_sets(n_envs, single_source, with_pairs)
            self.expected[dataset] = {
                (trial, hseed, test_envs)
                for trial in trials[dataset]
                for hseed in hparams[dataset]
                for test_envs in all_sets
            }
        self.present = dict(present)

    def missing(
        self,
        dataset: str,
        algorithm: str,
        relevant: Callable[[tuple[int, ...]], bool] = lambda _test_envs: True,
    ) -> int:
        """How many expected jobs of (dataset, algorithm) with `relevant` test envs are absent."""
        have = self.present.get((dataset, algorithm), set())
        return sum(
            1 for job in self.expected.get(dataset, ()) if relevant(job[2]) and job not in have
        )
