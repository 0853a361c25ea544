"""What the cluster launchers share: running one job's shell command where the scheduler put
it, reading their settings from the environment, and the end-of-sweep report.

The report uses the `local` launcher's wording, so a sweep reads the same whichever launcher
ran it.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

LOG_TAIL_LINES = 5
STOP_GRACE_S = 10.0
_WAIT_SLICE_S = 0.5


@dataclass
class Outcome:
    """How one job ended: `failure` is None for success, else what went wrong, in words."""

    command: str
    failure: str | None = None
    log_tail: list[str] = field(default_factory=list)


def report(outcomes: Sequence[Outcome]) -> list[str]:
    """Print the end-of-sweep summary; the commands that failed."""
    failed = [outcome for outcome in outcomes if outcome.failure is not None]
    if not failed:
        print(f"All {len(outcomes)} jobs exited successfully.")
        return []
    print(f"{len(failed)} of {len(outcomes)} jobs failed:")
    for outcome in failed:
        print(f"  {outcome.failure}: {outcome.command}")
        for line in outcome.log_tail:
            print(f"    | {line}")
    return [outcome.command for outcome in failed]


def tail_lines(text: str, n: int = LOG_TAIL_LINES) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-n:]


def tail_of_file(path: str | os.PathLike, n: int = LOG_TAIL_LINES) -> list[str]:
    """The last `n` non-blank lines of a log; none if it does not exist (yet)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            return tail_lines(handle.read().decode("utf-8", errors="replace"), n)
    except OSError:
        return []


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the job's whole process group, SIGKILL to what outlives the grace period."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_GRACE_S
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    process.wait()


def run_shell(command: str, cwd: str, stdout: int | IO | None, stderr: int | IO | None) -> int:
    """Run `command` with /bin/sh in its own process group; its exit status.

    Whatever interrupts the wait (a cancelled Ray task, submitit's exit on preemption) stops
    the job's processes before it propagates, so no training process outlives its task. The
    wait polls: Ray cancels a task by raising an exception in its thread, which a thread
    blocked in one long wait would only see when the job ends.
    """
    process = subprocess.Popen(
        command, shell=True, cwd=cwd, stdout=stdout, stderr=stderr, process_group=0
    )
    try:
        while True:
            try:
                return process.wait(timeout=_WAIT_SLICE_S)
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        _stop_group(process)
        raise


def output_dir_of(command: str) -> str | None:
    """The `--output_dir` of a training command, as the sweep writes it; None if it has none."""
    words = shlex.split(command)
    for flag, value in zip(words, words[1:], strict=False):
        if flag == "--output_dir":
            return value
    return None


def sweep_dir_of(commands: Sequence[str]) -> str | None:
    """The directory holding every command's `--output_dir`; None if they do not share one."""
    parents = {os.path.dirname(os.path.abspath(d)) for d in map(output_dir_of, commands) if d}
    return parents.pop() if len(parents) == 1 else None


class SettingError(RuntimeError):
    """An environment setting a launcher cannot use; the message names it and what it takes."""


def env_number(environ: Mapping[str, str], name: str, default: float | None, kind: type,
               minimum: float) -> float | None:
    """`environ[name]` as an int or float no smaller than `minimum`; `default` when unset."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        what = "an integer" if kind is int else "a number"
        raise SettingError(f"{name} must be {what} >= {minimum:g}, got {raw!r}")
    return value


def env_flag(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise SettingError(f"{name} must be 1 or 0, got {raw!r}")
