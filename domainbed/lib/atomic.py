"""Files that appear whole or not at all.

A training run can be killed at any instant (a preempted Slurm job, a full disk, Ctrl-C). Readers
such as collect_results and the resume logic must never see a truncated `results.jsonl` or
`model.pkl`, so every output is written to a temporary file in the same directory, flushed to
disk, and renamed over its final name: a rename within one file system is atomic.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch


def _fsync_dir(directory: Path) -> None:
    # The rename itself lives in the directory entry; without this a crash can forget it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on a clean exit it replaces `path`.

    If the block raises, the temporary file is removed and `path` keeps its old content.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files; mode {mode!r} is not supported")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)
