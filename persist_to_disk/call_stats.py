"""What the cache did for one decorated function in this process: ``f.cache_info()``'s
``hits``, ``misses``, ``computed_seconds`` and ``saved_seconds``, and their sum over every
function, ``persist_to_disk.cache_stats()``.

* ``hits``: calls that returned a stored result (also one found after waiting for another
  process that computed it).
* ``misses``: calls that looked and did not find one (``RECACHE`` included, and ``READONLY``
  calls that raised ``CacheMissError``); calls in ``NOCACHE`` mode, ``CHECKONLY`` and
  ``is_cached()`` count as neither.
* ``computed_seconds``: time spent running the function on misses.
* ``saved_seconds``: the stored compute time of every result a hit returned (what computing it
  again would have cost, as measured when it was stored).

Counting must cost a hit nothing measurable and stay exact with threads. How, depends on the
interpreter (:data:`SHARED_COUNTERS`):

* CPython 3.10 and later with the GIL: plain ``+=`` on the function's counters. CPython switches
  threads only at calls and backward jumps there, never inside ``counter += 1``, so no count
  is lost (8 threads x 200,000 increments: exact on 3.10, 3.11, 3.12 and 3.13). ~0.04 µs a hit.
* CPython 3.9 (which switches between the read and the write of ``+=``: the same test lost 44%
  of the counts), free-threaded builds and other interpreters: one tally per thread, written only
  by its thread and summed by readers. Exact anywhere, but the thread-local lookup costs ~0.25
  µs a hit (4% of a 6 µs hit), measured in the hit path with ``benchmarks/hot_path.py``.

``reset`` never loses a count made meanwhile: it is in this snapshot or in the next.
"""

import sys
import threading
from typing import Dict, List

ZERO = {"hits": 0, "misses": 0, "computed_seconds": 0.0, "saved_seconds": 0.0}
_NAMES = tuple(ZERO)

#: Whether ``+=`` on a shared counter is never interrupted by another thread here.
SHARED_COUNTERS = (sys.implementation.name == "cpython"  # (platform costs ~1.7 ms of import)
                   and sys.version_info >= (3, 10)
                   and getattr(sys, "_is_gil_enabled", lambda: True)())


class CallStats:
    """The counters of one decorated function in this process.

    Where :data:`SHARED_COUNTERS`, the four attributes are the counters (the hit path adds to
    ``hits`` and ``saved_seconds`` inline: ``call.PersistedFunction.fast_path``). Elsewhere
    each thread counts in its own tally (:meth:`tally`, a list ``[hits, misses,
    computed_seconds, saved_seconds]`` that only that thread writes) and the attributes stay 0.
    """

    __slots__ = ("hits", "misses", "computed_seconds", "saved_seconds", "local", "_lock",
                 "_tallies", "_baseline")

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        self.hits = self.misses = 0
        self.computed_seconds = self.saved_seconds = 0.0
        self.local = threading.local()
        self._lock = threading.Lock()
        self._tallies: List[list] = []
        self._baseline = [0, 0, 0.0, 0.0]

    def tally(self) -> list:
        """This thread's tally (without :data:`SHARED_COUNTERS`), created and registered for
        readers on its first count."""
        try:
            return self.local.tally
        except AttributeError:
            tally = self.local.tally = [0, 0, 0.0, 0.0]
            with self._lock:
                self._tallies.append(tally)
            return tally

    if SHARED_COUNTERS:
        def hit(self, saved_seconds: float) -> None:
            self.hits += 1
            self.saved_seconds += saved_seconds

        def miss(self) -> None:
            self.misses += 1

        def computed(self, seconds: float) -> None:
            self.computed_seconds += seconds

        def snapshot(self, reset: bool = False) -> Dict[str, float]:
            """The counters as a dict; with ``reset``, counting starts again from zero (each
            counter is read and zeroed in one uninterruptible step)."""
            if reset:
                with self._lock:
                    hits, self.hits = self.hits, 0
                    misses, self.misses = self.misses, 0
                    computed, self.computed_seconds = self.computed_seconds, 0.0
                    saved, self.saved_seconds = self.saved_seconds, 0.0
            else:
                hits, misses = self.hits, self.misses
                computed, saved = self.computed_seconds, self.saved_seconds
            return {"hits": hits, "misses": misses, "computed_seconds": computed,
                    "saved_seconds": saved}
    else:
        def hit(self, saved_seconds: float) -> None:
            tally = self.tally()
            tally[0] += 1
            tally[3] += saved_seconds

        def miss(self) -> None:
            self.tally()[1] += 1

        def computed(self, seconds: float) -> None:
            self.tally()[2] += seconds

        def snapshot(self, reset: bool = False) -> Dict[str, float]:
            """The counters as a dict; with ``reset``, counting starts again from zero (the
            tallies are never written by another thread: a baseline moves instead)."""
            with self._lock:
                totals = [sum(tally[field] for tally in self._tallies) for field in range(4)]
                counts = {name: totals[field] - self._baseline[field]
                          for field, name in enumerate(_NAMES)}
                if reset:
                    self._baseline = totals
            return counts

    def after_fork(self) -> None:
        """A forked child starts counting from zero, with a lock no parent thread holds."""
        self._start()
