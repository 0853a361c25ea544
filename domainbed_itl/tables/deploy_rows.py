"""The rows of Tables 5 and 6: one per fixed loss, one per learned loss over its meta seeds.

A fixed loss (cross-entropy, the published ITL) has one accuracy per (column, trial seed). A
learned loss has one per (column, meta-training seed, trial seed): each meta seed gives another
loss, and each is deployed with every trial seed. Two summaries follow from that:

- over meta seeds (Table 5, whose +/- the paper gives over meta-train seeds): each seed's mean
  over its trial seeds, then mean and standard deviation over seeds;
- over trial seeds (Table 6, paired differences): per trial seed, the mean over meta seeds, so
  a learned row pairs with a fixed one on the same trial seed, dataset and test environment.

A column is a (dataset, test environment); Avg is the mean over columns of the same seed (or
trial), taken only where that seed (trial) has every column. Nothing is imputed: the runs of
the grid (meta seeds x trial seeds per column) that left no record are counted as missing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from domainbed.lib.results_tables import format_mean
from domainbed_itl.losses.families import FAMILIES
from domainbed_itl.tables.deploy_records import CE, PUBLISHED_ITL, MetaRun, Run

Column = tuple[str, int]  # (dataset, test environment)


def family_name(name: str) -> str:
    """How the tables name a loss learned in family `name` (records may name a family this
    installation lacks: then its own name)."""
    return FAMILIES[name].display_name if name in FAMILIES else name


def deployed_by(name: str) -> str | None:
    """The algorithm that deploys a loss learned in family `name` (None if not installed)."""
    return FAMILIES[name].algorithm if name in FAMILIES else None


@dataclass
class Row:
    label: str
    learned: MetaRun | None = None  # one of the row's meta-trainings, for its description
    # (column, meta seed or None, trial seed) -> test accuracy
    accs: dict[tuple[Column, int | None, int], float] = field(default_factory=dict)
    seen: set[Column] = field(default_factory=set)
    excluded: set[tuple[int, ...]] = field(default_factory=set)

    @property
    def seeds(self) -> list[int | None]:
        """The meta seeds of a learned row; [None] for a fixed loss."""
        return sorted({seed for _, seed, _ in self.accs}, key=lambda s: (s is None, s))

    def _trial_values(self, column: Column, trial: int) -> list[float]:
        return [acc for (c, _, t), acc in self.accs.items() if c == column and t == trial]

    def _seed_values(self, column: Column, seed: int | None) -> list[float]:
        return [acc for (c, s, _), acc in self.accs.items() if c == column and s == seed]

    def per_trial(self, columns: Sequence[Column], trials: Iterable[int]) -> dict[int, float]:
        """trial seed -> mean over `columns` of the mean over meta seeds, for the trials that
        have every column."""
        out = {}
        for trial in trials:
            means = [self._trial_values(column, trial) for column in columns]
            if all(means):
                out[trial] = float(np.mean([np.mean(values) for values in means]))
        return out

    def per_seed(self, columns: Sequence[Column]) -> dict[int | None, float]:
        """meta seed -> mean over `columns` of the seed's mean over trial seeds, for the seeds
        that have every column."""
        out = {}
        for seed in self.seeds:
            means = [self._seed_values(column, seed) for column in columns]
            if all(means):
                out[seed] = float(np.mean([np.mean(values) for values in means]))
        return out

    def missing(self, columns: Sequence[Column], trials: Sequence[int]) -> int:
        return sum((column, seed, trial) not in self.accs
                   for column in columns for seed in self.seeds for trial in trials)

    def marks(self, columns: Sequence[Column]) -> str:
        return " (seen)" if self.seen.intersection(columns) else ""


def spread_text(values: Sequence[float], latex: bool) -> str:
    """Mean +/- population standard deviation (ddof 0, as the project's standard errors), in
    percent; "X" for none."""
    if not values:
        return "X"
    plus_minus = "$\\pm$" if latex else "+/-"
    return f"{100 * np.mean(values):.1f} {plus_minus} {100 * np.std(values):.1f}"


def seed_cell(row: Row, columns: Sequence[Column], trials: Sequence[int], latex: bool) -> str:
    """Table 5's cell of a learned row: over meta seeds."""
    text = spread_text(list(row.per_seed(columns).values()), latex)
    return text + _missing(row.missing(columns, trials)) + row.marks(columns)


def trial_cell(row: Row, columns: Sequence[Column], trials: Sequence[int], latex: bool) -> str:
    """Mean +/- standard error over trial seeds (a learned row's averaged over meta seeds)."""
    text = format_mean(list(row.per_trial(columns, trials).values()), latex)[2]
    return text + _missing(row.missing(columns, trials)) + row.marks(columns)


def _missing(count: int) -> str:
    return f" [{count} missing]" if count else ""


def label(meta: MetaRun) -> str:
    return f"{family_name(meta.family)} ({meta.dataset})"


def describe(row: Row) -> str:
    """Where a learned row's losses come from, for the notes under a table."""
    meta = row.learned
    assert meta is not None
    order = f" of order {meta.order}" if meta.order is not None else ""
    excluded = ("; ".join(f"without env {', '.join(map(str, envs))}" if envs
                          else "on every environment" for envs in sorted(row.excluded)))
    seeds = " ".join(str(seed) for seed in row.seeds)
    return (f"{row.label}: the {meta.family} loss{order} meta-learned on {meta.dataset} "
            f"({excluded}) for {meta.outer_steps} outer steps, meta-training seeds {seeds}.")


def _disambiguate(rows: list[Row]) -> None:
    """Learned rows whose labels collide (same family and dataset) get the settings that tell
    them apart: the order, the outer steps, or both."""
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row.label].append(row)
    for same in by_label.values():
        metas = [row.learned for row in same if row.learned is not None]
        if len(metas) < 2:
            continue
        vary_order = len({meta.order for meta in metas}) > 1
        vary_steps = len({meta.outer_steps for meta in metas}) > 1
        for row, meta in zip(same, metas, strict=True):
            parts = [meta.dataset]
            if vary_order:
                parts.append(f"order {meta.order}")
            if vary_steps:
                parts.append(f"{meta.outer_steps} outer steps")
            row.label = f"{family_name(meta.family)} ({', '.join(parts)})"


def build_rows(runs: Iterable[Run]) -> tuple[list[Row], list[Row]]:
    """(fixed-loss rows: CE, the published ITL, then others by name; learned rows, by label)."""
    fixed: dict[str, Row] = {}
    learned: dict[tuple, Row] = {}
    for run in runs:
        column = (run.dataset, run.test_env)
        if run.meta is None:
            row = fixed.setdefault(run.loss, Row(run.loss))
            row.accs[(column, None, run.trial_seed)] = run.test_acc
            continue
        row = learned.setdefault(run.meta.group, Row(label(run.meta), run.meta))
        row.accs[(column, run.meta.seed, run.trial_seed)] = run.test_acc
        row.excluded.add(run.meta.exclude_envs)
        if run.seen:
            row.seen.add(column)
    first = [name for name in (CE, PUBLISHED_ITL) if name in fixed]
    fixed_rows = [fixed[name] for name in first + sorted(set(fixed) - set(first))]
    learned_rows = list(learned.values())
    _disambiguate(learned_rows)
    return fixed_rows, sorted(learned_rows, key=lambda row: row.label)
