"""How ITL's algorithms join this project's engine, by either of two routes.

- The `domainbed.plugins` entry point calls `register()` while `domainbed.algorithms` is
  imported: every installed copy has it, so the command lines find ERM_ITL with no import.
- `import domainbed_itl` calls `register_on_import()`: for a checkout on PYTHONPATH without
  installed metadata, or with DOMAINBED_NO_PLUGINS=1.

The second runs whenever this package is imported, including by the public hook's .pth line at
interpreter start, before sys.path holds a clone that may shadow our `domainbed`. So it imports
nothing then: it registers at once only if our engine's algorithms are already loaded, and
otherwise right after they load (and never into a clone, which public_hook serves).
"""

from __future__ import annotations

import sys

from domainbed_itl.after_import import spec_then

OUR_ENGINE = "domainbed-itl"
ALGORITHMS_MODULE = "domainbed.algorithms"


def register() -> None:
    """Import the module whose import registers ITL's algorithms and hyperparameters; nothing
    once the program has blocked this package (None in sys.modules) to run the engine alone."""
    if sys.modules.get("domainbed_itl") is not None:
        import domainbed_itl.algorithms.engine  # noqa: F401


def _ours() -> bool:
    return getattr(sys.modules.get("domainbed"), "ENGINE", None) == OUR_ENGINE


class EngineFinder:
    """Finds nothing itself; makes our engine's algorithm registry, once loaded, register ITL."""

    def find_spec(self, fullname, path, target=None):
        if fullname != ALGORITHMS_MODULE or not _ours():
            return None
        return spec_then(self, fullname, path, target, lambda module: register())


def register_on_import() -> None:
    """Register into our engine now if its algorithms are loaded, else once they are."""
    if ALGORITHMS_MODULE in sys.modules and _ours():
        register()
    elif not any(isinstance(finder, EngineFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, EngineFinder())
