"""The public DomainBed's `domainbed.command_launchers`, for code written against it: the
launchers themselves live in `domainbed.launchers`, one module each."""

from domainbed.launchers import REGISTRY, Launcher, register_launcher
from domainbed.launchers.dummy import dummy_launcher
from domainbed.launchers.local import local_launcher
from domainbed.launchers.multi_gpu import multi_gpu_launcher

__all__ = [
    "REGISTRY",
    "Launcher",
    "dummy_launcher",
    "local_launcher",
    "multi_gpu_launcher",
    "register_launcher",
]
