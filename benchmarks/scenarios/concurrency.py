"""Scenario 4: processes sharing one cache: a pool of 1, 2 and 4 workers.

*Distinct*: 1 process, then pools of 2 and 4, split ``concurrency_distinct_calls`` distinct
calls of a function that computes for ``concurrency_distinct_compute_ms`` (1 ms) of CPU time
(a busy loop on the thread's CPU clock, as a real function would: a sleep would leave the cores
free and hide whether the cache's own work runs in parallel). Every call is a miss: compute,
then store. The 1-process run is the baseline of issue 15's target (2 processes reach at least
1.6x its throughput on 2 cores): what a pool gains is what the cache does not serialize (its
lock, its commit and fsync) on top of the cores the machine has free, which the raw LMDB
floor's own ratio in the same run shows. *Distinct, sleep* (``concurrency_sleep_workers``, 1
and 2 processes in the full profile, none in the quick one): the same calls with a sleep of
that time instead, which needs no core: what is left of the pool's gain is the cache's own
serialization, whatever the machine's load (measured on 2 cores under a load of 5, the CPU
kind gave raw LMDB 936 and 953 calls/s with 1 and 2 processes: 1.02x).

*Same*: every worker makes the same ``concurrency_same_calls`` calls in the same order, of a
function that takes
``concurrency_compute_ms`` (a sleep, so that two cores can hold four workers): a cache that
lets only one process compute a call and the others wait for its result computes each call
once; one without such a lock computes it up to once per worker.

Repetitions are interleaved (1, 2, 4 processes, then again), so that a change of the machine's
load falls on every pool size alike. Every computation appends a line to a file outside the
cache, so the count of computations is exact whatever the library does. Pool start-up is not
timed: each worker builds its own cache object in the pool's initializer, all workers start
together at a barrier, and the time runs from the first start to the last finish. A run starts
no call after the budget or ``RUN_SECONDS`` (the calls made so far count), and one that has not
finished ``HANG_SECONDS`` (or the budget, if shorter) later is reported as hung.
"""

import collections
import multiprocessing
import os
import time

from .. import workload
from ..measurements import Column

NAME = "concurrency"
TITLE = "Concurrency: processes sharing one cache"


def summary(settings) -> str:
    pools = " and ".join(str(w) for w in settings.concurrency_workers)
    distinct = ", ".join(str(w) for w in distinct_workers(settings))
    ms = f"{settings.concurrency_distinct_compute_ms:g} ms"
    text = (f"Throughput of {settings.concurrency_distinct_calls:,} distinct calls (all misses) "
            f"of a function computing for {ms} of CPU time, split between {distinct} processes "
            "(1: the baseline of a pool's gain)")
    if settings.concurrency_sleep_workers:
        sleeping = " and ".join(str(w) for w in sorted(settings.concurrency_sleep_workers))
        text += (f"; the same with a {ms} sleep instead ({sleeping} processes), which needs no "
                 "core: the cache's own serialization")
    return text + (f". When every process of a pool of {pools} makes the same "
                   f"{settings.concurrency_same_calls} calls of a "
                   f"{settings.concurrency_compute_ms:g} ms function (a sleep): the throughput "
                   "and how many computations there were beyond one per call.")


MODES = ("distinct", "distinct_sleep", "same")


def distinct_workers(settings) -> list:
    """Pool sizes of the distinct calls: 1 process (the baseline) and the configured pools."""
    return sorted({1, *settings.concurrency_workers})


def _runs(settings) -> list:
    """``(workers, mode)`` of one repetition, in order."""
    return ([(w, "distinct") for w in distinct_workers(settings)]
            + [(w, "distinct_sleep") for w in sorted(settings.concurrency_sleep_workers)]
            + [(w, "same") for w in settings.concurrency_workers])


RUN_SECONDS = 20  # a run starts no call after this (or the budget), and counts what it did
HANG_SECONDS = 10  # a run that has not finished this long after that is reported as hung
_worker = {}  # in each pool process: the cached function and the start barrier


def drive(runner, library: str, adapter_class) -> None:
    settings = runner.settings
    if not adapter_class.shared_between_processes:
        with runner.job(NAME, library) as job:
            job.skip("in memory: processes do not share it")
        return
    failed = set()  # (workers, mode) that failed: not repeated
    for _ in range(min(settings.repeat, 3)):
        for workers, mode in _runs(settings):
            if (workers, mode) in failed:
                continue
            distinct = mode != "same"
            with runner.job(NAME, library) as job:
                records = job.phase("run", {
                    "workers": workers, "mode": mode,
                    "calls": (settings.concurrency_distinct_calls if distinct
                              else settings.concurrency_same_calls),
                    "compute_ms": (settings.concurrency_distinct_compute_ms if distinct
                                   else settings.concurrency_compute_ms),
                    "compute_kind": "cpu" if mode == "distinct" else "sleep",
                    "budget_seconds": settings.budget_seconds})
            if any("error" in r for r in records):
                failed.add((workers, mode))


