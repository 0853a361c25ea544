"""Running a job's shell command in its own process group, and stopping it.

Each job is its own process group (the shell and the training process under it), so a stop
reaches the training process and not just the shell that started it. SIGTERM and SIGHUP to a
launcher stop its jobs exactly as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

LOG_TAIL_LINES = 5
STOP_GRACE_S = 10.0
_POLL_S = 0.1
_WAIT_SLICE_S = 0.5
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP to the launcher: stop the jobs exactly as on Ctrl-C."""


@contextlib.contextmanager
def stop_on_termination() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `Terminated` while jobs run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        raise Terminated(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, interrupt) for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _only_zombies(pgid: int) -> bool:
    """True if every process left in group `pgid` has exited and waits to be reaped.

    A killed job's processes can be inherited by an init that never reaps them; they still
    answer signals, but there is nothing left to stop. Without /proc, assume they are running.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _only_zombies(pgid)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def stop_groups(processes: Sequence[subprocess.Popen]) -> None:
    """SIGTERM to each job's whole process group, SIGKILL to what outlives the grace period;
    returns once every job's shell is reaped."""
    groups = [process.pid for process in processes]
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while any(_group_alive(pgid) for pgid in groups) and time.monotonic() < deadline:
        for process in processes:
            process.poll()  # reap the shell so that its group can empty
        time.sleep(_POLL_S)
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
    for process in processes:
        process.wait()


def start_shell(command: str, stdout: int | IO | None, stderr: int | IO | None,
                cwd: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`command` under /bin/sh, in a process group of its own."""
    return subprocess.Popen(command, shell=True, cwd=cwd, stdout=stdout, stderr=stderr,
                            env=env, process_group=0)


def run_shell(command: str, cwd: str, stdout: int | IO | None, stderr: int | IO | None) -> int:
    """Run `command` to its end; its exit status.

    Whatever interrupts the wait (a cancelled Ray task, submitit's exit on preemption) stops
    the job's processes before it propagates, so no training process outlives its task. The
    wait polls: Ray cancels a task by raising an exception in its thread, which a thread
    blocked in one long wait would only see when the job ends.
    """
    process = start_shell(command, stdout, stderr, cwd=cwd)
    try:
        while True:
            try:
                return process.wait(timeout=_WAIT_SLICE_S)
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        stop_groups([process])
        raise


def tail_lines(text: str, n: int = LOG_TAIL_LINES) -> list[str]:
    """The last `n` non-blank lines of `text`."""
    return [line for line in text.splitlines() if line.strip()][-n:]


def tail_of_handle(handle: IO[bytes], n: int = LOG_TAIL_LINES) -> list[str]:
    """The last `n` non-blank lines written to an open temporary file (a job's stderr)."""
    handle.seek(0)
    return tail_lines(handle.read().decode("utf-8", errors="replace"), n)


def tail_of_file(path: str | os.PathLike, n: int = LOG_TAIL_LINES) -> list[str]:
    """The last `n` non-blank lines of a log; none if it does not exist (yet)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            return tail_lines(handle.read().decode("utf-8", errors="replace"), n)
    except OSError:
        return []
