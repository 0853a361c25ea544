"""Connecting to Ray: one rule for the `ray` launcher and for meta-learning's Ray backend.

A cluster address is `auto` (the cluster `ray start` left on this machine), host:port (the
address `ray start --head` prints: this process joins the cluster as a driver) or
ray://host:port (a Ray Client server, for a driver outside the cluster's network). `ray.init`
takes all three, and both users of this module need only what every one of them gives: tasks,
their cancellation and the object store. A concrete address is probed first, so that one
nobody answers at is refused in seconds rather than after Ray's long retries.

Failures are `SettingError`s naming the address as the user gave it (`given_as`: an environment
variable or a command-line flag) and what to do instead.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from domainbed.launchers.launcher import SettingError

CONNECT_TIMEOUT_S = 5.0
_QUIET = {"log_to_driver": False, "logging_level": logging.WARNING}


def import_ray(needed_by: str) -> Any:
    """The `ray` module; SettingError saying how to install it if it is missing."""
    try:
        import ray
    except ImportError:
        raise SettingError(f"{needed_by} needs Ray: pip install 'domainbed-itl[cluster]'") from None
    return ray


def _naming(address: str, given_as: str) -> tuple[str, str]:
    """How messages show the address, and how to do without it."""
    if given_as.startswith("--"):
        return f"{given_as} {address}", f"leave {given_as} out"
    return address, f"unset {given_as}"


def check_address(address: str, given_as: str) -> None:
    """Refuse an address of none of the three forms, or one nobody answers at."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SettingError(f"{given_as} must look like host:port, ray://host:port or auto, "
                           f"got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        shown, instead = _naming(address, given_as)
        raise SettingError(
            f"cannot reach a Ray cluster at {shown} ({err.strerror or err}): start it with "
            f"`ray start --head`, or {instead} to start Ray here"
        ) from None


def connect(address: str, given_as: str, needed_by: str) -> None:
    """Join the cluster at `address` (checked first); unless Ray is already initialised here."""
    ray = import_ray(needed_by)
    check_address(address, given_as)
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, **_QUIET)
    except (ConnectionError, RuntimeError) as err:
        hint = ""
        if not os.environ.get("RAY_AUTH_MODE"):
            hint = (" (a cluster with token authentication also needs RAY_AUTH_MODE=token "
                    "and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        shown, _ = _naming(address, given_as)
        raise SettingError(f"cannot connect to the Ray cluster at {shown}: "
                           f"{' '.join(str(err).split())[:300]}{hint}") from None


def start_local(needed_by: str, num_cpus: int, num_gpus: int, object_store_bytes: int) -> bool:
    """Start a Ray instance of this process's own; False if Ray is already initialised here.

    "local": a new instance even where `ray start` left a cluster that ray.init() would join.
    """
    ray = import_ray(needed_by)
    if ray.is_initialized():
        return False
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
             object_store_memory=object_store_bytes, include_dashboard=False, **_QUIET)
    return True
