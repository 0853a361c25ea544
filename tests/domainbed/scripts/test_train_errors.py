"""How `train` fails: bad hyperparameters and directories refused in one line before anything
is written, a crash or a full disk reported in err.txt as well as on the terminal, a loss that
is not a number or a write limit stopping the run in one line without `done`, damaged leftovers
of earlier runs refused or cleared. Real Debug28 runs of one to eight steps."""

from __future__ import annotations

import errno
import io
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from domainbed import algorithms
from domainbed.lib import atomic, checkpoint, misc
from domainbed.scripts import train

REPO_ROOT = Path(__file__).resolve().parents[3]
DEBUG_RUN = ["--dataset", "Debug28", "--steps", "1", "--skip_model_save"]


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --- refused before anything is written ------------------------------------------------------

BAD_HPARAMS = {
    "typo": ("ERM", '{"lrr": 0.5}', "'lrr'"),
    "lr as a string": ("ERM", '{"lr": "0.1"}', "'lr'"),
    "batch size zero": ("ERM", '{"batch_size": 0}', "'batch_size'"),
    "batch size negative": ("ERM", '{"batch_size": -4}', "'batch_size'"),
    "batch size fractional": ("ERM", '{"batch_size": 3.5}', "'batch_size'"),
    "groupdro eta as a list": ("GroupDRO", '{"groupdro_eta": [0.1]}', "'groupdro_eta'"),
    "itl omega of text": ("ERM_ITL", '{"itl_omega": "paper"}', "'itl_omega'"),
}


@pytest.mark.parametrize("case", sorted(BAD_HPARAMS))
def test_bad_hparams_refused_naming_the_key(case, tmp_path, capsys):
    algorithm, overrides, key = BAD_HPARAMS[case]
    out = tmp_path / "run"
    argv = [*DEBUG_RUN, "--algorithm", algorithm, "--hparams", overrides, "--output_dir", str(out)]
    assert train.main(argv) == 2
    assert key in one_error_line(capsys)
    assert not out.exists()


def test_unknown_hparam_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "domainbed.scripts.train", *DEBUG_RUN,
                           "--hparams", '{"lrr": 0.5}', "--output_dir", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "domainbed.scripts.train: error: --hparams: unknown hyperparameter 'lrr' for ERM "
        "(did you mean 'lr'?)"]
    assert not out.exists()


@pytest.mark.parametrize("algorithm", ["GroupDRO", "DANN"])
def test_repeated_test_env_refused(algorithm, tmp_path, capsys):
    # `0 0` leaves environments to train on but would count as two held out, so the algorithm
    # would be built for one training domain and fed two.
    out = tmp_path / "run"
    argv = [*DEBUG_RUN, "--algorithm", algorithm, "--test_envs", "0", "0",
            "--output_dir", str(out)]
    assert train.main(argv) == 2
    assert "--test_envs lists environment 0 more than once" in one_error_line(capsys)
    assert not out.exists()


