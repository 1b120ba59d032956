"""Code that tests/test_engine.py runs in other processes (spawned, forked or as a script).

Everything here is importable by a fresh interpreter (``tests/`` is on ``sys.path`` under pytest,
and the script entry point puts it there itself), so the workers need nothing from the test
process but their arguments.
"""

import hashlib
import sys
import time

from persist_to_disk.engine import Record, RecordKind, Store, settings


def digest_for(name) -> bytes:
    """A 16-byte digest derived from ``name`` (what the API layer would compute for a call)."""
    return hashlib.blake2b(repr(name).encode("utf-8"), digest_size=16).digest()


def value_for(name, size: int = 64) -> bytes:
    """``size`` bytes that only ``name`` produces, so a mixed-up value cannot pass."""
    seed = hashlib.sha256(repr(name).encode("utf-8")).digest()
    return (seed * (size // len(seed) + 1))[:size]


def record_for(name, size: int = 64) -> Record:
    return Record(RecordKind.VALUE, time.time(), 0.25, "pickle", "3.11.7",
                  repr(name).encode("utf-8"), value_for(name, size))


# --- two processes growing one store's map at once (spawned) --------------------------------
def grow_store(path: str, worker: int, count: int, value_size: int, map_size: int,
               barrier) -> None:
    """Append ``count`` values of ``value_size`` bytes, then check every value of both workers.

    ``map_size`` is this process's initial map size, so the map starts small and has to grow
    several times while the other worker grows it too.
    """
    settings.install(settings.current().replace(initial_map_size=map_size))
    store = Store(path, "fast")
    barrier.wait()
    for i in range(count):
        store.append(i % 3, digest_for((worker, i)), record_for((worker, i), value_size))
    barrier.wait()  # both have written everything: now read the other worker's values too
    for other in (0, 1):
        for i in range(count):
            record = store.latest(i % 3, digest_for((other, i)))
            if record is None or record.value_blob != value_for((other, i), value_size):
                raise AssertionError(f"worker {worker} cannot read value {i} of worker {other}")


# --- forked children ------------------------------------------------------------------------
def append_in_forked_child(path: str, worker: int, count: int) -> None:
    """Use a store the parent process already had open, then write ``count`` records."""
    store = Store(path, "standard")
    parent = store.latest(0, digest_for("parent"))
    if parent is None or parent.value_blob != value_for("parent"):
        raise AssertionError("the forked child cannot read the parent's record")
    for i in range(count):
        store.append(i % 4, digest_for(("child", worker, i)), record_for(("child", worker, i)))


# --- a writer that gets killed (run as a script) --------------------------------------------
def append_until_killed(path: str, durability: str) -> None:
    """Append forever; after each append has returned print ``<i> <sequence>``, flushed."""
    store = Store(path, durability)
    i = 0
    while True:
        sequence = store.append(i % 5, digest_for(("killed", i)), record_for(("killed", i), 512))
        print(i, sequence, flush=True)
        i += 1


if __name__ == "__main__":
    append_until_killed(sys.argv[1], sys.argv[2])
