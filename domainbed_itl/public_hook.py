"""Make ERM_ITL, RSC_ITL, ... available in an unmodified clone of the public DomainBed.

The public DomainBed has no plugin mechanism: its algorithm and hyperparameter registries are
module globals. So installing this project puts `domainbed_itl_autoregister.pth` into
site-packages; at interpreter start it calls `install()`, which adds an import finder. When a
module named `domainbed.algorithms` or `domainbed.hparams_registry` that is *not* this
project's engine (whose `domainbed.ENGINE` is "domainbed-itl") finishes executing, the finder
adds our algorithms to it (domainbed_itl.algorithms.public). Every interpreter of the
environment does this, so the subprocesses a sweep launches do too.

Cost at start-up: this module (no imports beyond os, sys, after_import and plugin, not even
importlib.abc, which alone takes ~30 ms) and one dictionary lookup per later import.
Nothing here may break an interpreter: any failure becomes one warning, and the clone runs as
if we were absent. Set DOMAINBED_ITL_AUTOREGISTER=0 to switch it off.
"""

from __future__ import annotations

import os
import sys

from domainbed_itl.after_import import spec_then
from domainbed_itl.plugin import OUR_ENGINE

ENV_SWITCH = "DOMAINBED_ITL_AUTOREGISTER"
_INJECTORS = {
    "domainbed.algorithms": "register_algorithms",
    "domainbed.hparams_registry": "register_hparams",
}
_warned = False


def _warn_once(message: str) -> None:
    """One line on stderr, once per interpreter (the warnings module would print our source)."""
    global _warned
    if not _warned:
        _warned = True
        sys.stderr.write(f"domainbed-itl: warning: {message} "
                         f"(set {ENV_SWITCH}=0 to switch the hook off)\n")


def _inject(module) -> None:
    try:
        from domainbed_itl.algorithms import public

        result = getattr(public, _INJECTORS[module.__name__])(module)
        if result:
            _warn_once(f"the DomainBed at {module.__file__} lacks {', '.join(result)}; "
                       "the variants built on it are not registered")
    except Exception as error:  # noqa: BLE001 - the clone must keep working whatever happens
        _warn_once(f"could not register ITL algorithms into {module.__name__}: "
                   f"{type(error).__name__}: {error}")


class AutoRegisterFinder:
    """Finds nothing itself; wraps the loader the other finders return for the two targets."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _INJECTORS:
            return None
        try:
            parent = sys.modules.get("domainbed")
            if parent is None or getattr(parent, "ENGINE", None) == OUR_ENGINE:
                return None
            return spec_then(self, fullname, path, target, _inject)
        except Exception as error:  # noqa: BLE001
            _warn_once(f"import hook failed for {fullname}: {type(error).__name__}: {error}")
            return None


def install() -> None:
    """Put the finder first on sys.meta_path, once; a no-op when switched off."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    if not any(isinstance(f, AutoRegisterFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, AutoRegisterFinder())
