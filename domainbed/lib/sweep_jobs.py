"""A sweep's unit of work: one training run, named by the MD5 of its training arguments.

The name is the public DomainBed's, so either side's sweep directories are recognised job for
job; the state (done, incomplete, not launched) is read from the directory alone, so any
process, the sweep or a comparison built on its jobs, sees the same thing. Launching and
deleting go through the job so that every user of jobs shuffles, locks and deletes alike.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shlex
import shutil
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from domainbed import launchers
from domainbed.lib import joblock, run_dir
from domainbed.lib.cli import UsageError

_TRASH_PREFIX = ".deleting-"

NOT_LAUNCHED = "Not launched"
INCOMPLETE = "Incomplete"
DONE = "Done"


class Job:
    """One training run of a sweep: its arguments, directory, command line and state."""

    NOT_LAUNCHED = NOT_LAUNCHED
    INCOMPLETE = INCOMPLETE
    DONE = DONE

    def __init__(self, train_args: dict[str, Any], sweep_output_dir: str):
        digest = hashlib.md5(json.dumps(train_args, sort_keys=True).encode("utf-8")).hexdigest()
        self.output_dir = os.path.join(sweep_output_dir, digest)
        self.train_args = copy.deepcopy(train_args)
        self.train_args["output_dir"] = self.output_dir
        self.command_str = " ".join(
            [shlex.quote(sys.executable), "-m", "domainbed.scripts.train"]
            + [_cli_flag(key, value) for key, value in sorted(self.train_args.items())
               if value is not False]
        )
        self.state = _state_of(self.output_dir)

    def __str__(self) -> str:
        args = self.train_args
        return (
            f"{self.state}: {self.output_dir} ({args.get('dataset')}, {args.get('algorithm')}, "
            f"test_envs={args.get('test_envs')}, hparams_seed={args.get('hparams_seed')}, "
            f"trial_seed={args.get('trial_seed')})"
        )

    @staticmethod
    def launch(
        jobs: Sequence[Job],
        launcher: launchers.Launcher | Callable[..., list[str] | None],
        seed: int = 0,
        **options: Any,
    ) -> list[str] | None:
        """Create the jobs' directories (unless the launcher is a dry run), then hand their
        commands to the launcher: a registered `Launcher`, or any function of the commands, as
        the public DomainBed's `Job.launch` takes.

        The order is shuffled (seeded) so that a partial sweep covers every dataset and
        algorithm a little rather than the first ones completely.
        """
        jobs = list(jobs)
        random.Random(seed).shuffle(jobs)
        if not (isinstance(launcher, launchers.Launcher) and launcher.dry_run):
            for job in jobs:
                os.makedirs(job.output_dir, exist_ok=True)
        print(f"Launching {len(jobs)} jobs...")
        failed = launcher([job.command_str for job in jobs], **options)
        print(f"Launched {len(jobs)} jobs!")
        return failed

    @staticmethod
    def delete(jobs: Sequence[Job]) -> list[Job]:
        """Remove the jobs' directories, each at once: renamed to a hidden name, then deleted.
        Returns the jobs left alone because a live process still runs them (their launcher
        may have died without them).

        A deletion killed halfway leaves a hidden directory that no reader looks at; the next
        deletion in the same sweep directory finishes it.
        """
        parents, running = set(), []
        for job in jobs:
            with joblock.claimed(job.output_dir) as free:
                if not free:
                    running.append(job)
                    print(f"Left alone, still running (pid@host "
                          f"{joblock.holder(job.output_dir)}): {job.output_dir}")
                    continue
                parent, name = os.path.split(job.output_dir)
                parents.add(parent)
                trash = os.path.join(parent, f"{_TRASH_PREFIX}{name}-{uuid.uuid4().hex[:8]}")
                os.replace(job.output_dir, trash)
                shutil.rmtree(trash)
        for parent in parents:
            for leftover in os.listdir(parent):
                if leftover.startswith(_TRASH_PREFIX):
                    shutil.rmtree(os.path.join(parent, leftover), ignore_errors=True)
        print(f"Deleted {len(jobs) - len(running)} jobs!")
        return running


def _cli_flag(key: str, value: Any) -> str:
    """`--key value`; a switch (a True value) is the bare `--key`, and a False one is left out,
    as train's store_true flags take them."""
    if value is True:
        return f"--{key}"
    return f"--{key} {_cli_value(value)}"


def _cli_value(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    if isinstance(value, str):
        return shlex.quote(value)
    return str(value)


def _state_of(output_dir: str) -> str:
    if run_dir.is_done(output_dir):
        return DONE
    if os.path.exists(output_dir):
        return INCOMPLETE
    return NOT_LAUNCHED


def to_launch(jobs: Sequence[Job], resume_incomplete: bool) -> list[Job]:
    """The jobs `launch` starts: those not launched, and with `resume_incomplete` the
    incomplete ones that no live process runs."""
    resumable = INCOMPLETE if resume_incomplete else None
    return [
        job
        for job in jobs
        if job.state == NOT_LAUNCHED
        or (job.state == resumable and not joblock.is_running(job.output_dir))
    ]


def report_left_alone(jobs: Sequence[Job], launching: Sequence[Job]) -> None:
    """Name every incomplete job that is not being started because a live process runs it, so
    a resuming launcher says why it leaves a job alone."""
    starting = {id(job) for job in launching}
    for job in jobs:
        if job.state == INCOMPLETE and id(job) not in starting:
            print(f"Left alone, running elsewhere (pid@host {joblock.holder(job.output_dir)}): "
                  f"{job.output_dir}")


def check_launcher(name: str, options: dict[str, Any], settings: bool = True) -> launchers.Launcher:
    """The registered launcher `name`, once it is known to take `options` and, with `settings`,
    to be able to run here; UsageError saying what to change otherwise."""
    if name not in launchers.REGISTRY:
        raise UsageError(
            f"unknown command launcher {name!r} (known: {', '.join(launchers.REGISTRY)})"
        )
    launcher = launchers.REGISTRY[name]
    try:
        if settings:
            launcher.check_settings()
        launcher.check_options(options)
    except (RuntimeError, ValueError) as err:
        raise UsageError(str(err)) from None
    return launcher
