"""Command launchers: how a sweep's shell commands get run.

A launcher is a callable taking the list of commands (plus optional keyword settings such as
`max_parallel`). It is looked up by name in `REGISTRY`, as in the public DomainBed, and other
packages add their own with `@register_launcher("name")` (a cluster launcher, say), typically
from a `domainbed.plugins` entry point, which the sweep loads before it looks the name up.
A launcher that runs jobs to completion may return the commands that failed; one that only
submits them returns None.

Every job writes its own `done` file when it finishes, so the sweep, not the launcher, keeps
track of what is finished: a launcher may be killed at any moment without losing anything but
the jobs that were running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import tqdm

from domainbed.lib.registry import Registry

Launcher = Callable[..., "list[str] | None"]

REGISTRY: Registry[Launcher] = Registry("command launcher")
_CHECKS: dict[str, Callable[[], None]] = {}
_DRY_RUNS: set[Launcher] = set()

_POLL_S = 0.2
_GRACE_S = 10.0
_STDERR_TAIL_LINES = 5
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def register_launcher(
    name: str, check: Callable[[], None] | None = None, dry_run: bool = False
) -> Callable[[Launcher], Launcher]:
    """Decorator: make a launcher available to `sweep --command_launcher name`.

    `check`, if given, raises RuntimeError when the launcher cannot work here (no GPU, no
    scheduler); the sweep calls it before it creates any job directory. A `dry_run` launcher
    runs nothing, so the sweep creates no job directory for it: a later real launch then
    finds every job still to run.
    """

    def decorate(fn: Launcher) -> Launcher:
        REGISTRY[name] = fn  # refused if another launcher holds the name
        if check is not None:
            _CHECKS[name] = check
        if dry_run:
            _DRY_RUNS.add(fn)
        return fn

    return decorate


def check_launcher(name: str) -> None:
    """Raise RuntimeError, with what to do instead, if launcher `name` cannot run here."""
    if name in _CHECKS:
        _CHECKS[name]()


def is_dry_run(launcher: Launcher) -> bool:
    return launcher in _DRY_RUNS


@register_launcher("dummy", dry_run=True)
def dummy_launcher(commands: Sequence[str]) -> None:
    """Print the commands instead of running them: shows what a sweep would do."""
    for command in commands:
        print(f"Dummy launcher: {command}")


@dataclass
class _Running:
    command: str
    process: subprocess.Popen
    stderr: IO[bytes]
    slot: int


@dataclass
class _Failure:
    command: str
    returncode: int
    stderr_tail: list[str] = field(default_factory=list)


def _tail(handle: IO[bytes]) -> list[str]:
    handle.seek(0)
    lines = handle.read().decode("utf-8", errors="replace").splitlines()
    return lines[-_STDERR_TAIL_LINES:]


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


def _stop(running: list[_Running]) -> None:
    """Terminate every process of the jobs still running, killing what outlives a grace period.

    Each job is its own process group (the shell and the training process under it), so the
    signal reaches the training process and not just the shell that started it.
    """
    groups = [job.process.pid for job in running]
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + _GRACE_S
    while any(_group_alive(pgid) for pgid in groups) and time.monotonic() < deadline:
        for job in running:
            job.process.poll()  # reap the shell so that its group can empty
        time.sleep(_POLL_S / 2)
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
    for job in running:
        job.process.wait()
        job.stderr.close()


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP to the launcher: stop the jobs exactly as on Ctrl-C."""


@contextlib.contextmanager
def _stop_on_termination() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `_Terminated` while jobs run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        raise _Terminated(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, interrupt) for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _report(failures: list[_Failure], total: int) -> None:
    if not failures:
        print(f"All {total} jobs exited successfully.")
        return
    print(f"{len(failures)} of {total} jobs failed:")
    for failure in failures:
        print(f"  exit status {failure.returncode}: {failure.command}")
        for line in failure.stderr_tail:
            print(f"    | {line}")


def run_pool(commands: Sequence[str], slot_envs: Sequence[dict[str, str]]) -> list[str]:
    """Run `commands` as shell commands, one per slot at a time; return the failed ones.

    Slot i runs its jobs with `slot_envs[i]` added to the environment (a GPU id, say). A job's
    stdout is dropped (the training script keeps its own log) and its stderr is kept to show
    the end of it if the job fails. On Ctrl-C, SIGTERM or SIGHUP the running jobs are stopped
    before KeyboardInterrupt propagates.
    """
    pending = list(reversed(commands))
    running: list[_Running] = []
    failures: list[_Failure] = []
    free_slots = list(range(len(slot_envs)))
    progress = tqdm.tqdm(total=len(commands), desc="jobs", unit="job", ncols=80)

    def start(command: str, slot: int) -> None:
        stderr = tempfile.TemporaryFile()
        process = subprocess.Popen(
            command,
            shell=True,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, **slot_envs[slot]},
            process_group=0,
        )
        running.append(_Running(command, process, stderr, slot))

    def reap(job: _Running) -> None:
        running.remove(job)
        free_slots.append(job.slot)
        if job.process.returncode != 0:
            failures.append(_Failure(job.command, job.process.returncode, _tail(job.stderr)))
            progress.set_postfix(failed=len(failures))
        job.stderr.close()
        progress.update(1)

    try:
        with _stop_on_termination():
            while pending or running:
                while pending and free_slots:
                    start(pending.pop(), free_slots.pop(0))
                time.sleep(_POLL_S)
                for job in [job for job in running if job.process.poll() is not None]:
                    reap(job)
    except BaseException:
        _stop(running)
        raise
    finally:
        progress.close()
    _report(failures, len(commands))
    return [failure.command for failure in failures]


@register_launcher("local")
def local_launcher(commands: Sequence[str], max_parallel: int = 1) -> list[str]:
    """Run the commands on this machine, `max_parallel` at a time (default: one after another)."""
    if max_parallel < 1:
        raise ValueError(f"max_parallel must be at least 1, got {max_parallel}")
    return run_pool(commands, [{} for _ in range(max_parallel)])


def _visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def _require_gpus() -> None:
    if not _visible_gpus():
        raise RuntimeError("the multi_gpu launcher found no GPU; use --command_launcher local")


@register_launcher("multi_gpu", check=_require_gpus)
def multi_gpu_launcher(commands: Sequence[str]) -> list[str]:
    """Run the commands on this machine, one per visible GPU at a time.

    Each job sees only its own GPU through CUDA_VISIBLE_DEVICES; the GPUs are those listed in
    CUDA_VISIBLE_DEVICES if it is set, else every GPU torch finds.
    """
    _require_gpus()
    return run_pool(commands, [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in _visible_gpus()])


import domainbed.launchers  # noqa: E402, F401  (registers the cluster launchers: slurm, ray)
