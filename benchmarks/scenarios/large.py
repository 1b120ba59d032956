"""Scenario 3: large results (numpy arrays of 1 MB and 100 MB; MB = 2**20 bytes).

Each size runs in a fresh worker and folder. The function returns a prepared array of random
(incompressible) float64 data, so a miss times the store, not the making of the data. Store
throughput: ``passes`` passes of distinct misses (``large_calls`` per pass up to 10 MB, one
above); load throughput: after a warm-up pass, ``passes`` passes of hits of the stored calls;
disk: bytes the folder takes on disk divided by the bytes of the values stored.
"""

import time

import numpy as np

from .. import workload
from ..measurements import Column
from .common import (budget_for, computations, expect_computations, folder_bytes,
                     seconds_per_call)

NAME = "large"
TITLE = "Large results: store and load throughput, size on disk"


def summary(settings) -> str:
    sizes = " or ".join(f"{mb} MB" for mb in settings.large_megabytes)
    return (f"A function returning a numpy array of {sizes} of random data (MB = 2^20 bytes): "
            "store (miss) and load (hit) throughput in MB/s, and the bytes on disk per byte "
            "of value.")


def drive(runner, library: str, adapter_class) -> None:
    settings = runner.settings
    for megabytes in settings.large_megabytes:
        with runner.job(NAME, library) as job:
            job.phase("run", {"megabytes": megabytes,
                              "calls": settings.large_calls if megabytes <= 10 else 1,
                              "passes": settings.repeat,
                              "budget_seconds": budget_for(settings, adapter_class)})


def phase_run(adapter, params: dict, emit) -> None:
    megabytes, calls, passes = params["megabytes"], params["calls"], params["passes"]
    budget = params["budget_seconds"]
    cached = adapter.cached(workload.large_result)
    expected = workload.large_array(megabytes)  # made before any timing
    stored = []
    began = time.perf_counter()
    for repetition in range(passes):
        keys = [(megabytes, repetition * calls + j) for j in range(calls)]
        before = computations("large")
        seconds = seconds_per_call(cached, keys)
        expect_computations("large", before, calls, "stores")
        emit("store_MBps", megabytes / seconds, megabytes=megabytes)
        stored.append(keys)
        if (time.perf_counter() - began) / (repetition + 1) * passes > budget:
            break
    if adapter.persistent:
        used = folder_bytes(adapter.folder)["allocated"]
        values = len(stored) * calls * megabytes * (1 << 20)
        emit("disk_ratio", used / values, megabytes=megabytes)
    else:
        emit.skip("in memory", metric="disk_ratio", megabytes=megabytes)
    before = computations("large")
    seconds_per_call(cached, stored[0])  # warm-up, not timed
    for keys in stored:
        emit("load_MBps", megabytes / seconds_per_call(cached, keys), megabytes=megabytes)
    expect_computations("large", before, 0, "loads")
    if not np.array_equal(cached(*stored[0][0]), expected):
        raise AssertionError("a loaded array differs from the stored one")


def columns(settings) -> list:
    result = []
    for mb in settings.large_megabytes:
        result += [Column(f"store {mb} MB, MB/s", "store_MBps", {"megabytes": mb}, "higher", 0),
                   Column(f"load {mb} MB, MB/s", "load_MBps", {"megabytes": mb}, "higher", 0),
                   Column(f"disk/value {mb} MB", "disk_ratio", {"megabytes": mb}, None, 2)]
    return result