def _start(adapter_class, folder: str, barrier) -> None:
    adapter = adapter_class(folder)
    adapter.setup()
    _worker["cached"] = adapter.cached(workload.concurrent_result)
    _worker["barrier"] = barrier


def _calls(job) -> tuple:
    keys, deadline = job
    _worker["barrier"].wait(timeout=120)
    cached, started = _worker["cached"], time.monotonic()
    done = wrong = failed = 0
    first_error = None
    for key in keys:
        if time.time() > deadline:
            break
        try:
            if cached(key) != workload.small_value(key):
                wrong += 1
        except Exception as err:  # counted and reported, not fatal: the others go on
            failed += 1
            first_error = first_error or f"{type(err).__name__}: {err}"
        done += 1
    return started, time.monotonic(), keys[:done], wrong, failed, first_error


def phase_run(adapter, params: dict, emit) -> None:
    workers, mode, calls = params["workers"], params["mode"], params["calls"]
    log = os.path.abspath(f"computations-{os.getpid()}.log")
    os.environ[workload.COMPUTATIONS_FILE_VARIABLE] = log
    os.environ[workload.COMPUTE_SECONDS_VARIABLE] = str(params["compute_ms"] / 1000)
    os.environ[workload.COMPUTE_KIND_VARIABLE] = params.get("compute_kind", "sleep")
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    barrier = context.Barrier(workers)
    if mode != "same":
        jobs = [list(range(w, calls, workers)) for w in range(workers)]
    else:
        jobs = [list(range(calls)) for _ in range(workers)]
    allowed = min(params["budget_seconds"], RUN_SECONDS)
    # a quick run's calls take a second: it need not wait as long for a hung one
    deadline = time.time() + allowed
    patience = allowed + min(HANG_SECONDS, params["budget_seconds"])
    with context.Pool(workers, initializer=_start,
                      initargs=(type(adapter), adapter.folder, barrier)) as pool:
        pending = pool.map_async(_calls, [(keys, deadline) for keys in jobs], chunksize=1)
        try:
            outcomes = pending.get(timeout=patience)
        except multiprocessing.TimeoutError:  # a call never returned: say so, stop the pool
            pool.terminate()
            emit.error(f"hung: no result {patience:.0f} s after the start (a call waited for "
                       "another process's result that never came)", workers=workers,
                       mode=mode)
            return
    starts, ends, called, wrong, failed, errors = zip(*outcomes)
    made = sum(len(keys) for keys in called)
    requested = len({key for keys in called for key in keys})
    with open(log) if os.path.exists(log) else open(os.devnull) as lines:
        counts = collections.Counter(int(line) for line in lines)
    tag = {"workers": workers, "mode": mode}
    emit("calls_per_s", made / (max(ends) - min(starts)), **tag)
    emit("extra_computations", sum(counts.values()) - requested, **tag)
    emit("max_computations", max(counts.values(), default=0), **tag)
    if made < sum(len(keys) for keys in jobs):
        emit.note(stopped_at_budget=f"{made} of {sum(len(k) for k in jobs)} calls")
    if sum(failed):
        emit.error(f"{sum(failed)} of {made} calls failed, first: "
                   f"{next(e for e in errors if e)}", metric="calls_per_s", **tag)
    if sum(wrong):
        emit.error(f"{sum(wrong)} of {made} calls returned a wrong result",
                   metric="calls_per_s", **tag)


def columns(settings) -> list:
    ms = f"{settings.concurrency_distinct_compute_ms:g} ms"
    result = [Column(f"{workers} proc{'s' if workers > 1 else ''}, distinct ({ms}): calls/s",
                     "calls_per_s", {"workers": workers, "mode": "distinct"}, "higher", 0)
              for workers in distinct_workers(settings)]
    result += [Column(f"{workers} proc{'s' if workers > 1 else ''}, distinct ({ms} sleep): "
                      "calls/s", "calls_per_s", {"workers": workers, "mode": "distinct_sleep"},
                      "higher", 0)
               for workers in sorted(settings.concurrency_sleep_workers)]
    for workers in settings.concurrency_workers:
        result.append(Column(f"{workers} procs, same: calls/s", "calls_per_s",
                             {"workers": workers, "mode": "same"}, "higher", 0))
        result.append(Column(f"{workers} procs, same: extra computations "
                             f"(of {settings.concurrency_same_calls} calls)",
                             "extra_computations", {"workers": workers, "mode": "same"},
                             None, 0))
    return result
