"""The in-memory floor: ``functools.lru_cache`` holding the pickled result, unpickled on every
hit (a disk cache cannot return the stored object itself: it must at least unpickle it)."""

import functools
import pickle
import sys
from typing import Callable

from .base import Adapter


class LruCachePickle(Adapter):
    name = "lru_cache+pickle"
    label = "lru_cache + pickle.loads (floor)"
    floor = True
    persistent = False
    shared_between_processes = False

    def setup(self) -> None:
        pass

    def cached(self, function: Callable) -> Callable:
        @functools.lru_cache(maxsize=None)
        def pickled(*args):
            return pickle.dumps(function(*args), protocol=pickle.HIGHEST_PROTOCOL)

        @functools.wraps(function)
        def wrapper(*args):
            return pickle.loads(pickled(*args))
        return wrapper

    def version(self) -> str:
        return f"Python {sys.version.split()[0]}"
