"""One adapter per library, all behind the interface of ``base.Adapter``.

Adapters are looked up by name and imported lazily: the worker of persist-to-disk 0.0.7 runs in
another interpreter, where the other libraries (and this project) are not installed.
"""

import importlib
from typing import Dict, List, Tuple

from .base import Adapter, Unsupported

# name -> (module, class), in the order of the tables
_REGISTRY: Dict[str, Tuple[str, str]] = {
    "persist_to_disk": ("ptd_current", "PersistToDisk"),
    "persist_to_disk-fast": ("ptd_current", "PersistToDiskFast"),
    "persist-to-disk-0.0.7": ("ptd_007", "PersistToDisk007"),
    "diskcache": ("diskcache_memoize", "DiskcacheMemoize"),
    "joblib": ("joblib_memory", "JoblibMemory"),
    "cachier": ("cachier_pickle", "CachierPickle"),
    "lru_cache+pickle": ("lru_pickle", "LruCachePickle"),
    "raw-lmdb": ("raw_lmdb", "RawLmdb"),
}

LIBRARIES: List[str] = list(_REGISTRY)
OURS = "persist_to_disk"
OURS_FAST = "persist_to_disk-fast"


def adapter_class(name: str) -> type:
    """The adapter class of ``name`` (importing only its module, not its library)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown library {name!r}; choose from {', '.join(LIBRARIES)}")
    module, attribute = _REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)


__all__ = ["Adapter", "LIBRARIES", "OURS", "OURS_FAST", "Unsupported", "adapter_class"]
