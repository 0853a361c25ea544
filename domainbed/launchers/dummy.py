"""The `dummy` launcher: shows what a sweep would do and runs nothing."""

from __future__ import annotations

from collections.abc import Sequence

from domainbed.launchers.launcher import register_launcher


@register_launcher("dummy", dry_run=True)
def dummy_launcher(commands: Sequence[str]) -> None:
    """Print the commands instead of running them."""
    for command in commands:
        print(f"Dummy launcher: {command}")
