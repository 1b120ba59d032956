"""The six scenarios of issue 4 and issue 12's ``remote`` (the shared tier), one module each.

Each module has ``NAME``, ``TITLE``, ``summary(settings)`` (what it measures, for the report),
``drive(runner, library, adapter_class)`` (runner side: which phases to run, in which folders),
``phase_*`` functions (worker side: the timed work) and ``columns(settings)`` (its table).
"""

import importlib
from types import ModuleType
from typing import List

SCENARIOS: List[str] = ["small", "growth", "large", "concurrency", "hashing", "disk", "remote"]


def scenario_module(name: str) -> ModuleType:
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    return importlib.import_module(f"{__name__}.{name}")


__all__ = ["SCENARIOS", "scenario_module"]
