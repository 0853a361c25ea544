"""Model selection and the query language it is written in, on small hand-made sweeps whose
winning run is known in advance."""

from __future__ import annotations

import math

import pytest

from domainbed import model_selection
from domainbed.lib.query import Q, make_selector_fn
from domainbed.model_selection import (
    IIDAccuracySelectionMethod,
    LeaveOneOutSelectionMethod,
    OracleSelectionMethod,
)

N_ENVS = 3


def record(test_envs, hparams_seed, step, in_accs, out_accs, trial_seed=0):
    """One results.jsonl record of a 3-environment sweep."""
    rec = {
        "args": {
            "dataset": "Debug28",
            "algorithm": "ERM",
            "test_envs": list(test_envs),
            "hparams_seed": hparams_seed,
            "trial_seed": trial_seed,
        },
        "step": step,
    }
    for env in range(N_ENVS):
        rec[f"env{env}_in_acc"] = in_accs[env]
        rec[f"env{env}_out_acc"] = out_accs[env]
    return rec


# ---------------------------------------------------------------- query language


def test_selectors_nested_and_tuple():
    obj = {"a": {"b": 3}, "c": 4}
    assert make_selector_fn("a.b")(obj) == 3
    assert make_selector_fn("c, a.b")(obj) == (4, 3)
    assert make_selector_fn(lambda o: o["c"] * 2)(obj) == 8
    with pytest.raises(TypeError):
        make_selector_fn(3)


def test_group_sorts_keys_and_keeps_member_order():
    items = Q([{"k": 2, "v": "a"}, {"k": 1, "v": "b"}, {"k": 2, "v": "c"}, {"k": [0], "v": "d"}])
    groups = items.filter(lambda i: not isinstance(i["k"], list)).group("k")
    assert [key for key, _ in groups] == [1, 2]
    assert groups[1][1].select("v") == ["a", "c"]
    # Unhashable keys (lists of test envs) still group.
    assert items.group(lambda i: i["k"] if isinstance(i["k"], list) else [i["k"]]).len() == 3


def test_map_unpacks_pairs_and_reductions():
    pairs = Q([(1, 10), (2, 20)])
    assert pairs.map(lambda a, b: a + b) == [11, 22]
    assert pairs.map(lambda pair: pair[0]) == [1, 2]
    values = Q([1.0, 2.0, 4.0])
    assert values.mean() == pytest.approx(7 / 3)
    assert values.std() == pytest.approx(
        math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 3)
    )
    assert math.isnan(Q([]).mean())
    assert Q([3, 1, 3, [1], [1]]).unique() == [3, 1, [1]]
    assert Q([[1, 2], [3]]).flatten() == [1, 2, 3]


def test_sorted_puts_nan_first_and_argmax_takes_first_of_ties():
    assert Q([2.0, float("nan"), 1.0]).sorted()[1:] == [1.0, 2.0]
    assert math.isnan(Q([2.0, float("nan"), 1.0]).sorted()[0])
    items = Q([{"a": 1, "i": 0}, {"a": 5, "i": 1}, {"a": 5, "i": 2}])
    assert items.argmax("a")["i"] == 1


# ---------------------------------------------------------------- selection methods


def test_iid_picks_best_mean_training_out_acc_and_ignores_test_env_and_pair_runs():
    records = Q(
        [
            # step 0: training-env out accs 0.5, 0.7 -> 0.6; test env 0 out is high but unused.
            record([0], 0, 0, in_accs=[0.30, 0.0, 0.0], out_accs=[0.99, 0.5, 0.7]),
            # step 1: 0.9, 0.5 -> 0.7 wins.
            record([0], 0, 1, in_accs=[0.20, 0.0, 0.0], out_accs=[0.10, 0.9, 0.5]),
            # A run that also held out env 1 must not count, however good it looks.
            record([0, 1], 0, 1, in_accs=[0.95, 0.0, 0.0], out_accs=[0.0, 1.0, 1.0]),
        ]
    )
    acc = IIDAccuracySelectionMethod.run_acc(records)
    assert acc == {"val_acc": pytest.approx(0.7), "test_acc": 0.20}


def test_oracle_uses_last_checkpoint_not_best():
    seed0 = [
        record([1], 0, 0, [0, 0.40, 0], [0, 0.99, 0]),  # best test-out, but not last
        record([1], 0, 5, [0, 0.45, 0], [0, 0.60, 0]),
    ]
    seed1 = [
        record([1], 1, 0, [0, 0.10, 0], [0, 0.10, 0]),
        record([1], 1, 5, [0, 0.70, 0], [0, 0.80, 0]),
    ]
    assert OracleSelectionMethod.run_acc(Q(seed0)) == {"val_acc": 0.60, "test_acc": 0.45}
    # Across hyperparameters: seed 1's last test-out accuracy 0.80 beats seed 0's 0.60.
    assert OracleSelectionMethod.sweep_acc(Q(seed0 + seed1)) == 0.70


def test_leave_one_out_validates_on_the_pair_runs():
    def runs(seed, step, val1, val2, test):
        return [
            record([0], seed, step, [test, 0.0, 0.0], [0.9, 0.9, 0.9]),
            record([0, 1], seed, step, [0.0, val1, 0.0], [0.0, 0.0, 0.0]),
            record([0, 2], seed, step, [0.0, 0.0, val2], [0.0, 0.0, 0.0]),
        ]

    seed0 = runs(0, 0, 0.6, 0.8, test=0.11) + runs(0, 1, 0.5, 0.5, test=0.12)
    seed1 = runs(1, 0, 0.7, 0.6, test=0.21) + runs(1, 1, 0.1, 0.2, test=0.22)
    # seed 0: steps score 0.7 and 0.5; seed 1: 0.65 and 0.15.
    assert LeaveOneOutSelectionMethod.run_acc(Q(seed0)) == {
        "val_acc": pytest.approx(0.7),
        "test_acc": 0.11,
    }
    assert LeaveOneOutSelectionMethod.sweep_acc(Q(seed0 + seed1)) == 0.11
    ranked = LeaveOneOutSelectionMethod.hparams_accs(Q(seed0 + seed1))
    assert [run_records[0]["args"]["hparams_seed"] for _, run_records in ranked] == [0, 1]


def test_leave_one_out_needs_every_validation_env():
    # Without the [0, 2] run there is no score for env 2, so no step qualifies.
    records = Q(
        [
            record([0], 0, 0, [0.5, 0.0, 0.0], [0.5, 0.5, 0.5]),
            record([0, 1], 0, 0, [0.0, 0.9, 0.0], [0.0, 0.0, 0.0]),
        ]
    )
    assert LeaveOneOutSelectionMethod.run_acc(records) is None
    assert LeaveOneOutSelectionMethod.sweep_acc(records) is None
    # Single-test-env selection still works on the same records.
    assert IIDAccuracySelectionMethod.sweep_acc(records) == 0.5


def test_ties_go_to_the_larger_hparams_seed():
    records = Q(
        [record([0], seed, 0, [0.1 * (seed + 1), 0, 0], [0, 0.5, 0.5]) for seed in range(3)]
    )
    assert IIDAccuracySelectionMethod.sweep_acc(records) == pytest.approx(0.3)


def test_no_single_test_env_run_means_no_selection():
    records = Q([record([0, 1], 0, 0, [0.5] * 3, [0.5] * 3)])
    for method in model_selection.SELECTION_METHODS:
        assert method.sweep_acc(records) is None


def test_selection_methods_are_not_instantiated():
    with pytest.raises(TypeError):
        IIDAccuracySelectionMethod()
