"""What every launcher is, and the registry the sweep looks launchers up in.

A launcher is a `Launcher`: a name, a `run(commands, **options)` function, and what it can do,
declared beside it: whether it takes the sweep's `max_parallel` and `no_wait`, whether it is a
dry run (runs nothing, so the sweep creates no job directory for it), and a settings check the
sweep calls before it creates anything. A launcher that runs jobs to completion returns the
commands that failed; one that only submits them returns None.

Every job writes its own `done` file when it finishes, so the sweep, not the launcher, keeps
track of what is finished: a launcher may be killed at any moment without losing anything but
the jobs that were running.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domainbed.lib import joblock, run_dir
from domainbed.lib.cli import UsageError
from domainbed.lib.registry import Registry

RunFn = Callable[..., "list[str] | None"]


class SettingError(UsageError, RuntimeError):
    """A launcher cannot work here as set up; the message says what to change."""


@dataclass(frozen=True, eq=False)
class Launcher:
    """A named way to run a sweep's shell commands, and what it can do.

    Calling it runs the commands, as the public DomainBed's launcher functions are called.
    """

    name: str
    run: RunFn
    check: Callable[[], None] | None = None
    takes_max_parallel: bool = False
    takes_no_wait: bool = False
    dry_run: bool = False

    def __call__(self, commands: Sequence[str], **options: Any) -> list[str] | None:
        self.check_options(options)
        return self.run(commands, **options)

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise ValueError for an option this launcher does not take or a value it cannot use."""
        max_parallel = options.get("max_parallel")
        if max_parallel is not None and max_parallel < 1:
            raise ValueError(f"--max_parallel must be at least 1, got {max_parallel}")
        accepted = {"max_parallel": self.takes_max_parallel, "no_wait": self.takes_no_wait}
        for option in options:
            if not accepted.get(option, False):
                raise ValueError(f"the {self.name!r} launcher does not take --{option}")

    def check_settings(self) -> None:
        """Raise RuntimeError, with what to do instead, if this launcher cannot run here."""
        if self.check is not None:
            self.check()


REGISTRY: Registry[Launcher] = Registry("command launcher")


def register_launcher(
    name: str,
    check: Callable[[], None] | None = None,
    *,
    max_parallel: bool = False,
    no_wait: bool = False,
    dry_run: bool = False,
) -> Callable[[RunFn | Launcher], Launcher]:
    """Decorator: make a run function available as `sweep --command_launcher name`; returns
    its `Launcher`. A name another launcher holds is refused (ValueError)."""

    def decorate(run: RunFn | Launcher) -> Launcher:
        if isinstance(run, Launcher):
            if run.name != name:
                raise ValueError(f"launcher {run.name!r} cannot be registered as {name!r}")
            launcher = run
        else:
            launcher = Launcher(name, run, check, max_parallel, no_wait, dry_run)
        REGISTRY[name] = launcher
        return launcher

    return decorate


@dataclass
class Outcome:
    """How one job ended: `failure` is None for success, else what went wrong, in words."""

    command: str
    failure: str | None = None
    log_tail: list[str] = field(default_factory=list)


def output_dir_of(command: str) -> str | None:
    """The `--output_dir` of a training command, as the sweep writes it; None if it has none."""
    words = shlex.split(command)
    for flag, value in zip(words, words[1:], strict=False):
        if flag == "--output_dir":
            return value
    return None


def run_elsewhere(command: str) -> str | None:
    """How another process took over the job of `command`, which did not succeed here: 'done
    elsewhere' or 'running elsewhere (pid@host ...)'; None if no other process did.

    Two launchers resuming one sweep start the same jobs; the run that finds its directory
    locked by the other exits with an error, though the job is in hand. What counts is how
    the job ends, so such a job is no failure of this launcher.
    """
    output_dir = output_dir_of(command)
    if output_dir is None or not os.path.isdir(output_dir):
        return None
    if run_dir.is_done(output_dir):
        return "done elsewhere"
    if joblock.is_running(output_dir):
        return f"running elsewhere (pid@host {joblock.holder(output_dir)})"
    return None


def report(outcomes: Sequence[Outcome]) -> list[str]:
    """Print the end-of-sweep summary, worded alike whichever launcher ran the jobs; the
    commands that failed (a job another process finished or runs did not fail)."""
    failed = [outcome for outcome in outcomes if outcome.failure is not None]
    elsewhere = {outcome.command: how for outcome in failed
                 if (how := run_elsewhere(outcome.command)) is not None}
    if elsewhere:
        print(f"{len(elsewhere)} of {len(outcomes)} jobs were taken over by another process "
              "(another launcher of this sweep):")
        for command, how in elsewhere.items():
            print(f"  {how}: {command}")
    failed = [outcome for outcome in failed if outcome.command not in elsewhere]
    if not failed:
        if len(outcomes) > len(elsewhere):
            print(f"All {len(outcomes) - len(elsewhere)} "
                  f"{'other ' if elsewhere else ''}jobs exited successfully.")
        return []
    print(f"{len(failed)} of {len(outcomes)} jobs failed:")
    for outcome in failed:
        print(f"  {outcome.failure}: {outcome.command}")
        for line in outcome.log_tail:
            print(f"    | {line}")
    return [outcome.command for outcome in failed]


def visible_gpus() -> list[str]:
    """The GPUs jobs started here may use: those CUDA_VISIBLE_DEVICES lists if it is set, else
    every GPU torch finds."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]
