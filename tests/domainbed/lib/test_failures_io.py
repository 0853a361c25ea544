"""What every command does when the machine or a path lets it down: a full disk or a write
limit, an output directory that is a file, read-only or unwritable, a path holding a control
character, and a learned loss whose numbers are finite but whose values are not. Each is one
line naming the path and what to fix, a non-zero exit, no traceback and nothing half written.

The full-disk and read-only cases mount a real tmpfs inside a user namespace (`unshare -rm`)
where the kernel allows one; the write limit (RLIMIT_FSIZE, `ulimit -f`) needs no privilege and
fails torch.save the same way a full disk does."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from domainbed.lib import cli, io_errors
from domainbed.scripts import sweep, train
from domainbed_itl.losses import ITL_OMEGA
from domainbed_itl.losses.learned import LearnedLoss, LearnedLossError, presets
from domainbed_itl.meta import state
from domainbed_itl.scripts import compare_losses, deploy, meta_train, sweep_single_source

REPO_ROOT = Path(__file__).resolve().parents[3]
TRAIN = [sys.executable, "-m", "domainbed.scripts.train", "--dataset", "Debug28", "--steps", "2"]
SWEEP = ["launch", "--datasets", "Debug28", "--algorithms", "ERM", "--n_hparams", "1",
         "--n_trials", "1", "--data_dir", "data", "--command_launcher", "local",
         "--skip_confirmation"]


def _unshare_tmpfs_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _unshare_tmpfs_works(),
                                 reason="cannot mount a tmpfs in a user namespace here")


def _in_tmpfs(mount: Path, options: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run `argv` with a fresh tmpfs (mount options `options`) at `mount`, seen only by it."""
    script = 'mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", options, str(mount),
                           *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in stderr
    return lines[0]


# --- a full disk, a write limit ----------------------------------------------------------------

