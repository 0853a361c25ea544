"""Output directories that are checked before the work starts, not after.

A command that loads data for seconds or trains for hours must not find out at its first write
that `--output_dir` names a file, lies below a file, sits on a read-only file system or where
it may not write. These checks turn each of those into one line (an OutputDirError, a
UsageError, which every command reports as bad input) before anything is loaded or written.
"""

from __future__ import annotations

import os
from pathlib import Path

from domainbed.lib.cli import UsageError


class OutputDirError(UsageError, ValueError):
    """The output directory cannot be created or written; the message says which and why."""


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def check_output_dir(path: str | os.PathLike, flag: str = "--output_dir") -> Path:
    """Raise OutputDirError unless `path` is a writable directory or could be created as one.

    Nothing is created: a command that later refuses its other arguments leaves no trace.
    """
    path = Path(path)
    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        what = "is a file" if existing == path.absolute() else f"lies below the file {existing}"
        raise OutputDirError(f"{flag} {path} {what}; choose a directory path")
    if _read_only(existing):
        raise OutputDirError(f"{flag} {path}: {existing} is on a read-only file system; "
                             "choose a directory on a writable one")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputDirError(f"{flag} {path}: no permission to write in {existing}; choose "
                             "another directory")
    return path


def _read_only(directory: Path) -> bool:
    """True when `directory` lies on a file system mounted read-only (which no permission
    change fixes, so it gets its own message)."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def make_output_dir(path: str | os.PathLike, flag: str = "--output_dir") -> Path:
    """Check `path` as check_output_dir does, then create it (and its parents)."""
    path = check_output_dir(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"{flag} {path} cannot be created ({err.strerror or err}); "
                             "choose another directory") from err
    return path
