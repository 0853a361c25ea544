"""Model selection: which (hyperparameters, checkpoint) of a sweep a table reports.

A DG number is only honest if the choice of run never looked at the test domain. Each method
scores every run of one (trial, dataset, algorithm, test env) group with a `val_acc` used to
choose and a `test_acc` that is reported, exactly as the public DomainBed does:

- training-domain validation: the mean out-split accuracy of the training envs, best checkpoint;
- leave-one-domain-out: the in-split accuracy on env j of the run trained with test envs {i, j},
  averaged over every j != i, at each checkpoint step; needs the two-test-env runs of a full sweep;
- oracle: the test env's own out-split accuracy at the last checkpoint (no early stopping). It
  peeks at the test domain and is labelled as such.

Records are the dicts of `results.jsonl`; `val_acc`/`test_acc` are fractions in [0, 1].
"""

from __future__ import annotations

import numpy as np

from domainbed.lib.query import Q
from domainbed.lib.reporting import reported_envs

RunAcc = dict[str, float]


def single_test_env_records(records: Q) -> Q:
    """The records of runs that held out one environment only (the ones a table reports)."""
    return records.filter(lambda record: len(record["args"]["test_envs"]) == 1)


class SelectionMethod:
    """A strategy for choosing among hyperparameters and checkpoints; used through its class."""

    name: str = ""

    def __init__(self) -> None:
        raise TypeError("selection methods are used as classes, not instances")

    @classmethod
    def run_acc(cls, run_records: Q) -> RunAcc | None:
        """{val_acc, test_acc} of the chosen checkpoint of one hyperparameter setting, or None."""
        raise NotImplementedError

    @classmethod
    def hparams_accs(cls, records: Q) -> Q:
        """(run_acc, run records) per hyperparameter seed, best validation accuracy first.

        Ties keep the public DomainBed's order: an ascending stable sort, then reversed, so of
        equal scores the larger hyperparameter seed comes first.
        """
        scored = (
            records.group("args.hparams_seed")
            .map(lambda _seed, run_records: (cls.run_acc(run_records), run_records))
            .filter(lambda pair: pair[0] is not None)
        )
        return scored.sorted(key=lambda pair: pair[0]["val_acc"])[::-1]

    @classmethod
    def sweep_acc(cls, records: Q) -> float | None:
        """The test accuracy of the best-validated run of one group, or None if none qualifies."""
        ranked = cls.hparams_accs(records)
        return ranked[0][0]["test_acc"] if len(ranked) else None


class OracleSelectionMethod(SelectionMethod):
    """Test-domain validation: the last checkpoint, scored on the test env's out split."""

    name = "test-domain validation set (oracle)"

    @classmethod
    def run_acc(cls, run_records: Q) -> RunAcc | None:
        run_records = single_test_env_records(run_records)
        if not len(run_records):
            return None
        test_env = run_records[0]["args"]["test_envs"][0]
        last = run_records.sorted(key=lambda record: record["step"])[-1]
        return {
            "val_acc": last[f"env{test_env}_out_acc"],
            "test_acc": last[f"env{test_env}_in_acc"],
        }


class IIDAccuracySelectionMethod(SelectionMethod):
    """Training-domain validation: best mean out-split accuracy over the training envs."""

    name = "training-domain validation set"

    @classmethod
    def _step_acc(cls, record: dict) -> RunAcc:
        test_env = record["args"]["test_envs"][0]
        held_out = [
            record[f"env{env}_out_acc"] for env in range(reported_envs(record)) if env != test_env
        ]
        return {
            "val_acc": float(np.mean(held_out)),
            "test_acc": record[f"env{test_env}_in_acc"],
        }

    @classmethod
    def run_acc(cls, run_records: Q) -> RunAcc | None:
        run_records = single_test_env_records(run_records)
        if not len(run_records):
            return None
        return run_records.map(cls._step_acc).argmax("val_acc")


class LeaveOneOutSelectionMethod(SelectionMethod):
    """Leave-one-domain-out cross-validation over the runs with two test envs."""

    name = "leave-one-domain-out cross-validation"

    @classmethod
    def _step_acc(cls, step_records: Q) -> RunAcc | None:
        """Score one checkpoint step; None unless every other env has its validation run."""
        reported = single_test_env_records(step_records)
        if len(reported) != 1:
            return None
        test_env = reported[0]["args"]["test_envs"][0]
        n_envs = reported_envs(step_records[0])
        val_accs: dict[int, float] = {}
        for record in step_records:
            envs = record["args"]["test_envs"]
            if len(envs) == 2:
                (val_env,) = set(envs) - {test_env}
                val_accs[val_env] = record[f"env{val_env}_in_acc"]
        if any(env not in val_accs for env in range(n_envs) if env != test_env):
            return None
        return {
            "val_acc": sum(val_accs[env] for env in range(n_envs) if env != test_env)
            / (n_envs - 1),
            "test_acc": reported[0][f"env{test_env}_in_acc"],
        }

    @classmethod
    def run_acc(cls, run_records: Q) -> RunAcc | None:
        steps = (
            run_records.group("step")
            .map(lambda _step, step_records: cls._step_acc(step_records))
            .filter_not_none()
        )
        return steps.argmax("val_acc") if len(steps) else None


SELECTION_METHODS: list[type[SelectionMethod]] = [
    IIDAccuracySelectionMethod,
    LeaveOneOutSelectionMethod,
    OracleSelectionMethod,
]
