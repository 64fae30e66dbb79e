"""Names in a module that is imported on first use, not at import time.

The backbone registry names torchvision's builders and weight enums in its entries, but `--help`, `check` and
`report` read only the entries' names and stages: importing torch for them costs seconds. `lazy_module("torch")`
stands for the module; each attribute read from it (`tvm.resnet50`, `tvm.ResNet50_Weights`) is a stand-in that
imports the module the first time it is called, indexed, iterated or asked for an attribute.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyAttribute:
    """`module.name`, resolved on first use and then forwarded to."""

    def __init__(self, module: str, name: str):
        self.__name__ = name  # what a weights enum is called, without importing it
        self._module, self._target = module, None

    def resolve(self) -> Any:
        if self._target is None:
            self._target = getattr(importlib.import_module(self._module), self.__name__)
        return self._target

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # our own attributes, and copy/pickle probing: never an import
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    def __getitem__(self, key):
        return self.resolve()[key]

    def __iter__(self):
        return iter(self.resolve())

    def __repr__(self) -> str:
        return f"<lazy {self._module}.{self.__name__}>"


class LazyModule:
    """Stands for a module; `.name` is a `LazyAttribute`, made once per name."""

    def __init__(self, module: str):
        self.__name__ = module

    def __getattr__(self, name: str) -> LazyAttribute:
        if name.startswith("__"):
            raise AttributeError(name)
        attribute = LazyAttribute(self.__name__, name)
        setattr(self, name, attribute)  # later reads are plain attribute reads (a forward pass calls torch.flatten)
        return attribute


def lazy_module(name: str) -> LazyModule:
    return LazyModule(name)
