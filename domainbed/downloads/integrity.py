"""Size and MD5 checks (once per process for a file that has not changed).

The data chain writes through `domainbed.lib.atomic` with `verify` as the check, so a file that
fails its checksum never appears under its final name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


class CorruptFileError(RuntimeError):
    """A file exists but does not have the expected size or checksum."""


@dataclass(frozen=True)
class FileSpec:
    """What a finished file must look like: its name, and its size and MD5 where known."""

    name: str
    md5: str
    size: int | None = None


def md5_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_size(path: Path, spec: FileSpec) -> None:
    """Cheap completeness check: catches truncation without reading the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    if spec.size is not None and path.stat().st_size != spec.size:
        raise CorruptFileError(
            f"{path} has {path.stat().st_size} bytes, expected {spec.size} (truncated or corrupt)"
        )


def verify(path: Path, spec: FileSpec) -> None:
    """Full check (size, then MD5); raises rather than returning a flag so nobody ignores it."""
    check_size(path, spec)
    actual = md5_of(path)
    if actual != spec.md5:
        raise CorruptFileError(f"{path} has MD5 {actual}, expected {spec.md5} (corrupt)")


# Files this process has already verified, keyed by what changes when a file is rewritten.
_VERIFIED: set[tuple[str, int, int, int, int, str]] = set()


def verify_once(path: Path, spec: FileSpec) -> None:
    """`verify`, skipped when this process already verified the same file unchanged (same
    device, inode, size and modification time), so every dataset load checks the bytes it reads
    without hashing them again and again."""
    check_size(path, spec)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns,
           spec.md5)
    if key in _VERIFIED:
        return
    verify(path, spec)
    _VERIFIED.add(key)

