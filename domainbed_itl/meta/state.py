"""Checkpoint and resume for meta-training, which runs for hours and gets killed.

One checkpoint file holds everything needed to continue: the run's configuration, the number of
completed outer steps, w, the outer optimiser's state, the roll-back point and the per-step log
records. The log file is rewritten from those records on resume, so a kill between writing the
checkpoint and appending to the log can neither lose nor duplicate a line. Randomness is derived
from (seed, outer step, domain) rather than carried as generator state, so a resumed run draws
exactly what an uninterrupted one would. The file is saved and loaded as every resume state of
the project is (`domainbed.lib.run_dir`: atomically, `weights_only`), and a run with other
settings is refused by the same comparison (`run_dir.differing`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from domainbed.lib import atomic, run_dir
from domainbed.lib.cli import UsageError


class ConfigMismatchError(UsageError, ValueError):
    """The output directory holds a run made with different settings."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save `state` atomically."""
    run_dir.save_state(state, path)


class CheckpointError(UsageError, ValueError):
    """A checkpoint that cannot be read; the message says what to do instead."""


def load_checkpoint(path: Path, required: Iterable[str] = ()) -> dict[str, Any] | None:
    """The saved state, or None when there is no checkpoint yet; CheckpointError for a file
    that is damaged, holds no state dict with the `required` keys, or is not plain data
    (`weights_only`: nothing but tensors and containers is ever unpickled)."""
    try:
        state = run_dir.load_state(path)
    except run_dir.UnreadableStateFile as err:
        raise _damaged(path, err.reason) from None
    if state is None:
        return None
    missing = sorted(set(required) - set(state)) if isinstance(state, dict) else ["a dict"]
    if missing:
        raise _damaged(path, f"missing {', '.join(missing)}")
    return state


def _damaged(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{path} is damaged or not a checkpoint of this program ({reason}); "
                           "delete it to start this run over, or choose a new --output_dir")


def check_config(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise ConfigMismatchError naming every setting that differs from the saved run."""
    diffs = [f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}"
             for k in run_dir.differing(saved, current, ignore=())]
    if diffs:
        raise ConfigMismatchError(
            "the output directory holds a run with different settings ("
            + "; ".join(diffs)
            + "); rerun with the same arguments to resume, or choose a new --output_dir"
        )


def rewrite_log(path: Path, records: list[dict[str, Any]]) -> None:
    """Make the jsonl log hold exactly `records` (used on resume)."""
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a json line, whole or not at all: a refused write (a full disk)
    cuts the file back to its previous end and raises an OSError naming it."""
    data = memoryview((json.dumps(record) + "\n").encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        end = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        os.close(fd)
