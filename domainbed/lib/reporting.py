"""Reading a sweep's results back.

A sweep directory holds one subdirectory per job, each with a `results.jsonl` of one JSON
record per evaluation. Jobs get killed, disks fill up and files get edited by hand, so a line
that does not parse, or a record without the fields model selection needs, is skipped with a
warning on stderr that names the file and line; the rest of the sweep still counts.

Every record that gets through has what model selection and the tables read, of the type they
read it as: a numeric `step`, an `hparams` object, string `dataset` and `algorithm`, integer
seeds, and an in- and out-split accuracy for each environment it reports (env0, env1, ... up
to the first without `_out_acc`), with `test_envs` distinct environments among those. Its
dataset is one of the registry's (`domainbed.datasets`) and it reports exactly that dataset's
environments: a table's columns and its grid of expected jobs come from the registry, and a
record that disagrees with it would change them.

A planted or damaged file must not stop a table either: a line longer than `MAX_LINE_CHARS` is
skipped without being read whole, a line nested too deeply for the parser is skipped, and each
file warns about its first `WARNINGS_PER_FILE` skipped lines, then once about how many more.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

import numpy as np
import tqdm

from domainbed import datasets
from domainbed.lib.query import Q
from domainbed.lib.run_dir import RESULTS

# A record is about a kilobyte (1.3 KB for a 6-environment dataset); a thousand times that is no
# record, and parsing it would cost seconds and gigabytes.
MAX_LINE_CHARS = 1 << 20
WARNINGS_PER_FILE = 20


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


def is_int(value: Any) -> bool:
    """An integer that JSON wrote as one (a bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


# A field's test and what the test asks for, by field name.
FieldRules = Mapping[str, tuple[Callable[[Any], bool], str]]


def field_problem(fields: Mapping[str, Any], rules: FieldRules, prefix: str = "") -> str | None:
    """Why `fields` fails `rules` (the first field missing or failing its test), or None."""
    for key, (valid, what) in rules.items():
        if key not in fields:
            return f"has no {prefix}{key}"
        if not valid(fields[key]):
            return f"has {prefix}{key} that is not {what}: {fields[key]!r}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_env_list(value: Any) -> bool:
    return (isinstance(value, list) and bool(value) and all(is_int(env) for env in value)
            and len(set(value)) == len(value))


# The args that group records, each with its test and what the test asks for.
_ARG_RULES: FieldRules = {
    "dataset": (lambda value: isinstance(value, str), "a string"),
    "algorithm": (lambda value: isinstance(value, str), "a string"),
    "test_envs": (_is_env_list, "a list of distinct integers"),
    "trial_seed": (is_int, "an integer"),
    "hparams_seed": (is_int, "an integer"),
}


def reported_envs(record: dict[str, Any]) -> int:
    """How many environments a record reports: env0, env1, ... up to the first without an
    out-split accuracy."""
    count = 0
    while f"env{count}_out_acc" in record:
        count += 1
    return count


def _problem(record: Any) -> str | None:
    """Why `record` cannot be used for model selection, or None if it can."""
    if not isinstance(record, dict):
        return "is not a JSON object"
    args = record.get("args")
    if not isinstance(args, dict):
        return "has no 'args' object"
    problem = field_problem(args, _ARG_RULES, "args.")
    if problem is not None:
        return problem
    if args["dataset"] not in datasets.DATASETS:
        return f"names a dataset not registered here: {args['dataset']!r}"
    if not _is_number(record.get("step")):
        return "has no numeric 'step'"
    if not isinstance(record.get("hparams"), dict):
        return "has no 'hparams' object"
    n_envs = reported_envs(record)
    if n_envs == 0:
        return "reports no accuracy (no env0_out_acc)"
    registered = datasets.num_environments(args["dataset"])
    if n_envs != registered:
        return f"reports {n_envs} environments, but {args['dataset']} has {registered}"
    for env in range(n_envs):
        for key in (f"env{env}_in_acc", f"env{env}_out_acc"):
            if not _is_number(record.get(key)):
                return f"has no numeric {key}"
    outside = [env for env in args["test_envs"] if not 0 <= env < n_envs]
    if outside:
        return f"has args.test_envs {outside} outside the {n_envs} environments it reports"
    return None


def _bounded_lines(handle: TextIO) -> Iterator[str | None]:
    """Each line of `handle`, its newline kept (the last line may have none); None for a line
    over `MAX_LINE_CHARS`, which is read in pieces and dropped, never held whole."""
    while line := handle.readline(MAX_LINE_CHARS + 1):
        if len(line) <= MAX_LINE_CHARS or line.endswith("\n"):
            yield line
            continue
        while line and not line.endswith("\n"):
            line = handle.readline(MAX_LINE_CHARS)
        yield None


def _line_problem(line: str | None) -> tuple[Any, str | None]:
    """(the line's JSON value, None), or (None, why the line was not parsed)."""
    if line is None:
        return None, f"a line longer than {MAX_LINE_CHARS} characters"
    try:
        return json.loads(line), None
    except RecursionError:
        return None, "a line nested too deeply to parse"
    except ValueError:
        return None, "a malformed line" if line.endswith("\n") else "a truncated last line"


def read_jsonl_records(path: str, problem: Callable[[Any], str | None]) -> list[Any]:
    """The usable records of one JSON-lines file, in file order: a line that does not parse,
    is too long, or whose record `problem` explains, is skipped with a warning naming the file
    and line."""
    records = []
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(_bounded_lines(handle), start=1):
            if line is not None and not line.strip():
                continue
            record, reason = _line_problem(line)
            if reason is None and (why := problem(record)) is not None:
                reason = f"a record that {why}"
            if reason is None:
                records.append(record)
                continue
            skipped += 1
            if skipped <= WARNINGS_PER_FILE:
                _warn(f"{path}:{number}: skipped {reason}")
    if skipped > WARNINGS_PER_FILE:
        more = skipped - WARNINGS_PER_FILE
        _warn(f"{path}: skipped {more} more line{'s' * (more > 1)} like these")
    return records


def read_results_file(path: str) -> list[dict[str, Any]]:
    """The usable records of one results.jsonl, in file order."""
    return read_jsonl_records(path, _problem)


def load_records(path: str) -> Q:
    """Every usable record of every job directory directly under `path`.

    Hidden entries (names starting with '.') are ignored: the sweep uses them for job
    directories it is in the middle of deleting. So is a `results.jsonl` that is no regular
    file (a FIFO would block the reader), and one that cannot be read is skipped with a warning.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no sweep directory at {path}")
    records: list[dict[str, Any]] = []
    subdirs = sorted(name for name in os.listdir(path) if not name.startswith("."))
    for name in tqdm.tqdm(subdirs, ncols=80, leave=False, disable=None):
        results_path = os.path.join(path, name, RESULTS)
        if os.path.isfile(results_path):
            try:
                records.extend(read_results_file(results_path))
            except OSError as err:
                _warn(f"{results_path}: skipped, unreadable: {err.strerror or err}")
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
