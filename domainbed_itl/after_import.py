"""Run a function right after a named module finishes executing, without importing it first.

ITL's algorithms reach a DomainBed registry that may not be imported yet in two ways: the
public hook (a clone's registries) and `import domainbed_itl` (this engine's). Both run at
interpreter start or before `domainbed` is imported, so this module imports nothing but sys.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing itself costs milliseconds at every interpreter start
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

    Then = Callable[[ModuleType], None]


class _LoaderThen:
    """A module's own loader, with `then(module)` run after the module executes."""

    def __init__(self, inner: Any, then: Then):
        self._inner = inner
        self._then = then

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        self._then(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def spec_then(finder: object, fullname: str, path: Any, target: Any, then: Then) -> Any:
    """The spec the other finders on sys.meta_path give `fullname`, its loader made to run
    `then` after executing the module; None when none of them finds it."""
    for other in sys.meta_path:
        if other is finder or not hasattr(other, "find_spec"):
            continue
        spec = other.find_spec(fullname, path, target)
        if spec is not None:
            break
    else:
        return None
    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
        spec.loader = _LoaderThen(spec.loader, then)
    return spec
