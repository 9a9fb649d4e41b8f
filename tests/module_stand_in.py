"""A module as one module under test sees it, with a few names replaced: patching
``that_module.time.monotonic`` would replace ``time.monotonic`` for every thread in the test
process (gRPC's, Ray's, event loops'), so a test replaces the module's own reference instead."""

from __future__ import annotations

from types import ModuleType
from typing import Any


class ModuleStandIn:
    """`module`'s attributes, except those given as keyword arguments."""

    def __init__(self, module: ModuleType, **replaced: Any) -> None:
        self._module = module
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)
