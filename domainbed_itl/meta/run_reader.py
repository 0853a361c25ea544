"""Meta-training runs read back from their directories for figures over seeds: each run's
settings (from its checkpoint) and per-step accuracies (from its log), found at or below the
given folders, and the check that the runs of one figure differ only where they may.

A figure that mixed settings would draw one setting's curve as another's, so a mix is refused
(a UsageError naming the settings that differ), as is anything that is not a `meta_train` run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from domainbed.lib.cli import UsageError
from domainbed_itl.meta.run_files import CHECKPOINT, LOG
from domainbed_itl.meta.state import CheckpointError, load_checkpoint

# The per-step accuracies a run holds, with their labels in the figures.
SERIES = (("inner_acc", "inner (mean over source domains)"),
          ("held_out_acc", "held-out domain"))


@dataclass(frozen=True)
class Run:
    """One meta-training run's settings and per-step accuracies (NaN where a step has none)."""

    path: Path
    config: dict[str, Any]
    accs: dict[str, np.ndarray]  # "inner_acc" / "held_out_acc" -> one value per outer step

    @property
    def steps(self) -> int:
        return len(self.accs["held_out_acc"])

    @property
    def order(self) -> int | None:
        return (self.config.get("family_spec") or {}).get("order")


def find_runs(paths: Iterable[str]) -> list[Path]:
    """Every run directory (one with a log.jsonl) at or below the paths, each once."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise UsageError(f"no directory at {path}")
        runs = [path] if (path / LOG).is_file() else sorted(p.parent for p in path.rglob(LOG))
        if not runs:
            raise UsageError(f"no meta-training run ({LOG}) at or below {path}")
        found += [run for run in runs if run not in found]
    return found


def _log_records(path: Path) -> list[dict[str, Any]]:
    """The log's records; a line a kill cut short is skipped with a warning, as the tables'
    readers do."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"warning: {path}:{number}: skipped a malformed line", file=sys.stderr)
    return records


def read_run(path: Path) -> Run:
    """The run in `path`; UsageError if it is not a readable `meta_train` run."""
    try:
        saved = load_checkpoint(path / CHECKPOINT, ("config",))
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    if saved is None:
        raise UsageError(f"{path} has no {CHECKPOINT}: not a meta_train run")
    records = _log_records(path / LOG)
    if not records or any("inner_acc" not in r or "held_out_acc" not in r for r in records):
        raise UsageError(f"{path / LOG} is empty or not a meta_train log")
    accs = {key: np.array([np.nan if r[key] is None else float(r[key]) for r in records])
            for key, _ in SERIES}
    return Run(path, saved["config"], accs)


def check_comparable(runs: Sequence[Run], free: Sequence[str]) -> None:
    """UsageError naming every setting, other than the `free` ones, in which runs differ."""
    first = runs[0].config
    for run in runs[1:]:
        differing = sorted(key for key in first.keys() | run.config.keys()
                           if key not in free and first.get(key) != run.config.get(key))
        if differing:
            raise UsageError(f"{runs[0].path} and {run.path} differ in {', '.join(differing)}; "
                             "give the runs of one setting")


def describe(runs: Sequence[Run]) -> str:
    """Dataset, left-out environments, family and seeds, for a figure's caption."""
    config = runs[0].config
    seeds = " ".join(str(seed) for seed in sorted({run.config.get("seed") for run in runs}))
    excluded = config.get("exclude_envs") or []
    without = f" without env {', '.join(map(str, excluded))}" if excluded else ""
    return f"{config.get('dataset')}{without}, {config.get('family')}, seeds {seeds}"
