"""What the scenarios ask of a caching library, whatever the library is.

An adapter runs inside a worker process (one library per process, see ``worker.py``): it
imports its library, points it at the job's fresh folder, and wraps the workload functions.
Everything that differs between libraries (decorating, the fastest honest way to fill a store,
forcing a recomputation, compacting) lives in the adapter, so that every scenario times the
same calls for every library.
"""

from typing import Any, Callable, Iterable, Optional


class Unsupported(Exception):
    """The library cannot do what a scenario asks (the reason is shown in the table)."""


class Adapter:
    #: registry key, used on the command line and in results
    name = ""
    #: how the library appears in tables and plots
    label = ""
    #: results outlive the process (False for an in-memory cache: no fresh-process or disk row)
    persistent = True
    #: processes share one store (False: the multi-process scenario does not apply)
    shared_between_processes = True
    #: the adapter whose process fills stores for this one, when filling with other settings
    #: produces the same store (our standard durability is filled with the fast setting)
    fill_with: Optional[str] = None
    #: which interpreter runs it: "main" or "ptd-0.0.7" (its own virtual environment)
    interpreter = "main"
    #: this project: its figures are what the tables are for, so it is never skipped for time
    subject = False
    #: a lower bound to compare with, not a cache one would deploy (drawn dashed)
    floor = False
    #: ``fill`` writes everything at once (rewriting files it already wrote if called again):
    #: fill a size in one call rather than in chunks
    bulk_fill = False
    #: every stored call is synced to disk before the call returns (one fsync per commit):
    #: the small-result scenario times its misses against the fsync floor, paired
    syncs_each_call = False

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def setup(self) -> None:
        """Import the library and point it at ``self.folder`` (timed as the import cost)."""
        raise NotImplementedError

    def cached(self, function: Callable) -> Callable:
        """``function`` wrapped by the library's cache, storing under ``self.folder``."""
        raise NotImplementedError

    def fill(self, cached: Callable, function: Callable, arguments: Iterable[tuple]) -> None:
        """Store ``function(*args)`` for every ``args``, as ``cached`` would, as fast as the
        library allows. The default calls ``cached``; adapters with a faster way that leaves
        the same store override it."""
        for args in arguments:
            cached(*args)

    def recompute(self, cached: Callable, *args: Any) -> None:
        """Compute the call again and store the new result over the old one."""
        raise Unsupported("no way to force a recomputation")

    def compact(self, cached: Callable) -> None:
        """Give back the space of superseded records."""
        raise Unsupported("no compaction")

    def version(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the library keeps open (called before the folder is measured)."""