@needs_tmpfs
def test_train_on_a_full_tmpfs_is_one_line_and_writes_nothing_half(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    script = ('mount -t tmpfs -o size=200k tmpfs "$1" && shift && "$@"; code=$?; '
              'echo LISTING; ls -A "$OUT"; exit $code')
    out = mount / "run"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(mount), *TRAIN,
                           "--output_dir", str(out)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OUT": str(out)})
    assert done.returncode == 1
    line = _one_line(done.stderr)
    assert line.startswith("domainbed.scripts.train: error: ")
    assert str(out / "resume.pt") in line and "No space left on device" in line
    assert "free space" in line
    left = done.stdout.split("LISTING\n")[-1].split()  # the run directory, inside the mount
    assert set(left) <= {"err.txt", "out.txt", ".running.lock"}, left


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_torch_save_past_a_write_limit_is_an_os_error_naming_the_file(tmp_path):
    target = tmp_path / "state.pt"
    code = ("import sys, torch\n"
            "from domainbed.lib import atomic\n"
            "try:\n"
            "    atomic.torch_save({'w': torch.zeros(100_000)}, sys.argv[1])\n"
            "except OSError as err:\n"
            "    print(err.errno, err.filename)\n")
    done = subprocess.run([sys.executable, "-c", code, str(target)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=_file_size_limit(50_000))
    assert done.stdout.split() == [str(errno.EFBIG), str(target)], done.stderr[-500:]
    assert os.listdir(tmp_path) == []


def test_a_refused_write_in_a_command_is_one_line_and_exit_1(capsys):
    @cli.command("demo_command")
    def main(argv=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/results.jsonl")

    assert main([]) == 1
    line = capsys.readouterr().err.strip()
    assert line == ("demo_command: error: /data/out/results.jsonl: No space left on device; "
                    "the file system is full: free space on it, or choose a directory on "
                    "another one")


def test_an_error_behind_torch_runtime_error_is_found():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos") from None
    except RuntimeError as err:
        found = io_errors.os_error_behind(err)
    assert found is not None and found.errno == errno.ENOSPC


def test_a_meta_log_line_is_appended_whole_or_not_at_all(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    state.append_log(log, {"step": 0})
    before = log.read_bytes()
    real_write = os.write
    calls = []

    def half_then_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(state.os, "write", half_then_full)
    with pytest.raises(OSError) as caught:
        state.append_log(log, {"step": 1, "loss": 0.5})
    assert caught.value.filename == str(log) and caught.value.errno == errno.ENOSPC
    assert log.read_bytes() == before
    monkeypatch.undo()
    state.append_log(log, {"step": 1})
    assert [json.loads(line) for line in log.read_text().splitlines()] == [{"step": 0},
                                                                           {"step": 1}]


# --- output directories that cannot be written -------------------------------------------------

def _sweep_main(argv):
    return sweep.main(argv)


COMMANDS = {
    "train": (train.main, ["--dataset", "Debug28", "--steps", "1"]),
    "sweep": (_sweep_main, SWEEP),
    "sweep_single_source": (sweep_single_source.main, SWEEP),
    "meta_train": (meta_train.main, ["--data_dir", "data", "--outer_steps", "1"]),
    "compare_losses": (compare_losses.main, ["--dataset", "Debug28", "--steps", "1"]),
    "deploy": (deploy.main, ["--steps", "1"]),
}


def _run(name: str, output_dir: str) -> int:
    main, argv = COMMANDS[name]
    try:
        return main([*argv, "--output_dir", output_dir])
    except SystemExit as exit_:  # argparse's own refusals
        return exit_.code


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_output_dir_that_is_a_file_is_one_line(name, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for out, words in ((a_file, "is a file"), (a_file / "run", "lies below the file")):
        assert _run(name, str(out)) == 2
        line = _one_line(capsys.readouterr().err)
        assert str(out) in line and words in line
    assert a_file.read_text() == "mine" and os.listdir(tmp_path) == ["notes.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a 0555 directory")
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_output_dir_without_write_permission_is_one_line(name, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        assert _run(name, str(locked / "run")) == 2
        line = _one_line(capsys.readouterr().err)
        assert "no permission to write in" in line and str(locked) in line
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o755)


@needs_tmpfs
@pytest.mark.parametrize("module", ["domainbed.scripts.train", "domainbed.scripts.sweep",
                                    "domainbed_itl.scripts.sweep_single_source",
                                    "domainbed_itl.scripts.meta_train",
                                    "domainbed_itl.scripts.compare_losses"])
def test_output_dir_on_a_read_only_mount_is_one_line(module, tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    name = {"domainbed.scripts.train": "train", "domainbed.scripts.sweep": "sweep",
            "domainbed_itl.scripts.sweep_single_source": "sweep_single_source",
            "domainbed_itl.scripts.meta_train": "meta_train",
            "domainbed_itl.scripts.compare_losses": "compare_losses"}[module]
    out = mount / "run"
    done = _in_tmpfs(mount, "ro,size=100k", [sys.executable, "-m", module, *COMMANDS[name][1],
                                             "--output_dir", str(out)])
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert str(out) in line and "read-only file system" in line


# --- control characters in paths ---------------------------------------------------------------

@pytest.mark.parametrize("char", ["\n", "\t", "\x1b", "\r", "\x7f"])
def test_a_path_with_a_control_character_is_refused(char):
    with pytest.raises(Exception) as caught:
        cli.path_arg(f"out/a{char}b")
    assert repr(char)[1:-1] in str(caught.value)
    assert cli.path_arg("out/ä b'c") == "out/ä b'c"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_newline_in_output_dir_is_one_line_exit_2_and_creates_nothing(name, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _run(name, str(tmp_path / "out\nx")) == 2
    line = _one_line(capsys.readouterr().err)
    assert "argument --output_dir" in line and "control character '\\n'" in line
    assert os.listdir(tmp_path) == []


def test_newline_in_a_sweep_path_under_the_slurm_launcher_reaches_no_launcher(tmp_path):
    done = subprocess.run([sys.executable, "-m", "domainbed.scripts.sweep", *SWEEP[:-3],
                           "--command_launcher", "slurm", "--skip_confirmation",
                           "--output_dir", str(tmp_path / "o\nut"), "--data_dir", "da\tta"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert "control character" in _one_line(done.stderr)
    assert os.listdir(tmp_path) == []


# --- a learned loss is evaluated, not only read ------------------------------------------------

@pytest.mark.parametrize("omega", [1e308, 1e15])
def test_a_learned_loss_that_overflows_is_refused_at_load_time(tmp_path, omega):
    path = tmp_path / "learned_loss.json"
    path.write_text(json.dumps({"itl_omega": [omega] * len(ITL_OMEGA)}))
    with pytest.raises(LearnedLossError) as caught:
        LearnedLoss.from_file(path)
    assert str(path) in str(caught.value) and "cannot be trained with" in str(caught.value)


def test_shipped_and_published_losses_pass_the_probe(tmp_path):
    path = tmp_path / "learned_loss.json"
    path.write_text(json.dumps({"itl_omega": [-w for w in ITL_OMEGA]}))
    LearnedLoss.from_file(path)
    for name in presets():
        LearnedLoss.from_file(f"preset:{name}")


def test_compare_losses_refuses_an_overflowing_loss_before_training_anything(tmp_path, capsys):
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"itl_omega": [1e308] * len(ITL_OMEGA)}))
    out = tmp_path / "out"
    assert compare_losses.main(["--dataset", "Debug28", "--steps", "1", "--output_dir",
                                str(out), "--learned", f"huge={huge}"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("compare_losses: error: ") and str(huge) in line
    assert not out.exists()

