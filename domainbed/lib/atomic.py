"""Files that appear whole or not at all, with the permissions a plain `open()` would give.

A run can be killed at any instant (a preempted Slurm job, a full disk, Ctrl-C). Readers such as
collect_results, the resume logic of train and meta_train, and the dataset loaders must never
see a truncated `results.jsonl`, checkpoint or MNIST file, so every output of the project is
written here: to a temporary file in the same directory, flushed to disk, optionally vetted by
a `check`, and renamed over its final name (a rename within one file system is atomic).

The temporary file is created with mode 0o666 filtered by the umask, as `open()` creates files,
so results shared with a group stay readable by it (mkstemp's 0o600 would hide them).

A process killed between creating its temporary file and the rename leaves the temporary file
behind (`.results.jsonl.0f3a9c1e.tmp`); `remove_leftovers` clears them when the next run starts
in that directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from domainbed.lib import io_errors

_TEMP_SUFFIX = ".tmp"
# A temporary name: ".<final name>.<8 random letters, digits or '_'>.tmp" (mkstemp's pattern too).
_LEFTOVER = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(_TEMP_SUFFIX))
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

Check = Callable[[Path], None]


def _create_temporary(path: Path) -> tuple[int, Path]:
    """An exclusive new sibling of `path`; the umask sets its permissions."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")
        try:
            return os.open(tmp, _CREATE, 0o666), tmp
        except FileExistsError:  # 1 in 4 billion: draw another name
            continue


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
def atomic_open(
    path: str | os.PathLike, mode: str = "w", check: Check | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on a clean exit it replaces `path`.

    `check` runs on the complete temporary file before the rename; if it raises, or the block
    does, the temporary file is removed and `path` keeps its old content (or stays absent).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files; mode {mode!r} is not supported")
    path = Path(path)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:
            # A failed write() or fsync() (a full disk) names no file: name the one it was for.
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    _fsync_dir(path.parent)


def write_bytes(
    path: str | os.PathLike, data: bytes | Iterable[bytes], check: Check | None = None
) -> None:
    """`data`, or the chunks it yields (a download, a decompression), as the whole file."""
    with atomic_open(path, "wb", check) as handle:
        for chunk in [data] if isinstance(data, bytes | bytearray) else data:
            handle.write(chunk)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Indented, newline-terminated JSON."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save `obj` as the whole file; a refused write (a full disk) is an OSError naming
    `path`, not torch's RuntimeError."""
    import torch  # here, so that the data chain, which writes no tensors, loads without torch

    with atomic_open(path, "wb") as handle:
        try:
            torch.save(obj, handle)
        except RuntimeError as err:
            cause = io_errors.os_error_behind(err)
            if cause is None:
                raise
            raise OSError(cause.errno, cause.strerror) from err


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
