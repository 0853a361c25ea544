"""Files that appear whole or not at all.

A training run can be killed at any instant (a preempted Slurm job, a full disk, Ctrl-C). Readers
such as collect_results and the resume logic must never see a truncated `results.jsonl` or
`model.pkl`, so every output is written to a temporary file in the same directory, flushed to
disk, and renamed over its final name: a rename within one file system is atomic.

A process killed between creating its temporary file and the rename leaves the temporary file
behind (`.results.jsonl.k3j_9x0q.tmp`); `remove_leftovers` clears them when the next run starts
in that directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

_TEMP_SUFFIX = ".tmp"
# What mkstemp(prefix=".<name>.", suffix=".tmp") names a file: 8 random letters, digits or '_'.
_LEFTOVER = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(_TEMP_SUFFIX))


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
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
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:
            # A failed write() or fsync() (a full disk) names no file: name the one it was for.
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    _fsync_dir(path.parent)


def remove_leftovers(directory: str | os.PathLike) -> list[str]:
    """Delete the temporary files of writes that were killed midway in `directory`; return
    their names.

    Call it only where no other process is writing: a live write's temporary file looks the
    same.
    """
    removed = []
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if _LEFTOVER.fullmatch(entry) and os.path.isfile(path) and not os.path.islink(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(entry)
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)
