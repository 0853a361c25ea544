"""The accuracy each table reports: one selected run per trial and domain.

Multi-source, DomainBed's own grouping and selection give one test accuracy per (dataset,
algorithm, trial seed, test environment). Single-source, records are grouped by (dataset,
algorithm, trial seed, source) and the selected run gives one accuracy per target, keyed by
(source, target). Every table cell is then a mean over some of these keys, per trial.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from domainbed import datasets, model_selection
from domainbed.lib import reporting
from domainbed.lib.query import Q
from domainbed_itl.tables.grid import JobGrid
from domainbed_itl.tables.kinds import training_envs

Key = Any  # a test environment (multi-source) or a (source, target) pair (single-source)


@dataclass(frozen=True)
class DomainGroup:
    """A column of a per-domain table: its label, its keys, and which jobs it depends on."""

    label: str
    keys: list[Key]
    relevant: Callable[[tuple[int, ...]], bool]


@dataclass
class Scores:
    single_source: bool
    selection_name: str
    accs: dict[tuple[str, str, int, Key], float]
    env_names: dict[str, list[str]]
    trials: dict[str, list[int]]
    algorithms: list[str]
    datasets: list[str]
    grid: JobGrid

    def per_trial(self, dataset: str, algorithm: str, keys: Sequence[Key]) -> dict[int, float]:
        """trial seed -> mean accuracy over `keys`, for the trials that have every key."""
        out = {}
        for trial in self.trials[dataset]:
            values = [self.accs.get((dataset, algorithm, trial, key)) for key in keys]
            if values and all(value is not None for value in values):
                out[trial] = float(np.mean(values))
        return out

    def domain_groups(self, dataset: str) -> list[DomainGroup]:
        """The per-domain columns: test environments, or sources with their targets."""
        names = self.env_names[dataset]
        envs = range(len(names))
        if not self.single_source:
            return [
                DomainGroup(names[env], [env], lambda test_envs, env=env: env in test_envs)
                for env in envs
            ]
        return [
            DomainGroup(
                names[source],
                [(source, target) for target in envs if target != source],
                lambda test_envs, source=source: source not in test_envs,
            )
            for source in envs
        ]

    def all_keys(self, dataset: str) -> list[Key]:
        return [key for group in self.domain_groups(dataset) for key in group.keys]


def _scores(records: Q, single_source: bool, name: str, accs: dict) -> Scores:
    """The columns are the registry's environments: the reader keeps no record of a dataset
    it does not know, nor one that reports another number of environments."""
    trials: dict[str, set[int]] = defaultdict(set)
    for record in records:
        trials[record["args"]["dataset"]].add(record["args"]["trial_seed"])
    return Scores(
        single_source=single_source,
        selection_name=name,
        accs=accs,
        env_names={
            dataset: list(datasets.get_dataset_class(dataset).ENVIRONMENTS) for dataset in trials
        },
        trials={dataset: sorted(seeds) for dataset, seeds in trials.items()},
        algorithms=list(records.select("args.algorithm").unique()),
        datasets=list(records.select("args.dataset").unique()),
        grid=JobGrid(records, single_source),
    )


def multi_source_scores(records: Q, method: type[model_selection.SelectionMethod]) -> Scores:
    accs = {}
    for group in reporting.get_grouped_records(records):
        acc = method.sweep_acc(group["records"])
        if acc is not None:
            key = (group["dataset"], group["algorithm"], group["trial_seed"], group["test_env"])
            accs[key] = acc
    return _scores(records, False, method.name, accs)


def single_source_scores(records: Q, method: type[model_selection.SelectionMethod]) -> Scores:
    """Scores of the records with exactly one training environment (the others are ignored)."""
    records = records.filter(lambda record: len(training_envs(record)) == 1)
    accs = {}
    by_run = records.group(
        lambda r: (
            r["args"]["dataset"], r["args"]["algorithm"], r["args"]["trial_seed"],
            training_envs(r)[0],
        )
    )
    for (dataset, algorithm, trial, source), members in by_run:
        ranked = method.hparams_accs(members)
        if len(ranked):
            for target, acc in ranked[0][0]["target_accs"].items():
                accs[(dataset, algorithm, trial, (source, target))] = acc
    return _scores(records, True, method.name, accs)
