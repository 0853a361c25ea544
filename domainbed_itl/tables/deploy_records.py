"""The records of deployment runs, the input of Tables 5 and 6.

`scripts.deploy` (the meta-learner's MLP) and `scripts.compare_losses` (DomainBed's ERM) write a
`records.jsonl` with one JSON line per (loss, dataset, test environment, trial seed) training
run; a learned loss's line names the meta-training it came from (`meta`). As with sweep results,
a killed writer or a hand edit can leave a line that does not parse or lacks a field: it is
skipped with a warning naming file and line, and the rest still counts.

Runs are only comparable under one training protocol, so they are split into blocks by
(protocol, steps, settings) and each table is printed once per block, never mixing them in a
cell. Reading the same directory twice gives the same runs twice, which are counted once; two
different results for one run (same block, loss, dataset, test environment, trial and meta
seed) are refused, since no cell could say which one it shows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from domainbed.lib.reporting import field_problem, is_int, read_jsonl_records
from domainbed_itl.tables.kinds import TableError

RECORDS_FILE = "records.jsonl"
CE = "CE"
PUBLISHED_ITL = "ITL (Table 8)"


@dataclass(frozen=True)
class Block:
    """The training protocol shared by every run of one table."""

    protocol: str
    steps: int
    settings: str  # canonical JSON

    def describe(self) -> str:
        return f"protocol {self.protocol}, {self.steps} training steps per run"


@dataclass(frozen=True)
class MetaRun:
    """The meta-training a learned loss came from."""

    dataset: str
    family: str
    order: int | None
    outer_steps: int
    seed: int
    exclude_envs: tuple[int, ...]
    run_dir: str

    @property
    def group(self) -> tuple[str, str, int | None, int]:
        """What makes two meta-training seeds replicates of one learned loss. The excluded
        environments are not part of it: leave-one-out meta-training excludes each test
        environment in turn, and `Run.seen` flags a loss deployed where it was meta-trained."""
        return (self.dataset, self.family, self.order, self.outer_steps)


@dataclass(frozen=True)
class Run:
    block: Block
    dataset: str
    test_env: int
    trial_seed: int
    loss: str
    meta: MetaRun | None
    test_acc: float

    @property
    def identity(self) -> tuple[Any, ...]:
        """Two records with this in common describe the same training run."""
        loss = self.loss if self.meta is None else (self.meta.group, self.meta.seed)
        return (self.block, self.dataset, self.test_env, self.trial_seed, loss)

    @property
    def seen(self) -> bool:
        """A learned loss tested on an environment it was meta-trained on."""
        meta = self.meta
        return (meta is not None and meta.dataset == self.dataset
                and self.test_env not in meta.exclude_envs)


def _is_accuracy(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and 0 <= value <= 1)


_FIELDS = {
    "protocol": (lambda v: isinstance(v, str), "a string"),
    "dataset": (lambda v: isinstance(v, str), "a string"),
    "loss": (lambda v: isinstance(v, str), "a string"),
    "test_env": (lambda v: is_int(v) and v >= 0, "an environment number"),
    "trial_seed": (is_int, "an integer"),
    "steps": (lambda v: is_int(v) and v > 0, "a positive integer"),
    "test_acc": (_is_accuracy, "an accuracy in [0, 1]"),
    "settings": (lambda v: v is None or isinstance(v, dict), "an object"),
}
_META_FIELDS = {
    "dataset": (lambda v: isinstance(v, str), "a string"),
    "family": (lambda v: isinstance(v, str), "a string"),
    "order": (lambda v: v is None or is_int(v), "an integer or null"),
    "outer_steps": (is_int, "an integer"),
    "seed": (is_int, "an integer"),
    # None: a meta-training run on every environment (meta_train records no empty list)
    "exclude_envs": (lambda v: v is None or (isinstance(v, list) and all(map(is_int, v))),
                     "a list of integers or null"),
    "run_dir": (lambda v: isinstance(v, str), "a string"),
}


def _problem(record: Any) -> str | None:
    """Why `record` cannot be used, or None if it can."""
    if not isinstance(record, dict):
        return "is not a JSON object"
    problem = field_problem(record, _FIELDS)
    if problem is not None:
        return problem
    meta = record.get("meta")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        return "has a 'meta' that is neither null nor an object"
    return field_problem(meta, _META_FIELDS, "meta.")


def _run(record: dict[str, Any]) -> Run:
    meta = record["meta"]
    block = Block(record["protocol"], record["steps"],
                  json.dumps(record["settings"] or {}, sort_keys=True))
    return Run(
        block=block,
        dataset=record["dataset"],
        test_env=record["test_env"],
        trial_seed=record["trial_seed"],
        loss=record["loss"],
        meta=None if meta is None else MetaRun(
            meta["dataset"], meta["family"], meta["order"], meta["outer_steps"], meta["seed"],
            tuple(sorted(meta["exclude_envs"] or [])), meta["run_dir"]),
        test_acc=float(record["test_acc"]),
    )


def read_records_file(path: str) -> list[Run]:
    """The usable runs of one records.jsonl, in file order."""
    return [_run(record) for record in read_jsonl_records(path, _problem)]


def records_files(root: str) -> list[str]:
    """Every records.jsonl under `root` that is a regular file (a FIFO would block the
    reader), hidden directories left out."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(name for name in subdirs if not name.startswith("."))
        path = os.path.join(directory, RECORDS_FILE)
        if RECORDS_FILE in files and os.path.isfile(path):
            found.append(path)
    return found


def unique(runs: Iterable[Run]) -> list[Run]:
    """Each run once; TableError if one run has two different results."""
    by_identity: dict[tuple[Any, ...], Run] = {}
    for run in runs:
        other = by_identity.setdefault(run.identity, run)
        if other != run:
            where = f"{run.dataset} env {run.test_env}, trial {run.trial_seed}"
            what = run.loss
            if run.meta is not None and other.meta is not None:
                sources = sorted({run.meta.run_dir, other.meta.run_dir})
                what = f"meta seed {run.meta.seed}'s loss from {' and '.join(sources)}"
            raise TableError(
                f"two different results for one run ({what}, {where}, {run.block.describe()}); "
                "give the directories of one experiment only"
            )
    return list(by_identity.values())


def load(input_dirs: list[str]) -> list[Run]:
    """Every run recorded under the directories; TableError if there is none."""
    runs: list[Run] = []
    for root in input_dirs:
        if not os.path.isdir(root):
            raise TableError(f"no directory at {root}")
        for path in records_files(root):
            runs.extend(read_records_file(path))
    if not runs:
        raise TableError(
            f"no deployment records ({RECORDS_FILE}) under {', '.join(input_dirs)}: run "
            "scripts.deploy (or compare_losses) first, or give the directory it wrote"
        )
    return unique(runs)


def blocks(runs: Iterable[Run]) -> dict[Block, list[Run]]:
    """The runs of each training protocol, by protocol, steps and settings."""
    out: dict[Block, list[Run]] = {}
    for run in runs:
        out.setdefault(run.block, []).append(run)
    return {block: out[block] for block in sorted(out, key=lambda b: (b.protocol, b.steps,
                                                                       b.settings))}
