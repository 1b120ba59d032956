"""Scenario 4: a multiprocessing pool of 2 and 4 workers sharing one cache.

*Distinct*: the workers split ``concurrency_distinct_calls`` distinct calls of a function that
costs nothing to compute, so the figure is the store's throughput under contention. *Same*:
every worker makes the same ``concurrency_same_calls`` calls in the same order, of a function
that takes ``concurrency_compute_ms`` (a sleep, so that two cores can hold four workers): a
cache that lets only one process compute a call and the others wait for its result computes
each call once; one without such a lock computes it up to once per worker.

Every computation appends a line to a file outside the cache, so the count of computations is
exact whatever the library does. Pool start-up is not timed: each worker builds its own cache
object in the pool's initializer, all workers start together at a barrier, and the time runs
from the first start to the last finish. A run starts no call after the budget or
``RUN_SECONDS`` (the calls made so far count), and one that has not finished ``HANG_SECONDS``
later is reported as hung.
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
    return (f"A pool of {pools} processes: throughput of {settings.concurrency_distinct_calls:,} "
            "distinct calls of a free function (the store under contention), and, when every "
            f"process makes the same {settings.concurrency_same_calls} calls of a "
            f"{settings.concurrency_compute_ms:g} ms function, the throughput and how many "
            "computations there were beyond one per call.")


MODES = ("distinct", "same")

RUN_SECONDS = 20  # a run starts no call after this (or the budget), and counts what it did
HANG_SECONDS = 10  # a run that has not finished this long after that is reported as hung
_worker = {}  # in each pool process: the cached function and the start barrier


def drive(runner, library: str, adapter_class) -> None:
    settings = runner.settings
    if not adapter_class.shared_between_processes:
        with runner.job(NAME, library) as job:
            job.skip("in memory: processes do not share it")
        return
    for workers in settings.concurrency_workers:
        for mode in MODES:
            for _ in range(min(settings.repeat, 3)):
                with runner.job(NAME, library) as job:
                    records = job.phase("run", {
                        "workers": workers, "mode": mode,
                        "calls": (settings.concurrency_distinct_calls if mode == "distinct"
                                  else settings.concurrency_same_calls),
                        "compute_ms": settings.concurrency_compute_ms if mode == "same" else 0,
                        "budget_seconds": settings.budget_seconds})
                if any("error" in r for r in records):
                    break


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
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    barrier = context.Barrier(workers)
    if mode == "distinct":
        jobs = [list(range(w, calls, workers)) for w in range(workers)]
    else:
        jobs = [list(range(calls)) for _ in range(workers)]
    allowed = min(params["budget_seconds"], RUN_SECONDS)
    deadline, patience = time.time() + allowed, allowed + HANG_SECONDS
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
    result = []
    for workers in settings.concurrency_workers:
        result.append(Column(f"{workers} procs, distinct: calls/s", "calls_per_s",
                             {"workers": workers, "mode": "distinct"}, "higher", 0))
        result.append(Column(f"{workers} procs, same: calls/s", "calls_per_s",
                             {"workers": workers, "mode": "same"}, "higher", 0))
        result.append(Column(f"{workers} procs, same: extra computations "
                             f"(of {settings.concurrency_same_calls} calls)",
                             "extra_computations", {"workers": workers, "mode": "same"},
                             None, 0))
    return result