def test_output_dir_that_is_or_lies_below_a_file(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for out, words in ((a_file, "is a file"), (a_file / "run", "lies below the file")):
        assert train.main([*DEBUG_RUN, "--output_dir", str(out)]) == 2
        assert words in one_error_line(capsys)
    assert a_file.read_text() == "mine"


# --- failures during the run land in err.txt ---------------------------------------------------

def test_a_crash_prints_its_traceback_into_err_txt(tmp_path, capsys, monkeypatch):
    def broken_update(self, minibatches, unlabeled=None):
        raise RuntimeError("simulated failure in update")

    monkeypatch.setattr(algorithms.get_algorithm_class("ERM"), "update", broken_update)
    out = tmp_path / "run"
    assert train.main([*DEBUG_RUN, "--output_dir", str(out)]) == 1
    terminal = capsys.readouterr().err
    logged = (out / "err.txt").read_text()
    for text in (terminal, logged):
        assert "Traceback" in text and "RuntimeError: simulated failure in update" in text
    assert not (out / "done").exists()
    assert sys.stderr is not None and not isinstance(sys.stderr, misc.Tee)


def test_a_full_disk_is_one_line_and_the_rerun_finishes(tmp_path, capsys, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "run"
    argv = [*DEBUG_RUN, "--steps", "2", "--output_dir", str(out)]
    with monkeypatch.context() as patch:
        patch.setattr(atomic.os, "fsync", no_space)
        assert train.main(argv) == 1
    line = one_error_line(capsys)
    assert str(out / checkpoint.RESUME_FILE) in line and "No space left on device" in line
    assert line in (out / "err.txt").read_text()
    assert sorted(os.listdir(out)) == ["err.txt", "out.txt"]  # no temporary file left behind

    assert train.main(argv) == 0
    assert (out / "done").exists()
    assert [json.loads(line)["step"] for line in (out / "results.jsonl").open()] == [0, 1]


def test_log_copy_on_a_full_device_keeps_the_terminal_copy():
    terminal = io.StringIO()
    tee = misc.Tee("/dev/full", stream=terminal)  # every write to /dev/full fails with ENOSPC
    tee.write("first line\n")
    tee.write("second line\n")
    tee.close()
    assert terminal.getvalue() == "first line\nsecond line\n"
    assert tee.file is None


# --- what earlier runs left behind -------------------------------------------------------------

@pytest.fixture()
def interrupted_run(tmp_path, monkeypatch):
    """A directory as a run killed after its last checkpoint leaves it: a real resume.pt and
    results.jsonl, no `done`."""
    out = tmp_path / "run"
    argv = [*DEBUG_RUN, "--steps", "2", "--checkpoint_freq", "1", "--output_dir", str(out)]
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "discard", lambda output_dir: None)
        assert train.main(argv) == 0
    (out / "done").unlink()
    return out, argv


def test_damaged_resume_state_refused_untouched(interrupted_run, capsys):
    out, argv = interrupted_run
    resume = out / checkpoint.RESUME_FILE
    genuine = resume.read_bytes()
    state = torch.load(resume, weights_only=True)
    fields_only = _saved({"args": state["args"]})
    del state["algorithm"][next(iter(state["algorithm"]))]  # a parameter the model has
    damages = {
        "cannot be read": genuine[: len(genuine) // 2],
        "is not a resume state": fields_only,
        "does not fit this run": _saved(state),
    }
    for words, content in damages.items():
        resume.write_bytes(content)
        log = (out / "out.txt").read_bytes()
        assert train.main(argv) == 2
        line = one_error_line(capsys)
        assert str(resume) in line and words in line and "delete it" in line
        assert resume.read_bytes() == content
        assert (out / "out.txt").read_bytes() == log

    resume.write_bytes(genuine)
    assert train.main(argv) == 0
    assert (out / "done").exists() and not resume.exists()


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_finished_run_with_damaged_results_refused(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*DEBUG_RUN, "--steps", "2", "--checkpoint_freq", "1", "--output_dir", str(out)]
    assert train.main(argv) == 0
    capsys.readouterr()
    results = out / "results.jsonl"
    first, second = results.read_text().splitlines()
    for damaged, line_number in ((first + "\n" + second[:40], 2),
                                 ("[1, 2]\n" + second + "\n", 1)):
        results.write_text(damaged)
        assert train.main(argv) == 2
        line = one_error_line(capsys)
        assert "results.jsonl is damaged" in line and f"(line {line_number})" in line
        assert results.read_text() == damaged


KILL_DURING_WRITES = """
import os, signal, sys
from domainbed.lib import atomic
out = sys.argv[1]
writes = []  # kept referenced: a collected write would clean up after itself
for name, half in (("done", "do"), ("results.jsonl", "{"), ("resume.pt", b"PK"),
                   ("model.pkl", b"PK")):
    writes.append(atomic.atomic_open(os.path.join(out, name),
                                     "wb" if isinstance(half, bytes) else "w"))
    writes[-1].__enter__().write(half)
os.kill(os.getpid(), signal.SIGKILL)  # in the middle of four writes
"""


def test_temporary_files_of_killed_writes_are_cleared_by_the_next_run(interrupted_run):
    out, argv = interrupted_run
    before = set(os.listdir(out))
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_WRITES, str(out)], cwd=REPO_ROOT,
                            timeout=600)
    assert killed.returncode == -9
    leftovers = set(os.listdir(out)) - before
    assert {name.split(".")[1] for name in leftovers} == {"done", "results", "resume", "model"}
    assert all(name.startswith(".") and name.endswith(".tmp") for name in leftovers)
    (out / "keep.tmp").write_text("a user's file")

    assert train.main(argv) == 0
    assert not leftovers & set(os.listdir(out))
    assert (out / "done").exists() and (out / "keep.tmp").read_text() == "a user's file"
    assert f"Removed {len(leftovers)} temporary files" in (out / "out.txt").read_text()


# --- a loss that is not a number, a write limit -------------------------------------------------

def test_a_diverging_run_stops_at_the_first_non_finite_loss_without_done(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*DEBUG_RUN, "--steps", "8", "--checkpoint_freq", "1", "--hparams", '{"lr": 1e8}',
            "--output_dir", str(out)]
    for _ in range(2):  # the rerun resumes from the last finite checkpoint and stops again
        assert train.main(argv) == 1
        line = one_error_line(capsys)
        assert line.startswith("domainbed.scripts.train: error: the training loss became nan "
                               "at step 5 (loss)")
        assert "--hparams" in line and "Traceback" not in line
        assert not (out / "done").exists()
        records = [json.loads(line) for line in (out / "results.jsonl").open()]
        assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
        assert all(r["loss"] == r["loss"] for r in records)  # every recorded loss is a number


def test_itl_with_huge_coefficients_exits_non_zero_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    omega = json.dumps({"itl_omega": [1e30] * 12})
    done = subprocess.run([sys.executable, "-m", "domainbed.scripts.train", *DEBUG_RUN,
                           "--algorithm", "ERM_ITL", "--hparams", omega,
                           "--output_dir", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "domainbed.scripts.train: error: the training loss became nan at step 0 (loss); the "
        "hyperparameters make training diverge: lower the learning rate or choose smaller loss "
        "parameters (such as itl_omega) in --hparams, with a new --output_dir"]
    assert not (out / "done").exists() and not (out / "results.jsonl").exists()


def test_a_write_limit_is_one_line_and_leaves_no_half_written_file(tmp_path):
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "domainbed.scripts.train", *DEBUG_RUN,
                           "--output_dir", str(out)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600, preexec_fn=limit_file_size)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"domainbed.scripts.train: error: {out / checkpoint.RESUME_FILE}: "
                           "File too large; ")
    assert "ulimit -f" in line and "the run resumes from its last checkpoint" in line
    assert set(os.listdir(out)) <= {"err.txt", "out.txt", ".running.lock"}
