"""Scenario 6: bytes on disk per entry.

A fresh folder is filled with ``disk_entries`` small results (as in the growth scenario), then
measured in a fresh process with the setting under test: bytes the folder takes on disk
(allocated blocks, as ``du`` counts them) per entry; again after recomputing every other entry
(each library's way of forcing a recomputation: ours appends a new version); and again after
the library's compaction, where it has one. Stored results are checked to hit before and after.
"""

import time

from .. import workload
from ..measurements import Column
from .common import (budget_for, computations, estimate_seconds, expect_computations, fill_phase,
                     fill_estimate, folder_bytes, format_duration)
from ..adapters import Unsupported

NAME = "disk"
TITLE = "Disk: bytes per entry"


def summary(settings) -> str:
    return (f"Bytes on disk (allocated blocks) per entry after storing "
            f"{settings.disk_entries:,} small results, after recomputing half of them, and "
            "after compacting (where the library can).")


def drive(runner, library: str, adapter_class) -> None:
    settings = runner.settings
    with runner.job(NAME, library) as job:
        if not adapter_class.persistent:
            job.skip("in memory: nothing on disk")
            return
        budget = budget_for(settings, adapter_class)
        records = job.phase("fill", {"start": 0, "stop": settings.disk_entries,
                                     "budget_seconds": budget},
                            library=adapter_class.fill_with or library)
        if not any("skipped" in r or "error" in r for r in records):
            job.phase("measure", {"entries": settings.disk_entries, "budget_seconds": budget})


def phase_fill(adapter, params: dict, emit) -> None:
    fill_phase(adapter, params, emit)


def _check_hits(cached, entries: int, what: str) -> None:
    sample = range(0, entries, max(1, entries // 100))
    before = computations("small")
    for i in sample:
        if cached(i) != workload.small_value(i):
            raise AssertionError(f"{what}: wrong result for {i}")
    expect_computations("small", before, 0, what)


def _measure(adapter, entries: int, stage: str, emit) -> None:
    adapter.close()  # nothing held in memory or unflushed; the next call reopens
    emit("bytes_per_entry", folder_bytes(adapter.folder)["allocated"] / entries, stage=stage)


def phase_measure(adapter, params: dict, emit) -> None:
    entries, budget = params["entries"], params["budget_seconds"]
    cached = adapter.cached(workload.small_result)
    _check_hits(cached, entries, "hits after the fill")
    _measure(adapter, entries, "filled", emit)
    halves = list(range(0, entries, 2))
    chunk = max(1, len(halves) // 20)
    samples, spent, before = [], 0.0, computations("small")
    for start in range(0, len(halves), chunk):
        began = time.perf_counter()
        for i in halves[start:start + chunk]:
            adapter.recompute(cached, i)
        elapsed = time.perf_counter() - began
        spent += elapsed
        done = min(len(halves), start + chunk)
        samples.append((done, elapsed / (done - start)))
        if done < len(halves) and spent + estimate_seconds(samples, done, len(halves)) > budget:
            emit.skip(f"skipped: est. {format_duration(fill_estimate(samples, 0, len(halves)))}"
                      f" to recompute {len(halves):,} entries", metric="bytes_per_entry")
            return
    expect_computations("small", before, len(halves), "recomputations")
    _check_hits(cached, entries, "hits after recomputing")
    _measure(adapter, entries, "recomputed", emit)
    try:
        adapter.compact(cached)
    except Unsupported as err:
        emit.skip(f"n/a: {err}", metric="bytes_per_entry", stage="compacted")
        return
    _check_hits(cached, entries, "hits after compacting")
    _measure(adapter, entries, "compacted", emit)


def columns(settings) -> list:
    n = f"{settings.disk_entries:,}"
    return [Column(f"bytes/entry, {n} entries", "bytes_per_entry", {"stage": "filled"},
                   digits=0),
            Column("after recomputing half", "bytes_per_entry", {"stage": "recomputed"},
                   digits=0),
            Column("after compaction", "bytes_per_entry", {"stage": "compacted"}, digits=0)]
