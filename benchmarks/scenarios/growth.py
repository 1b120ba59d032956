"""Scenario 2: hit and miss cost as one function's store grows (1k to 1M entries).

One folder per library, filled size after size in fill processes (the library's fastest
honest way: see each adapter's ``fill``; ours is filled by its decorator with the fast setting,
which writes the same store), each size then measured in a fresh process with the setting
under test: after a warm-up pass, ``passes`` timed passes of hits at random among the stored
calls, and ``passes`` passes of misses of new calls (``growth_miss_samples`` in all, at every
size: they are stored too, so the 1k store ends its measurement with 2k entries).
Before each size, the fill is estimated from the ones before; a library whose fill (or
measurement) would take longer than the budget is skipped from that size on, and the table
says so with the estimate.
"""

import random
import time

from .. import workload
from ..measurements import Column
from .common import (budget_for, computations, estimate_seconds, expect_computations, fill_phase,
                     format_duration, seconds_per_call, timed_hits)

NAME = "growth"
TITLE = "Growth: hit and miss cost against the number of stored entries"
MISS_KEYS = 10 ** 9  # misses use keys far above the filled ones


def size_label(size: int) -> str:
    if size >= 1_000_000 and size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    if size >= 1_000 and size % 1_000 == 0:
        return f"{size // 1_000}k"
    return str(size)


def summary(settings) -> str:
    sizes = ", ".join(size_label(s) for s in sorted(settings.growth_sizes))
    return ("Hit and miss cost per call of the small-result function when its store already "
            f"holds {sizes} entries: a cache whose hit reads one record stays flat; one that "
            "reads or rewrites a whole file grows with the store.")


def drive(runner, library: str, adapter_class) -> None:
    settings = runner.settings
    sizes = sorted(settings.growth_sizes)
    budget = budget_for(settings, adapter_class)
    filler = adapter_class.fill_with or library
    with runner.job(NAME, library) as job:
        filled, history = 0, []
        for index, size in enumerate(sizes):
            later = sizes[index:]
            measure = {"size": size, "hit_samples": settings.growth_hit_samples,
                       "miss_samples": settings.growth_miss_samples,
                       "passes": settings.repeat, "budget_seconds": budget}
            if not adapter_class.persistent:  # in memory: fill and measure in one process
                records = job.phase("measure", dict(measure, fill_stop=size))
            else:
                if history:
                    estimate = estimate_seconds(history, filled, size)
                    if estimate > budget:
                        for skipped in later:
                            job.skip(f"skipped: est. {format_duration(estimate)} to fill to "
                                     f"{size:,}", size=skipped)
                        return
                records = job.phase("fill", {"start": filled, "stop": size,
                                             "budget_seconds": budget}, library=filler)
                history += [tuple(sample) for r in records
                            for sample in r.get("note", {}).get("samples", [])]
                if _stopped(records):
                    _skip_larger(job, later, records)
                    return
                filled = size
                records = job.phase("measure", measure)
            if _stopped(records):
                _skip_larger(job, later, records)
                return


def _stopped(records) -> bool:
    return any("skipped" in r or "error" in r for r in records)


def _skip_larger(job, later, records) -> None:
    """Mark the sizes after ``later[0]``, where the library stopped, with its reason."""
    reason = next(r.get("skipped") or r.get("error") for r in records
                  if "skipped" in r or "error" in r)
    for size in later[1:]:
        job.skip(f"skipped ({size_label(later[0])}: {reason})", size=size)


def phase_fill(adapter, params: dict, emit) -> None:
    fill_phase(adapter, params, emit, size=params["stop"])


def phase_measure(adapter, params: dict, emit) -> None:
    size, passes, budget = params["size"], params["passes"], params["budget_seconds"]
    cached = adapter.cached(workload.small_result)
    if params.get("fill_stop"):
        adapter.fill(cached, workload.small_result, ((i,) for i in range(params["fill_stop"])))
    generator = random.Random(size)
    samples = params["hit_samples"]
    pilot = [(generator.randrange(size),) for _ in range(20)]
    before = computations("small")
    pilot_seconds = seconds_per_call(cached, pilot)
    expect_computations("small", before, 0, f"hits at {size:,} entries")
    if pilot_seconds * samples * (passes + 1) > budget / 2:  # keep within the budget
        samples = max(20, int(budget / 2 / (pilot_seconds * (passes + 1))))
        emit.note(hit_samples=samples)
    calls = [(generator.randrange(size),) for _ in range(samples)]
    for value in timed_hits(cached, "small", calls, passes, f"hits at {size:,} entries"):
        emit("hit_us", value, size=size)
    # the same number at every size, so that one-off costs (a process's first write to a file
    # or lock) weigh the same in every column
    misses = max(10, params["miss_samples"] // passes)
    cached(MISS_KEYS - size)  # warm-up: the process's first write, not timed
    began = time.perf_counter()
    for repetition in range(passes):
        first = MISS_KEYS + size * 10 + repetition * misses
        before = computations("small")
        value = seconds_per_call(cached, [(i,) for i in range(first, first + misses)])
        expect_computations("small", before, misses, f"misses at {size:,} entries")
        emit("miss_us", value * 1e6, size=size)
        if (time.perf_counter() - began) / (repetition + 1) * passes > budget / 2:
            break


def columns(settings) -> list:
    sizes = sorted(settings.growth_sizes)
    return ([Column(f"hit {size_label(s)}", "hit_us", {"size": s}, digits=2) for s in sizes]
            + [Column(f"miss {size_label(s)}", "miss_us", {"size": s}) for s in sizes])
