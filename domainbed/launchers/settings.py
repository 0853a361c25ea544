"""Reading a cluster launcher's settings from environment variables, so that every sweep
script takes them unchanged; a bad value is a `SettingError` naming the variable."""

from __future__ import annotations

from collections.abc import Mapping

from domainbed.launchers.launcher import SettingError


def env_number(environ: Mapping[str, str], name: str, default: float | None, kind: type,
               minimum: float) -> float | None:
    """`environ[name]` as an int or float no smaller than `minimum`; `default` when unset."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        what = "an integer" if kind is int else "a number"
        raise SettingError(f"{name} must be {what} >= {minimum:g}, got {raw!r}")
    return value


def env_flag(environ: Mapping[str, str], name: str) -> bool:
    """`environ[name]` as 1/0 (true/false, yes/no); False when unset."""
    raw = environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise SettingError(f"{name} must be 1 or 0, got {raw!r}")
