"""This project, with its default ``standard`` durability (one fsync per commit) and with
``durability="fast"`` (no fsync)."""

from typing import Any, Callable

from .base import Adapter, Unsupported


class PersistToDisk(Adapter):
    name = "persist_to_disk"
    label = "persist_to_disk (standard)"
    durability = "standard"
    syncs_each_call = True
    subject = True
    # The store a fast-durability process writes is the same file a standard one writes: fill
    # with the fast setting (no fsync per call), then measure with the setting under test.
    fill_with = "persist_to_disk-fast"

    def setup(self) -> None:
        import persist_to_disk as ptd
        if getattr(ptd, "__version__", "") == "0.0.7":
            raise RuntimeError(f"imported {ptd.__file__}, which is not this project")
        self.ptd = ptd
        ptd.config.set_persist_path(self.folder)

    def cached(self, function: Callable) -> Callable:
        return self.ptd.persistf(durability=self.durability)(function)

    def recompute(self, cached: Callable, *args: Any) -> None:
        cached(*args, cache_switch=self.ptd.RECACHE)

    def compact(self, cached: Callable) -> None:
        try:
            from persist_to_disk.engine.compaction import compact
        except ImportError:
            raise Unsupported("compaction is not in this version of the engine") from None
        self.close()
        for store in cached.__persisted__.stores():
            compact(store.path)

    def version(self) -> str:
        return self.ptd.__version__

    def close(self) -> None:
        from persist_to_disk.engine import POOL
        POOL.close_all()


class PersistToDiskFast(PersistToDisk):
    name = "persist_to_disk-fast"
    label = "persist_to_disk (fast)"
    durability = "fast"
    syncs_each_call = False
    fill_with = None
