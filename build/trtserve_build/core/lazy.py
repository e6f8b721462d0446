"""The one way the build loads heavy third-party modules: ``torch = lazy_import("torch")``.

Written at module top, the name is bound at import time but the module is imported only on
first attribute access, so ``trtserve-build engines`` with every artifact current never pays
for importing torch, transformers or TensorRT. No module of this package imports anything
inside a function (tests/unit/test_architecture.py checks it).
"""
from __future__ import annotations

import importlib
import types
from typing import Any


class LazyModule(types.ModuleType):
    """A stand-in module that imports the real one on first attribute access."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_target"] = None

    def _load(self) -> types.ModuleType:
        target = self.__dict__["_lazy_target"]
        if target is None:
            target = importlib.import_module(self.__name__)
            self.__dict__["_lazy_target"] = target
        return target

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())


def lazy_import(name: str) -> Any:
    """A module object for ``name`` that is imported when first used (ImportError then)."""
    return LazyModule(name)


def import_module(name: str) -> types.ModuleType:
    """Import ``name`` now (for optional dependencies whose absence is handled by the caller)."""
    return importlib.import_module(name)
