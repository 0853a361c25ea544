"""One line for a file operation the machine refused: which file, and what to free or fix.

A full disk, a used-up quota, a file-size limit, a read-only mount or a missing permission is
not a bug of the program and not bad input: the user frees space or fixes the mount and reruns.
Every command reports such an `OSError` the same way, with `describe`, on one line and without
a traceback; the atomic writes (`domainbed.lib.atomic`) guarantee nothing was left half written.
"""

from __future__ import annotations

import errno

# What the user can do about each refusal, by errno.
_ADVICE: dict[int, str] = {
    errno.ENOSPC: "the file system is full: free space on it, or choose a directory on another one",
    errno.EDQUOT: "the disk quota is used up: free space within it, or choose a directory "
                  "outside it",
    errno.EFBIG: "the file would exceed the file-size limit (ulimit -f) or the file system's "
                 "largest file: raise the limit, or choose a directory on another file system",
    errno.EROFS: "the file system is read-only: choose a directory on a writable one",
    errno.EACCES: "fix the permissions, or choose another path",
    errno.EPERM: "fix the permissions, or choose another path",
    errno.ENOTDIR: "part of the path is a file, not a directory: choose another path",
    errno.EISDIR: "the path is a directory, not a file: choose another path",
}


def is_refusal(err: BaseException) -> bool:
    """True for an OSError the user fixes on the machine (space, limits, mounts, permissions)."""
    return isinstance(err, OSError) and err.errno in _ADVICE


def describe(err: OSError) -> str:
    """`<path>: <reason>; <what to free or fix>`, for one error line."""
    where = f"{err.filename}: " if err.filename else ""
    reason = err.strerror or str(err)
    advice = _ADVICE.get(err.errno)  # type: ignore[arg-type]
    return f"{where}{reason}" + (f"; {advice}" if advice else "")


def os_error_behind(err: BaseException) -> OSError | None:
    """The OSError that caused `err`, if any.

    torch.save reports a failed write of its zip container as a RuntimeError (`[enforce fail at
    inline_container.cc] unexpected pos`) raised while handling the file object's OSError, so
    the OSError is found in the exception's context.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
