"""Lazy package exports: ``from tregpd.model import simulate`` works as before, but importing a package (e.g.
``tregpd.errors`` on the way to building the command-line parser) no longer imports numba, scipy or
pandas. Each package's ``__init__`` lists which submodule defines each public name; the submodule is imported on
first access of the name (PEP 562 module ``__getattr__``) and the value cached in the package namespace.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Mapping, Sequence


class _LazyPackage(types.ModuleType):
    """Module type of a lazy package.

    When a submodule has the same name as one of the package's exports (``tregpd.model.simulate`` defines
    ``simulate``), importing the submodule binds the export, not the submodule, on the package: the same result
    as the eager ``from .simulate import simulate`` it replaces.
    """

    def __setattr__(self, name, value):
        exports = self.__dict__.get("_LAZY_EXPORTS", {})
        if (isinstance(value, types.ModuleType) and exports.get(name) == name
                and value.__name__ == f"{self.__name__}.{name}"):
            value = getattr(value, name)
        super().__setattr__(name, value)


def attach(package: str, exports: Mapping[str, Sequence[str]]) -> list[str]:
    """Make ``package`` (its ``__name__``) export, lazily, ``exports`` = {submodule: names}; returns ``__all__``.

    Call from the package ``__init__`` as ``__all__ = attach(__name__, {...})``.
    """
    module = sys.modules[package]
    where = {name: sub for sub, names in exports.items() for name in names}

    def __getattr__(name):
        sub = where.get(name)
        if sub is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{sub}"), name)
        module.__dict__[name] = value
        return value

    def __dir__():
        return sorted(set(module.__dict__) | set(where))

    module.__dict__["_LAZY_EXPORTS"] = where
    module.__getattr__ = __getattr__
    module.__dir__ = __dir__
    module.__class__ = _LazyPackage
    return list(where)
