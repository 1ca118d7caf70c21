"""Every strategy module in this package, found by looking (no central list of names).

Each rung file defines a module-level `STRATEGY`; the ladder's order comes from the config, never
from here.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

import tamer.strategies as package
from tamer.strategies.base import Strategy

_NOT_RUNGS = {"base", "registry", "ladder"}


@cache
def all_strategies() -> dict[str, Strategy]:
    found: dict[str, Strategy] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        if module_info.name in _NOT_RUNGS:
            continue
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        strategy = getattr(module, "STRATEGY", None)
        if isinstance(strategy, Strategy):
            found[strategy.name] = strategy
    return found


def names() -> list[str]:
    return sorted(all_strategies())


def get(name: str) -> Strategy:
    return all_strategies()[name]
