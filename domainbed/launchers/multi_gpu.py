"""The `multi_gpu` launcher: the commands on this machine, one per visible GPU at a time."""

from __future__ import annotations

from collections.abc import Sequence

from domainbed.launchers.base import SettingError, register_launcher, visible_gpus
from domainbed.launchers.pool import run_pool


def require_gpus() -> None:
    if not visible_gpus():
        raise SettingError("the multi_gpu launcher found no GPU; use --command_launcher local")


@register_launcher("multi_gpu", check=require_gpus)
def multi_gpu_launcher(commands: Sequence[str]) -> list[str]:
    """Run the commands, each job seeing only its own GPU through CUDA_VISIBLE_DEVICES; the
    commands that failed."""
    require_gpus()
    return run_pool(commands, [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in visible_gpus()])
