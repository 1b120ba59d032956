"""Helpers the scenarios share: timing calls, checking that hits are hits, filling a store within
a time budget, estimating how long a fill would take, and measuring a folder on disk."""

import gc
import os
import random
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .. import workload


UNLIMITED_SECONDS = 1e9


def budget_for(settings, adapter_class) -> float:
    """Seconds a library may spend on one step before it is skipped (never for this project)."""
    return UNLIMITED_SECONDS if adapter_class.subject else settings.budget_seconds


class NotAHit(Exception):
    """A call timed as a hit ran the function: the library did not hit, so its figure would
    not mean what the table says."""


def computations(kind: str) -> int:
    return workload.CALLS[kind]


def expect_computations(kind: str, before: int, expected: int, what: str) -> None:
    done = workload.CALLS[kind] - before
    if done != expected:
        raise NotAHit(f"{what}: the function ran {done} times, expected {expected}")


def seconds_per_call(cached: Callable, calls: Sequence[tuple]) -> float:
    """Time ``cached(*args)`` over ``calls`` in one loop; seconds per call."""
    gc.collect()
    started = time.perf_counter()
    for args in calls:
        cached(*args)
    return (time.perf_counter() - started) / len(calls)


def timed_hits(cached: Callable, kind: str, calls: Sequence[tuple], passes: int,
               what: str) -> List[float]:
    """One untimed warm-up pass, then ``passes`` timed passes; µs per call of each pass.

    Raises ``NotAHit`` if any of them ran the function."""
    before = computations(kind)
    seconds_per_call(cached, calls)
    runs = [seconds_per_call(cached, calls) * 1e6 for _ in range(passes)]
    expect_computations(kind, before, 0, what)
    return runs


def shuffled(values: Sequence[int], seed: int) -> List[int]:
    values = list(values)
    random.Random(seed).shuffle(values)
    return values


def estimate_seconds(samples: Sequence[Tuple[int, float]], start: int, stop: int) -> float:
    """Seconds to store entries ``start`` to ``stop``, from ``(entries stored, seconds per entry
    at that point)`` samples.

    A cost per entry that grows with the number stored (a library that rewrites a whole file
    per call) is extrapolated linearly from the first and the last sample (the widest base,
    the least noise); a flat or falling one is taken as the last value."""
    if not samples or stop <= start:
        return 0.0
    entries, rate = samples[-1]
    first_entries, first_rate = samples[0]
    slope = 0.0
    if entries > first_entries and rate > first_rate:
        slope = (rate - first_rate) / (entries - first_entries)
    middle = (start + stop) / 2
    return max(rate + slope * (middle - entries), rate) * (stop - start)


def format_duration(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def timed_fill(adapter, cached: Callable, function: Callable, kind: str, start: int, stop: int,
               budget_seconds: float) -> Tuple[Optional[float], List[Tuple[int, float]]]:
    """Store ``function(i)`` for ``i`` in ``[start, stop)`` through ``adapter.fill``, in chunks
    (in one go for a bulk fill, after a first chunk of 100), checking the budget after each.

    Returns ``(seconds, samples)``, or ``(None, samples)`` if the estimate of the whole fill
    went over the budget (then the estimate is ``estimate_seconds(samples, start, stop)``
    plus the time already spent, see ``fill_estimate``)."""
    # chunks start small and double, so that a fill that grows out of the budget is seen early
    largest = stop - start if adapter.bulk_fill else max(100, (stop - start) // 20)
    chunk = min(100, largest)
    samples: List[Tuple[int, float]] = []
    began = time.perf_counter()
    position = start
    while position < stop:
        end = min(stop, position + chunk)
        chunk = min(largest, chunk * 2)
        before = computations(kind)
        started = time.perf_counter()
        adapter.fill(cached, function, ((i,) for i in range(position, end)))
        elapsed = time.perf_counter() - started
        expect_computations(kind, before, end - position, "fill")
        samples.append((end, elapsed / (end - position)))
        position = end
        spent = time.perf_counter() - began
        if position < stop and spent + estimate_seconds(samples, position, stop) > budget_seconds:
            return None, samples
    return time.perf_counter() - began, samples


def fill_estimate(samples: List[Tuple[int, float]], start: int, stop: int) -> float:
    """The whole fill's estimated seconds, from the samples of an interrupted one."""
    done = samples[-1][0]
    spent = sum(rate * (entries - previous) for (entries, rate), previous
                in zip(samples, [start] + [e for e, _ in samples[:-1]]))
    return spent + estimate_seconds(samples, done, stop)


def folder_bytes(path: str) -> Dict[str, int]:
    """Bytes the files under ``path`` occupy on disk (allocated blocks, what ``du`` shows) and
    their apparent size, and how many files there are."""
    allocated = apparent = files = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                info = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            allocated += info.st_blocks * 512
            apparent += info.st_size
            files += 1
    return {"allocated": allocated, "apparent": apparent, "files": files}


def fill_phase(adapter, params: dict, emit, **tag) -> None:
    """Fill the job's store with ``small_result(i)`` for ``i`` in ``[start, stop)``, within the
    budget; report the cost per entry (or the estimate that stopped it) under ``tag``."""
    start, stop = params["start"], params["stop"]
    cached = adapter.cached(workload.small_result)
    seconds, samples = timed_fill(adapter, cached, workload.small_result, "small", start, stop,
                                  params["budget_seconds"])
    emit.note(samples=samples)
    # Write the fill out before the measurement starts: a fill that does not sync (ours with
    # the fast setting, the raw LMDB floor, SQLite's WAL) leaves hundreds of MB dirty at 1M
    # entries, and the measuring process's first fsync then flushed all of it (a "standard"
    # miss at 1M read 4.5 ms) while the disk's writeback slowed its hits (95 µs at 1M against
    # 9 µs measured on the same store once written out). Untimed, the same for every library.
    adapter.close()
    os.sync()
    if seconds is None:
        emit.skip(f"skipped: est. {format_duration(fill_estimate(samples, start, stop))} "
                  f"to fill to {stop:,} entries", **tag)
    else:
        emit("fill_us", seconds / (stop - start) * 1e6, **tag)
