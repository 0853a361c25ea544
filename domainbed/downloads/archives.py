"""Unpacking downloaded archives without trusting them.

Archives are only ever unpacked into a staging directory; a truncated or corrupt one fails here
(zip CRCs, gzip trailer, tar headers are all checked while reading) before anything reaches the
data directory. Member paths that would escape the destination are refused.
"""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from pathlib import Path

from domainbed.downloads.integrity import CorruptFileError


def check_archive(path: Path) -> None:
    """Cheap sniff run on a fresh download: an HTML error page or a cut-off file is rejected
    before it gets its final name. The full check happens while unpacking."""
    if zipfile.is_zipfile(path):
        return
    try:
        with tarfile.open(path, "r:*") as archive:
            archive.next()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise CorruptFileError(f"{path.name} is not a readable zip or tar archive ({err})") from err


def extract(path: Path, dest: Path) -> None:
    """Unpack `path` into `dest`, verifying every member as it is read."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                root = dest.resolve()
                for member in archive.namelist():
                    if not (dest / member).resolve().is_relative_to(root):
                        raise CorruptFileError(f"{path.name}: member {member!r} escapes {dest}")
                archive.extractall(dest)
        else:
            with tarfile.open(path, "r:*") as archive:
                archive.extractall(dest, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
        raise CorruptFileError(f"{path.name} is corrupt or truncated ({err})") from err
