"""The `local` launcher: the commands on this machine, `max_parallel` at a time."""

from __future__ import annotations

from collections.abc import Sequence

from domainbed.launchers.launcher import register_launcher
from domainbed.launchers.pool import run_pool, slot_environments


@register_launcher("local", max_parallel=True)
def local_launcher(commands: Sequence[str], max_parallel: int = 1) -> list[str]:
    """Run the commands on this machine, `max_parallel` at a time (default: one after another),
    each with its share of the cores for its data loaders; the commands that failed."""
    return run_pool(commands, slot_environments([{} for _ in range(max_parallel)]))
