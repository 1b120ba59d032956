"""diskcache ``Cache.memoize``: SQLite (WAL, synchronous=NORMAL: no fsync per commit) for keys
and small values, files for large ones."""

from typing import Any, Callable, Iterable

from .base import Adapter, Unsupported


class DiskcacheMemoize(Adapter):
    name = "diskcache"
    label = "diskcache memoize"

    def setup(self) -> None:
        import diskcache
        self.diskcache = diskcache
        self.cache = diskcache.Cache(self.folder)

    def cached(self, function: Callable) -> Callable:
        return self.cache.memoize()(function)

    def fill(self, cached: Callable, function: Callable, arguments: Iterable[tuple]) -> None:
        """The ``set`` memoize does on a miss, with memoize's own key, batched in transactions
        of 1,000 (one commit per call otherwise)."""
        batch = []
        for args in arguments:
            batch.append(args)
            if len(batch) == 1000:
                self._store(cached, function, batch)
                batch = []
        self._store(cached, function, batch)

    def _store(self, cached: Callable, function: Callable, batch: list) -> None:
        with self.cache.transact():
            for args in batch:
                self.cache.set(cached.__cache_key__(*args), function(*args), retry=True)

    def recompute(self, cached: Callable, *args: Any) -> None:
        # what memoize does on a miss: compute, then set under its key
        self.cache.set(cached.__cache_key__(*args), cached.__wrapped__(*args), retry=True)

    def compact(self, cached: Callable) -> None:
        raise Unsupported("no compaction (SQLite reuses freed pages; no VACUUM in the API)")

    def version(self) -> str:
        return self.diskcache.__version__

    def close(self) -> None:
        self.cache.close()
