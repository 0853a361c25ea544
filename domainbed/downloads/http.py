"""Downloads that give up quickly when there is no network.

Python's urllib waits indefinitely by default; on an offline machine that would turn every
fallback chain into a hang, so every request here carries a timeout.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from domainbed.lib import atomic

DEFAULT_TIMEOUT_S = 8.0
_USER_AGENT = "domainbed-itl-downloader"


class SourceUnreachable(RuntimeError):
    """The server could not be reached or refused the request."""


def _stream(url: str, timeout: float) -> Iterator[bytes]:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                yield chunk
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise SourceUnreachable(f"{url}: {reason}") from err


def download(
    url: str,
    dest: Path,
    check: Callable[[Path], None] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Fetch `url` into `dest` atomically; `check` vets the bytes before they get their name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(dest, _stream(url, timeout), check=check)
