"""A job directory's live lock: whether a process is still writing it.

A sweep's launcher can die (SIGKILL, a lost login session) while the jobs it started run on,
and their directories then look like those of killed jobs. Deleting them would pull the files
from under live processes. So a training run holds an exclusive `flock` on
`<output_dir>/.running.lock` for as long as it runs (the kernel drops it when the process ends,
however it ends), and a sweep deletes a job directory only while it holds that lock itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator

from domainbed.lib.cli import UsageError

LOCK_NAME = ".running.lock"


class JobRunning(UsageError):
    """Another live process holds the job directory's lock; the message names it."""


def _lock(output_dir: str, create: bool) -> int | None:
    """A descriptor holding the directory's lock, or None if a live process holds it (or,
    without `create`, if no run ever took it)."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(os.path.join(output_dir, LOCK_NAME), flags, 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def holder(output_dir: str) -> str:
    """`pid@host` of the process that last took the lock, or '?' if unknown."""
    try:
        with open(os.path.join(output_dir, LOCK_NAME)) as handle:
            return handle.read().strip() or "?"
    except OSError:
        return "?"


def is_running(output_dir: str) -> bool:
    """True while a live process holds the directory's lock."""
    if not os.path.exists(os.path.join(output_dir, LOCK_NAME)):
        return False
    fd = _lock(output_dir, create=False)
    if fd is None:
        return True
    os.close(fd)
    return False


@contextlib.contextmanager
def running(output_dir: str) -> Iterator[None]:
    """Hold the lock of `output_dir` while the body runs; JobRunning if another process does.

    A directory that does not exist yet is left alone: it is no sweep's job (a sweep creates
    its jobs' directories before it starts them), and the run creates it only once its setup
    has succeeded.
    """
    if not os.path.isdir(output_dir):
        yield
        return
    fd = _lock(output_dir, create=True)
    if fd is None:
        raise JobRunning(f"{output_dir} is in use by a running job (pid@host {holder(output_dir)});"
                         " wait for it to finish or stop it first")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def claimed(output_dir: str) -> Iterator[bool]:
    """True, with the lock held for the body, unless a live process holds it: then False.

    A deleter holds the lock while it removes the directory, so no run can take it meanwhile.
    """
    fd = _lock(output_dir, create=True) if os.path.isdir(output_dir) else None
    try:
        yield fd is not None or not os.path.isdir(output_dir)
    finally:
        if fd is not None:
            os.close(fd)
