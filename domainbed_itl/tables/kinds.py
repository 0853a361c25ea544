"""Which protocol a record comes from: multi-source (DomainBed's) or single-source DG.

A record does not say which sweep wrote it; its training environments do. A job trained on more
than one environment is multi-source. A job trained on one environment with three or more test
environments can only come from a single-source sweep. A job with one training environment and
at most two test environments is ambiguous: on a 3-environment dataset a leave-one-domain-out
pair run of a multi-source sweep (test envs {i, j}) is exactly the single-source job of the
third environment, and on a 2-environment dataset a single-test-env run is a single-source job.
Such records are accepted by both kinds of table; each table then uses them its own way
(DomainBed's selection methods decide for the multi-source tables, the single-source tables
take every record with one training environment).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from domainbed.lib.cli import UsageError

MULTI = "multi-source"
SINGLE = "single-source"
EITHER = "either"


class TableError(UsageError):
    """A request that cannot give a table; the CLI prints it on one line and exits with 2."""


def env_count(record: dict[str, Any]) -> int:
    """How many environments a record reports (env0_out_acc, env1_out_acc, ...)."""
    count = 0
    while f"env{count}_out_acc" in record:
        count += 1
    return count


def training_envs(record: dict[str, Any]) -> list[int]:
    test_envs = set(record["args"]["test_envs"])
    return [env for env in range(env_count(record)) if env not in test_envs]


def kind(record: dict[str, Any]) -> str:
    """MULTI, SINGLE or EITHER, by the rule in the module docstring."""
    n_train = len(training_envs(record))
    if n_train > 1:
        return MULTI
    if n_train == 1 and len(record["args"]["test_envs"]) >= 3:
        return SINGLE
    return EITHER


def require_kind(records: Iterable[dict[str, Any]], wanted: str, table: str) -> None:
    """Raise TableError if any record is of the other kind than `wanted` (MULTI or SINGLE)."""
    other = SINGLE if wanted == MULTI else MULTI
    for record in records:
        if kind(record) == other:
            args = record["args"]
            raise TableError(
                f"table {table} reads {wanted} sweeps, but the input also holds {other} runs "
                f"(e.g. {args['dataset']} {args['algorithm']} test_envs={args['test_envs']}); "
                "give the sweep directories of one kind only"
            )


def pair_only_datasets(records: Iterable[dict[str, Any]]) -> list[str]:
    """Datasets without a single-test-env run: a 3-env single-source sweep looks like this."""
    seen: dict[str, bool] = {}
    for record in records:
        dataset = record["args"]["dataset"]
        seen[dataset] = seen.get(dataset, False) or len(record["args"]["test_envs"]) == 1
    return [dataset for dataset, has_single in seen.items() if not has_single]
