"""Model selection by name, and its single-source form.

Multi-source tables use DomainBed's own selection methods unchanged. A single-source run has
one training environment s and reports every other environment as a target, so the methods are
adapted here, on top of `SelectionMethod`'s ranking of hyperparameter seeds (same tie rules):

- training-domain validation: the checkpoint with the best accuracy on s's held-out (out) split;
- oracle: the last checkpoint, hyperparameters ranked by the targets' mean out-split accuracy;
- leave-one-domain-out has no other training domain to hold out, so it does not apply.

Their `run_acc` also returns `target_accs`, the in-split accuracy of each target, which is what
Tables 4 and 10 report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from domainbed import model_selection
from domainbed.lib.query import Q
from domainbed_itl.tables.kinds import TableError, training_envs

MULTI_SOURCE = {
    "training_domain": model_selection.IIDAccuracySelectionMethod,
    "leave_one_domain_out": model_selection.LeaveOneOutSelectionMethod,
    "oracle": model_selection.OracleSelectionMethod,
}


def _step_accs(record: dict[str, Any], val_acc: float) -> dict[str, Any]:
    targets = record["args"]["test_envs"]
    target_accs = {env: record[f"env{env}_in_acc"] for env in targets}
    return {
        "val_acc": val_acc,
        "test_acc": float(np.mean(list(target_accs.values()))),
        "target_accs": target_accs,
    }


class SourceValidation(model_selection.SelectionMethod):
    """Training-domain validation with one training domain: its held-out split."""

    name = "training-domain validation set (the source domain's held-out split)"

    @classmethod
    def run_acc(cls, run_records: Q) -> dict[str, Any] | None:
        if not len(run_records):
            return None
        return run_records.map(
            lambda record: _step_accs(record, record[f"env{training_envs(record)[0]}_out_acc"])
        ).argmax("val_acc")


class TargetOracle(model_selection.SelectionMethod):
    """Test-domain validation: the targets' held-out splits at the last checkpoint."""

    name = "test-domain validation set (oracle: the target domains' held-out splits)"

    @classmethod
    def run_acc(cls, run_records: Q) -> dict[str, Any] | None:
        if not len(run_records):
            return None
        last = run_records.sorted(key=lambda record: record["step"])[-1]
        val = float(np.mean([last[f"env{env}_out_acc"] for env in last["args"]["test_envs"]]))
        return _step_accs(last, val)


SINGLE_SOURCE = {"training_domain": SourceValidation, "oracle": TargetOracle}


def single_source_method(name: str) -> type[model_selection.SelectionMethod]:
    if name not in SINGLE_SOURCE:
        raise TableError(
            f"--selection {name} does not apply to single-source tables: with one training "
            "domain there is no other training domain to hold out; use --selection "
            "training_domain or oracle"
        )
    return SINGLE_SOURCE[name]
