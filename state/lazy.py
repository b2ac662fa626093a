"""A package's names loaded from its submodules on first use (PEP 562's module ``__getattr__``).

Building a frozen dataclass costs about a millisecond (its methods are generated and compiled at import time);
the record packages hold about sixty, and a tool's start-up should pay only for the ones it uses: ``moreh-smi``
needs its status records, not the dashboard's or the scheduler's.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose name ``n`` lives in submodule ``where[n]``."""

    def load(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # found directly from now on
        return value

    def names() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return load, names
