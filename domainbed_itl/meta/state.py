"""Checkpoint and resume for meta-training, which runs for hours and gets killed.

One checkpoint file holds everything needed to continue: the run's configuration, the number of
completed outer steps, w, the outer optimiser's state, the roll-back point and the per-step log
records. The log file is rewritten from those records on resume, so a kill between writing the
checkpoint and appending to the log can neither lose nor duplicate a line. Randomness is derived
from (seed, outer step, domain) rather than carried as generator state, so a resumed run draws
exactly what an uninterrupted one would.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


class ConfigMismatchError(ValueError):
    """The output directory holds a run made with different settings."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory and rename, so readers (and a resume
    after a kill) only ever see the old file or the complete new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(directory: Path, names: Iterable[str]) -> None:
    """Delete what atomic_write_bytes left of `names` when a kill struck mid-write: the next run
    in the directory would never read those files, only trip over them."""
    for name in names:
        for leftover in Path(directory).glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON (indented, newline-terminated) written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save `state` atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message says what to do instead."""


def load_checkpoint(path: Path, required: Iterable[str] = ()) -> dict[str, Any] | None:
    """The saved state, or None when there is no checkpoint yet; CheckpointError for a file
    that is damaged, holds no state dict with the `required` keys, or is not plain data
    (`weights_only`: nothing but tensors and containers is ever unpickled)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = sorted(set(required) - set(state)) if isinstance(state, dict) else ["a dict"]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
    except Exception as err:  # torch reports damage as RuntimeError, UnpicklingError, EOFError...
        first = next(iter(str(err).strip().splitlines()), type(err).__name__)
        raise CheckpointError(f"{path} is damaged or not a checkpoint of this program "
                              f"({first[:200]}); delete it to start this run over, or choose a "
                              "new --output_dir") from None
    return state


def check_config(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise ConfigMismatchError naming every setting that differs from the saved run."""
    keys = sorted(set(saved) | set(current))
    diffs = [f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in keys
             if saved.get(k) != current.get(k)]
    if diffs:
        raise ConfigMismatchError(
            "the output directory holds a run with different settings ("
            + "; ".join(diffs)
            + "); rerun with the same arguments to resume, or choose a new --output_dir"
        )


def rewrite_log(path: Path, records: list[dict[str, Any]]) -> None:
    """Make the jsonl log hold exactly `records` (used on resume)."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write_bytes(path, text.encode())


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a json line."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
