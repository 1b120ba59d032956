"""Processes for the concurrent-compaction test: writers, readers and a compactor on one store.

Run as ``python -m compaction_workers ROLE EVENTS_FOLDER [ARGS]`` with the test's project folder
as working directory, so every process uses the same cache of :func:`record`.

* A writer stores calls ``record(writer, j)`` one after another; every third call is then
  recomputed (RECACHE: a superseded version for compaction to drop) and every seventh is
  forgotten (a tombstone). After each store *returned* it appends one line to its own log, so
  the log lists exactly what the cache promised to keep.
* A reader picks calls the writers' logs say are stored (never the forgotten ones) and reads
  them READONLY: a miss raises, so a lost or hidden entry fails the test, and a value that is
  not the call's own is reported.
* The compactor compacts every store of :func:`record` in a loop until told to stop, and
  reports how many compactions ran and how many records they carried over from concurrent
  writers.

Every process writes its failures to ``<events>/errors-<role>-<pid>.txt``; the test reads them.
"""

import json
import os
import random
import sys
import time
import traceback

import persist_to_disk as ptd
from persist_to_disk.engine import compact, find_stores

PAYLOAD = "x" * 300


@ptd.persistf(durability="fast")
def record(writer: int, j: int) -> dict:
    return {"writer": writer, "j": j, "payload": PAYLOAD}


def expected(writer: int, j: int) -> dict:
    return {"writer": writer, "j": j, "payload": PAYLOAD}


def forgotten(j: int) -> bool:
    return j % 7 == 6


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def write(events: str, writer: int, count: int) -> None:
    log = os.path.join(events, f"writer-{writer}.log")
    for j in range(count):
        assert record(writer, j) == expected(writer, j)
        if j % 3 == 0:
            assert record(writer, j, cache_switch=ptd.RECACHE) == expected(writer, j)
        if forgotten(j):
            assert record.forget(writer, j), f"forget({writer}, {j}) found nothing"
            _append(log, f"forgot {j}")
        else:
            _append(log, f"stored {j}")


def _stored(events: str):
    """The calls the writers' logs say are stored: ``[(writer, j), ...]``."""
    calls = []
    for name in os.listdir(events):
        if name.startswith("writer-") and name.endswith(".log"):
            writer = int(name[len("writer-"):-len(".log")])
            with open(os.path.join(events, name)) as handle:
                text = handle.read()
            for line in text.split("\n")[:-1]:  # the last piece may still be being written
                action, j = line.split()
                if action == "stored":
                    calls.append((writer, int(j)))
    return calls


def read(events: str) -> None:
    stop = os.path.join(events, "stop")
    reads = 0
    while not os.path.exists(stop):
        calls = _stored(events)
        for writer, j in random.sample(calls, min(len(calls), 50)):
            value = record(writer, j, cache_switch=ptd.READONLY)
            if value != expected(writer, j):
                raise AssertionError(f"record({writer}, {j}) returned {value!r}")
            reads += 1
    _append(os.path.join(events, "reads.log"), str(reads))


def compact_loop(events: str) -> None:
    stop = os.path.join(events, "stop")
    compactions = carried = 0
    generations = set()
    while not os.path.exists(stop):
        for leaf in find_stores(record.cache_folder()):
            report = compact(leaf)
            compactions += 1
            carried += report.carried_over
            generations.add(report.generation_after)
        time.sleep(0.01)
    summary = {"compactions": compactions, "carried_over": carried,
               "generations": len(generations)}
    _append(os.path.join(events, "compactor.json"), json.dumps(summary))


def main(argv) -> int:
    role, events = argv[0], argv[1]
    try:
        if role == "write":
            write(events, int(argv[2]), int(argv[3]))
        elif role == "read":
            read(events)
        elif role == "compact":
            compact_loop(events)
        else:
            raise ValueError(f"unknown role {role!r}")
    except BaseException:
        _append(os.path.join(events, f"errors-{role}-{os.getpid()}.txt"), traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    # Run the functions of the module imported by its own name, as the final check does, so
    # that every process uses the cache of ``compaction_workers.record``.
    import compaction_workers
    sys.exit(compaction_workers.main(sys.argv[1:]))
