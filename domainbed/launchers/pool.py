"""A pool of slots on this machine that runs shell commands, one per slot at a time: what the
`local` and `multi_gpu` launchers are made of."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import tqdm

from domainbed.launchers.launcher import Outcome, report, run_elsewhere
from domainbed.launchers.processes import (
    start_shell,
    stop_groups,
    stop_on_termination,
    tail_of_handle,
)
from domainbed.lib.fast_data_loader import available_cores
from domainbed.lib.fast_path import LOADER_WORKERS_ENV

_POLL_S = 0.2


@dataclass
class _Running:
    command: str
    process: subprocess.Popen
    stderr: IO[bytes]
    slot: int


def slot_environments(slot_envs: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """`slot_envs`, each given an equal share (at least one) of this process's cores as its
    jobs' default number of data-loader workers."""
    share = str(max(1, available_cores() // max(1, len(slot_envs))))
    return [{**env, LOADER_WORKERS_ENV: share} for env in slot_envs]


def run_pool(commands: Sequence[str], slot_envs: Sequence[dict[str, str]]) -> list[str]:
    """Run `commands` as shell commands, one per slot at a time; return the failed ones.

    Slot i runs its jobs with `slot_envs[i]` added to the environment (a GPU id, say). A job's
    stdout is dropped (the training script keeps its own log) and its stderr is kept to show
    the end of it if the job fails. On Ctrl-C, SIGTERM or SIGHUP the running jobs are stopped
    before KeyboardInterrupt propagates.
    """
    pending = list(reversed(commands))
    running: list[_Running] = []
    outcomes: list[Outcome] = []
    failures: list[str] = []  # so far, for the progress bar; `report` has the last word
    free_slots = list(range(len(slot_envs)))
    progress = tqdm.tqdm(total=len(commands), desc="jobs", unit="job", ncols=80)

    def start(command: str, slot: int) -> None:
        stderr = tempfile.TemporaryFile()
        process = start_shell(command, subprocess.DEVNULL, stderr,
                              env={**os.environ, **slot_envs[slot]})
        running.append(_Running(command, process, stderr, slot))

    def reap(job: _Running) -> None:
        running.remove(job)
        free_slots.append(job.slot)
        returncode = job.process.returncode
        if returncode == 0:
            outcomes.append(Outcome(job.command))
        else:
            outcomes.append(Outcome(job.command, f"exit status {returncode}",
                                    tail_of_handle(job.stderr)))
            if run_elsewhere(job.command) is None:
                failures.append(job.command)
                progress.set_postfix(failed=len(failures))
        job.stderr.close()
        progress.update(1)

    try:
        with stop_on_termination():
            while pending or running:
                while pending and free_slots:
                    start(pending.pop(), free_slots.pop(0))
                time.sleep(_POLL_S)
                for job in [job for job in running if job.process.poll() is not None]:
                    reap(job)
    except BaseException:
        stop_groups([job.process for job in running])
        for job in running:
            job.stderr.close()
        raise
    finally:
        progress.close()
    return report(outcomes)
