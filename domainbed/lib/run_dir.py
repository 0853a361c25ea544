"""What one training run's directory holds, and the rules every reader of it follows.

`domainbed.scripts.train` writes a run's directory; the sweep, `compare_losses` and the result
tables read it. The file names are the public DomainBed's (`done`, `results.jsonl`, `out.txt`,
`err.txt`, `model.pkl`) plus this project's resume state, so a directory either wrote is read by
the other. A run is finished once `done` exists, and `done` is written last, after the records
and the model: a run killed at any point is never taken for a finished one.

Resuming a run with other arguments would mix two runs in one directory, so every command that
resumes or reuses a run compares the arguments it has with the recorded ones (`differing`) and
refuses (`refuse_other_arguments`). A resume state (train's and meta-training's checkpoints) is
written atomically and read with `weights_only=True`, so a file in a run directory cannot run
code when it is loaded (`save_state`, `load_state`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from domainbed.lib import atomic
from domainbed.lib.cli import UsageError

DONE = "done"
RESULTS = "results.jsonl"
OUT = "out.txt"
ERR = "err.txt"
MODEL = "model.pkl"
RESUME = "resume.pt"


def is_done(directory: str | os.PathLike) -> bool:
    return os.path.exists(os.path.join(directory, DONE))


def mark_done(directory: str | os.PathLike) -> None:
    """Mark the run finished; call it after every other file of the run is written."""
    atomic.write_text(os.path.join(directory, DONE), DONE)


def write_records(directory: str | os.PathLike, records: list[str]) -> None:
    """Make results.jsonl hold exactly `records` (JSON lines without their line breaks)."""
    atomic.write_text(os.path.join(directory, RESULTS), "".join(r + "\n" for r in records))


class DamagedRecords(UsageError, ValueError):
    """A finished run whose results.jsonl has a line that is no record; it cannot be reused."""

    def __init__(self, where: str, line: int):
        super().__init__(f"{where} holds a finished run whose {RESULTS} is damaged (line {line}); "
                         "delete the directory to run it again")


def finished_records(directory: str | os.PathLike, where: str | None = None) -> list[dict] | None:
    """The records of the finished run in `directory`, None if it holds no finished run; []
    for a finished run without a results.jsonl. DamagedRecords (naming `where`, by default the
    directory) if a line is not a JSON object with an `args` object."""
    if not is_done(directory):
        return None
    path = os.path.join(directory, RESULTS)
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("args"), dict):
                raise DamagedRecords(where or str(directory), number)
            records.append(record)
    return records


def differing(saved: dict[str, Any], current: dict[str, Any],
              ignore: tuple[str, ...] = ("output_dir",)) -> list[str]:
    """The settings, sorted, in which two runs differ; `ignore`d ones never count (the same
    directory may be named by a relative or an absolute path)."""
    return sorted(key for key in saved.keys() | current.keys()
                  if key not in ignore and saved.get(key) != current.get(key))


class OtherArguments(UsageError, ValueError):
    """A directory holds a run made with other arguments, which this one must not continue."""


def refuse_other_arguments(saved: dict[str, Any], current: dict[str, Any], where: str,
                           what: str) -> None:
    """OtherArguments, naming the differing settings, unless the two runs' arguments agree."""
    changed = differing(saved, current)
    if changed:
        raise OtherArguments(f"{where} holds {what} with other arguments (differing: "
                             f"{', '.join(changed)}); rerun with the same arguments or choose "
                             "another --output_dir")


class UnreadableStateFile(ValueError):
    """A state file that does not load; `reason` is the loader's first line, for a message."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def save_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save `state` as the whole file or not at all."""
    atomic.torch_save(state, path)


def load_state(path: str | os.PathLike) -> Any | None:
    """What `save_state` wrote at `path`, None when there is no file; UnreadableStateFile when
    it does not load. Only tensors and plain containers are unpickled (`weights_only`)."""
    import torch  # here, so that the readers of records load without torch

    if not os.path.exists(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file fails in many ways: zip, unpickler, EOF, ...
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UnreadableStateFile(path, first_line) from err
