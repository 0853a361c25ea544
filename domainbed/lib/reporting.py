"""Reading a sweep's results back.

A sweep directory holds one subdirectory per job, each with a `results.jsonl` of one JSON
record per evaluation. Jobs get killed, disks fill up and files get edited by hand, so a line
that does not parse, or a record without the fields model selection needs, is skipped with a
warning on stderr that names the file and line; the rest of the sweep still counts.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from typing import Any

import numpy as np
import tqdm

from domainbed.lib.query import Q

RESULTS_FILE = "results.jsonl"
_REQUIRED_ARGS = ("dataset", "algorithm", "test_envs", "trial_seed", "hparams_seed")


def standard_error(values: Any) -> float:
    """The standard error every table of this project reports: DomainBed's definition.

    Population standard deviation (ddof 0) over sqrt(n), so that our tables and the public
    DomainBed's agree digit for digit on the same runs. One value gives 0, not NaN.
    """
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        raise ValueError("standard_error of no values")
    return float(np.std(array) / np.sqrt(array.size))


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _problem(record: Any) -> str | None:
    """Why `record` cannot be used for model selection, or None if it can."""
    if not isinstance(record, dict):
        return "is not a JSON object"
    args = record.get("args")
    if not isinstance(args, dict):
        return "has no 'args' object"
    missing = [key for key in _REQUIRED_ARGS if key not in args]
    if missing:
        return f"has no args.{missing[0]}"
    if not isinstance(args["test_envs"], list) or not args["test_envs"]:
        return "has an empty or non-list args.test_envs"
    if "step" not in record:
        return "has no 'step'"
    return None


def read_results_file(path: str) -> list[dict[str, Any]]:
    """The usable records of one results.jsonl, in file order."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().split("\n")
    last = len(lines) - 1
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            what = "truncated last line" if number - 1 == last else "malformed line"
            _warn(f"{path}:{number}: skipped a {what}")
            continue
        problem = _problem(record)
        if problem is not None:
            _warn(f"{path}:{number}: skipped a record that {problem}")
            continue
        records.append(record)
    return records


def load_records(path: str) -> Q:
    """Every usable record of every job directory directly under `path`.

    Hidden entries (names starting with '.') are ignored: the sweep uses them for job
    directories it is in the middle of deleting.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no sweep directory at {path}")
    records: list[dict[str, Any]] = []
    subdirs = sorted(name for name in os.listdir(path) if not name.startswith("."))
    for name in tqdm.tqdm(subdirs, ncols=80, leave=False, disable=None):
        results_path = os.path.join(path, name, RESULTS_FILE)
        if os.path.isfile(results_path):
            records.extend(read_results_file(results_path))
    return Q(records)


def get_grouped_records(records: Q) -> Q:
    """One group per (trial_seed, dataset, algorithm, test_env).

    A run with two test environments belongs to the group of each of them: leave-one-out
    selection for test env i needs the runs that held out i together with one other env.
    """
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        args = record["args"]
        for test_env in args["test_envs"]:
            key = (args["trial_seed"], args["dataset"], args["algorithm"], test_env)
            groups[key].append(record)
    return Q(
        {
            "trial_seed": trial_seed,
            "dataset": dataset,
            "algorithm": algorithm,
            "test_env": test_env,
            "records": Q(members),
        }
        for (trial_seed, dataset, algorithm, test_env), members in groups.items()
    )
