"""Checkpoint and resume for meta-training, which runs for hours and gets killed.

One checkpoint file holds everything needed to continue: the run's configuration, the number of
completed outer steps, w, the outer optimiser's state, the roll-back point and the per-step log
records. The log file is rewritten from those records on resume, so a kill between writing the
checkpoint and appending to the log can neither lose nor duplicate a line. Randomness is derived
from (seed, outer step, domain) rather than carried as generator state, so a resumed run draws
exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from domainbed.lib import atomic


class ConfigMismatchError(ValueError):
    """The output directory holds a run made with different settings."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save `state` atomically."""
    atomic.torch_save(state, path)


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
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a json line."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
