"""Launchers: how a sweep's shell commands get run, one module each.

`local`, `multi_gpu` and `dummy` run or print the commands here; `slurm` (job arrays through
submitit) and `ray` (one Ray task per job) hand them to a cluster, importing their scheduler's
client library only when used, so that both stay listed where it is not installed (their
checks then say what to install). `base` says what a launcher is; `pool`, `processes`,
`settings` and `ray_connection` are what launchers share.

Every module of this package is imported here, so a launcher is one new module that calls
`register_launcher`. Other packages add theirs through the `domainbed.launchers` entry point
group (an entry point names a module that registers its launcher, or a `Launcher`), loaded
after this package's own; set DOMAINBED_NO_PLUGINS=1 to skip them.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from importlib.metadata import entry_points

from domainbed.launchers.launcher import REGISTRY, Launcher, SettingError, register_launcher

__all__ = ["REGISTRY", "Launcher", "SettingError", "register_launcher"]


def _import_modules() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def _load_plugins() -> None:
    if os.environ.get("DOMAINBED_NO_PLUGINS") == "1":
        return
    for entry in entry_points(group="domainbed.launchers"):
        loaded = entry.load()
        if isinstance(loaded, Launcher):
            register_launcher(loaded.name)(loaded)


_import_modules()
_load_plugins()
