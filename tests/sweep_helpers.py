"""Helpers for tests that run real sweeps and kill them: waiting for jobs, killing a whole
process session at once as a lost machine would, and reading the jobs' states."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest


def wait_for_done(root: Path, count: int, proc: subprocess.Popen, timeout_s: float = 600):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(list(root.glob("*/done"))) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended early:\n{proc.stdout.read()}")
        time.sleep(0.2)
    pytest.fail("no progress: the jobs did not finish in time")


def session_processes(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`: the sweep started with a new session and
    everything it runs, whatever process group a job put itself in."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and (fields[0] != "Z" or live_threads(stat.parent)):
            found.append(int(stat.parent.name))
    return found


def live_threads(process: Path) -> bool:
    """A zombie thread-group leader whose other threads are still exiting (and still hold the
    process's files, a job's lock among them)."""
    for stat in process.glob("task/*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except OSError:
            continue
    return False


def kill_session(sid: int) -> None:
    """SIGKILL every process of the session at once, as when the machine goes away."""
    while members := session_processes(sid):
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def job_states(root: Path) -> tuple[set[str], set[str]]:
    dirs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    done = {p.parent.name for p in root.glob("*/done")}
    return done, dirs - done
