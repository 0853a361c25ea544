"""The `multi_gpu` launcher: the commands on this machine, `DOMAINBED_JOBS_PER_GPU` (default 1)
at a time on each visible GPU, since one small job (an MNIST run) cannot keep a GPU busy."""

from __future__ import annotations

import os
from collections.abc import Sequence

from domainbed.launchers.launcher import SettingError, register_launcher, visible_gpus
from domainbed.launchers.pool import run_pool, slot_environments
from domainbed.launchers.settings import env_number

JOBS_PER_GPU_ENV = "DOMAINBED_JOBS_PER_GPU"


def jobs_per_gpu() -> int:
    return int(env_number(os.environ, JOBS_PER_GPU_ENV, 1, int, 1))


def require_gpus() -> None:
    jobs_per_gpu()
    if not visible_gpus():
        raise SettingError("the multi_gpu launcher found no GPU; use --command_launcher local")


@register_launcher("multi_gpu", check=require_gpus)
def multi_gpu_launcher(commands: Sequence[str]) -> list[str]:
    """Run the commands, each job seeing only its own GPU through CUDA_VISIBLE_DEVICES and
    its share of the cores for its data loaders; the commands that failed."""
    require_gpus()
    gpus = [gpu for gpu in visible_gpus() for _ in range(jobs_per_gpu())]
    return run_pool(commands, slot_environments([{"CUDA_VISIBLE_DEVICES": gpu} for gpu in gpus]))
