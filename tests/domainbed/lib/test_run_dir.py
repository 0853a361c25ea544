"""The run-directory rules (domainbed.lib.run_dir): the files a real training run leaves, how
a finished run is recognised and read, the "same arguments or refuse" rule, and resume states
that load without running code."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from domainbed.lib import checkpoint, cli, run_dir
from domainbed.scripts import sweep, train
from domainbed_itl.meta import state as meta_state

ARGV = ["--dataset", "Debug28", "--algorithm", "ERM", "--steps", "2", "--checkpoint_freq", "1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert train.main([*ARGV, "--output_dir", str(out)]) == 0
    return out


def test_a_finished_training_run_holds_the_named_files(finished):
    names = set(os.listdir(finished))
    assert {run_dir.DONE, run_dir.RESULTS, run_dir.OUT, run_dir.ERR, run_dir.MODEL} <= names
    assert run_dir.RESUME not in names  # discarded once done
    assert run_dir.is_done(finished)
    records = run_dir.finished_records(finished)
    assert [r["step"] for r in records] == [0, 1]
    assert records[-1]["args"]["output_dir"] == str(finished)


def test_a_run_without_done_is_not_finished_whatever_else_it_holds(tmp_path):
    train_args = {"dataset": "Debug28", "steps": 2}
    job = sweep.Job(train_args, str(tmp_path))
    assert job.state == sweep.NOT_LAUNCHED
    os.makedirs(job.output_dir)
    directory = job.output_dir
    with open(os.path.join(directory, run_dir.RESULTS), "w") as handle:
        handle.write('{"args": {}}\n')
    assert not run_dir.is_done(directory) and run_dir.finished_records(directory) is None
    assert sweep.Job(train_args, str(tmp_path)).state == sweep.INCOMPLETE
    run_dir.mark_done(directory)
    with open(os.path.join(directory, run_dir.DONE)) as handle:
        assert handle.read() == "done"  # what the public DomainBed writes
    assert run_dir.finished_records(directory) == [{"args": {}}]
    assert sweep.Job(train_args, str(tmp_path)).state == sweep.DONE


@pytest.mark.parametrize(("text", "line"), [
    ('{"args": {"a": 1}}\n\n[1, 2]\n', 3),
    ('{"args": {"a": 1}}\n{"args": {"a"', 2),
    ('{"step": 0}\n', 1),
])
def test_a_damaged_line_of_a_finished_run_is_named(tmp_path, text, line):
    run_dir.mark_done(tmp_path)
    (tmp_path / run_dir.RESULTS).write_text(text)
    with pytest.raises(run_dir.DamagedRecords, match=rf"results.jsonl is damaged \(line {line}\)"):
        run_dir.finished_records(tmp_path, "--output_dir X")
    assert issubclass(run_dir.DamagedRecords, cli.UsageError)


def test_other_arguments_are_refused_naming_each_difference():
    saved = {"steps": 5, "lr": 0.1, "output_dir": "a", "gone": 1}
    assert run_dir.differing(saved, {**saved, "output_dir": "/abs/a"}) == []
    assert run_dir.differing(saved, {"steps": 6, "lr": 0.1, "output_dir": "a"}) == ["gone",
                                                                                      "steps"]
    assert run_dir.differing({"output_dir": "a"}, {"output_dir": "b"}, ignore=()) == ["output_dir"]
    run_dir.refuse_other_arguments(saved, dict(saved), "--output_dir a", "a finished run")
    with pytest.raises(cli.UsageError, match=r"^--output_dir a holds an interrupted run with "
                                             r"other arguments \(differing: lr\); rerun"):
        run_dir.refuse_other_arguments(saved, {**saved, "lr": 1}, "--output_dir a",
                                       "an interrupted run")


def test_a_finished_run_with_other_arguments_is_refused_by_train(finished, capsys):
    before = (finished / run_dir.RESULTS).read_bytes()
    longer = [a if a != "2" else "3" for a in ARGV]
    assert train.main([*longer, "--output_dir", str(finished)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"{train.PROG}: error: --output_dir {finished} holds a finished run")
    assert "(differing: steps)" in line
    assert (finished / run_dir.RESULTS).read_bytes() == before


class _Code:
    def __reduce__(self):
        return (os.system, ("true",))


def test_resume_states_round_trip_and_never_unpickle_code(tmp_path):
    path = tmp_path / "state.pt"
    assert run_dir.load_state(path) is None
    state = {"w": torch.arange(3.0), "step": 4, "records": [{"a": 1}]}
    run_dir.save_state(state, path)
    loaded = run_dir.load_state(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["records"] == state["records"]

    with open(path, "wb") as handle:
        pickle.dump({"x": _Code()}, handle, protocol=2)
    with pytest.raises(run_dir.UnreadableStateFile):
        run_dir.load_state(path)
    # Both trainers' checkpoints go through it, each naming the file in its own words.
    with pytest.raises(meta_state.CheckpointError, match="is damaged or not a checkpoint"):
        meta_state.load_checkpoint(path)
    os.replace(path, tmp_path / run_dir.RESUME)
    with pytest.raises(checkpoint.UnreadableState, match=f"{run_dir.RESUME} cannot be read"):
        checkpoint.load(str(tmp_path))


def test_meta_settings_that_differ_are_named_with_their_values():
    with pytest.raises(meta_state.ConfigMismatchError,
                       match=r"inner_lr: saved 0.01, now 0.02; seed: saved 1, now None\)"):
        meta_state.check_config({"inner_lr": 0.01, "seed": 1}, {"inner_lr": 0.02})
    assert issubclass(meta_state.ConfigMismatchError, cli.UsageError)
