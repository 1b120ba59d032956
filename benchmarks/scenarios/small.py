"""Scenario 1: a small result, many distinct calls.

Each repetition is a fresh worker with a fresh folder: it times ``entries`` distinct misses
(compute ``{"i": i, "s": "x"*100}`` and store it), then, after one untimed warm-up pass, three
passes of hits over the same calls in a shuffled order (the warm process). Then a second fresh
process on the same folder times its very first call, a hit whose cost includes opening the
store (the fresh process); the import and decoration before it are timed apart. That fresh
process is started ``first_hit_processes`` times per repetition (each a new interpreter on the
same folder), so that the fresh-process figures of issue 15's targets are medians of more than
a handful of single-shot timings.

For a library that syncs every commit (``syncs_each_call``: ours, ``standard``), the worker
then times ``paired_misses`` more misses (new calls, into the store of ``entries`` entries),
each followed by one fsync-floor iteration (``floor.FloorFile``, overwrite) in the job's work
folder, on the same filesystem: the two medians come from the same seconds of the same
process, so a burst of other processes' I/O, which makes the floor vary tenfold on a shared
machine, weighs on both alike. Issue 15's ``standard`` miss target compares these two.
"""

import os
import statistics
import time

from .. import workload
from ..floor import TARGET_MODE, FloorFile
from .common import (budget_for, computations, estimate_seconds, expect_computations, fill_estimate,
                     format_duration, shuffled, timed_hits)
from ..measurements import Column

NAME = "small"
TITLE = "Small result: miss and hit cost per call"
HIT_PASSES = 3


def summary(settings) -> str:
    return (f"{settings.small_entries:,} distinct calls of a function returning "
            "`{\"i\": i, \"s\": \"x\"*100}`: the cost of a miss (compute and store), of a hit "
            "in a warm process (after a warm-up pass), and of the first hit in a fresh process, "
            "which includes opening the store, with the import and decoration before it "
            f"({settings.first_hit_processes} fresh process(es) per repetition). Then "
            f"{settings.paired_misses} more misses of the syncing setting, each followed by one "
            "fsync-floor iteration in the same process (see *fsync floor*).")


def drive(runner, library: str, adapter_class) -> None:
    settings = runner.settings
    params = {"entries": settings.small_entries,
              "budget_seconds": budget_for(settings, adapter_class),
              "paired_misses": settings.paired_misses if adapter_class.syncs_each_call else 0}
    for repetition in range(settings.repeat):
        with runner.job(NAME, library) as job:
            records = job.phase("run", params)
            if any("skipped" in r or "error" in r for r in records):
                return  # over budget or failing: repeating would only say it again
            if adapter_class.persistent:
                for _ in range(settings.first_hit_processes):
                    job.phase("first_hit", {"entries": settings.small_entries})
            elif repetition == 0:
                job.skip("in memory: nothing outlives the process")


def phase_run(adapter, params: dict, emit) -> None:
    entries, budget = params["entries"], params["budget_seconds"]
    cached = adapter.cached(workload.small_result)
    chunk = max(1, entries // 20)
    samples, spent = [], 0.0
    before = computations("small")
    for start in range(0, entries, chunk):
        stop = min(entries, start + chunk)
        began = time.perf_counter()
        for i in range(start, stop):
            cached(i)
        elapsed = time.perf_counter() - began
        spent += elapsed
        samples.append((stop, elapsed / (stop - start)))
        if stop < entries and spent + estimate_seconds(samples, stop, entries) > budget:
            emit.skip(f"skipped: est. {format_duration(fill_estimate(samples, 0, entries))} "
                      f"for {entries:,} misses")
            return
    expect_computations("small", before, entries, "misses")
    emit("miss_us", spent / entries * 1e6)
    order = shuffled(range(entries), seed=entries)
    for value in timed_hits(cached, "small", [(i,) for i in order], HIT_PASSES, "warm hits"):
        emit("hit_us", value)
    if cached(order[0]) != workload.small_value(order[0]):
        raise AssertionError(f"wrong result for {order[0]}")
    if params.get("paired_misses"):
        _paired_misses(cached, entries, params["paired_misses"], emit)


def _paired_misses(cached, entries: int, count: int, emit) -> None:
    """``count`` misses of new calls, each followed by one fsync-floor iteration in the work
    folder (the current directory); the median of each (see the module's docstring)."""
    floor = FloorFile(os.getcwd(), TARGET_MODE)
    misses, floors = [], []
    before = computations("small")
    try:
        for i in range(entries, entries + count):
            began = time.perf_counter()
            cached(i)
            misses.append((time.perf_counter() - began) * 1e6)
            floors.append(floor.iteration())
    finally:
        floor.close()
    expect_computations("small", before, count, "paired misses")
    emit("paired_miss_us", statistics.median(misses))
    emit("paired_floor_us", statistics.median(floors))


def phase_first_hit(adapter, params: dict, emit) -> None:
    began = time.perf_counter()
    cached = adapter.cached(workload.small_result)
    emit("import_ms", (adapter.setup_seconds + time.perf_counter() - began) * 1e3)
    key = params["entries"] // 2
    before = computations("small")
    began = time.perf_counter()
    value = cached(key)
    emit("first_hit_us", (time.perf_counter() - began) * 1e6)
    expect_computations("small", before, 0, "first hit in a fresh process")
    if value != workload.small_value(key):
        raise AssertionError(f"wrong result for {key}")


def columns(settings) -> list:
    return [
        Column("miss, µs/call", "miss_us"),
        Column("hit (warm), µs/call", "hit_us", digits=2),
        Column("first hit, fresh process, µs", "first_hit_us"),
        Column("import + decorate, ms", "import_ms", better=None),
    ]
