"""The fsync floor: what one durable commit cannot go below on the filesystem under test.

A ``standard`` miss commits one LMDB write transaction with ``sync=True, metasync=False``: it
writes the transaction's dirty pages (``pwrite``), then one ``fdatasync``, then the meta page
(not synced until the next commit). No durable commit can cost less than one 4 KiB write
followed by ``fdatasync`` on the same filesystem, so that loop is the floor issue 15 measures
the ``standard`` miss against. Two variants:

* *overwrite*: the same 4 KiB block, already allocated, rewritten and ``fdatasync``-ed each
  time. LMDB is copy-on-write: a commit writes its pages into pages freed two transactions
  before, in place, so most commits change no file metadata. Measured with py-lmdb (``sync``,
  no ``metasync``, 16-byte keys, ~330-byte values, 500 commits into stores of 0 to 100,000
  entries): 50-55 of 500 commits (about 1 in 10) grew ``data.mdb``; the others rewrote pages
  in place. ``strace -f -c`` of 300 ``standard`` misses of this project: 300 ``fdatasync``,
  about 3.8 ``pwrite64`` per miss. So *overwrite* is what a cache commit does, and it is the
  floor of the target.
* *append*: each 4 KiB block written past the end of the file: the file grows, so
  ``fdatasync`` must also commit the new size and allocation (on ext4, a journal commit). This
  is the rarer commit that grows the store; shown beside for comparison.

Each figure is the median of the per-iteration times (a ``pwrite`` and an ``fdatasync``), after
one untimed warm-up iteration. On a shared machine other processes' syncs make this floor vary
by an order of magnitude from one second to the next (measured here: 80 µs to 3.7 ms medians
of 200 iterations, minutes apart), so the suite measures it several times in a run (see
``Runner``), and the ``standard`` miss target compares misses with floor iterations that
alternate with them in the same process (``scenarios/small.py``).
"""

import os
import shutil
import statistics
import tempfile
import time
from typing import Dict, List

BLOCK_BYTES = 4096
#: where the runner's samples go in the results (a scenario and a library of their own)
FLOOR_SCENARIO, FLOOR_LIBRARY = "floor", "fsync"
MODES = ("overwrite", "append")
#: what the target compares with: what most LMDB commits do (see above)
TARGET_MODE = "overwrite"

_sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
SYNC_CALL = _sync.__name__


class FloorFile:
    """A file in ``folder`` that one floor iteration at a time is measured on."""

    def __init__(self, folder: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.block = os.urandom(BLOCK_BYTES)
        self.path = os.path.join(folder, f"fsync-floor-{mode}-{os.getpid()}")
        self.descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.blocks = 0
        self.iteration()  # warm-up: allocates the overwritten block, opens the journal

    def iteration(self) -> float:
        """One 4 KiB write and its sync; µs."""
        offset = 0 if self.mode == "overwrite" else self.blocks * BLOCK_BYTES
        began = time.perf_counter()
        os.pwrite(self.descriptor, self.block, offset)
        _sync(self.descriptor)
        elapsed = time.perf_counter() - began
        self.blocks += 1
        return elapsed * 1e6

    def close(self) -> None:
        os.close(self.descriptor)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def measure(tmp: str, iterations: int) -> Dict[str, float]:
    """Median µs per iteration of each mode, in a new folder under ``tmp`` (removed after).

    The modes alternate iteration by iteration, so that a burst of other processes' I/O falls
    on both alike."""
    folder = tempfile.mkdtemp(prefix="ptd-bench-fsync-", dir=tmp)
    files = [FloorFile(folder, mode) for mode in MODES]
    times: Dict[str, List[float]] = {mode: [] for mode in MODES}
    try:
        for _ in range(iterations):
            for handle in files:
                times[handle.mode].append(handle.iteration())
    finally:
        for handle in files:
            handle.close()
        shutil.rmtree(folder, ignore_errors=True)
    return {mode: statistics.median(values) for mode, values in times.items()}
