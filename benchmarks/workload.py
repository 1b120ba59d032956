"""The functions every library caches, and the inputs they are called with.

Every adapter decorates these same module-level functions, so that each library stores the
same values under the same arguments. Each function counts its own executions (``CALLS``, and
for the multi-process scenario an append-only file), so a scenario can check that a timed hit
really was a hit: a library that silently recomputed would otherwise look fast or slow for the
wrong reason.
"""

import os
import time
from typing import Any, Dict

import numpy as np

CALLS = {"small": 0, "large": 0, "hashing": 0, "concurrent": 0}

# The multi-process scenario sets this (an environment variable, so that pool workers see it)
# to a file where every computation appends one line: the count survives the workers.
COMPUTATIONS_FILE_VARIABLE = "PTD_BENCH_COMPUTATIONS_FILE"
COMPUTE_SECONDS_VARIABLE = "PTD_BENCH_COMPUTE_SECONDS"
# "sleep" (the default: the call waits, leaving the core free) or "cpu" (the call computes for
# that much of its own CPU time, as a real function would)
COMPUTE_KIND_VARIABLE = "PTD_BENCH_COMPUTE_KIND"


def small_value(i: int) -> Dict[str, Any]:
    """The small result of scenario 1: a dict with an int and a 100-character string."""
    return {"i": i, "s": "x" * 100}


def small_result(i: int) -> Dict[str, Any]:
    CALLS["small"] += 1
    return small_value(i)


_LARGE_ARRAYS: Dict[int, np.ndarray] = {}


def large_array(megabytes: int) -> np.ndarray:
    """Random float64 data of ``megabytes`` MiB, made once per process (random, so that no
    layer can compress it)."""
    if megabytes not in _LARGE_ARRAYS:
        generator = np.random.default_rng(megabytes)
        _LARGE_ARRAYS[megabytes] = generator.random(megabytes * (1 << 20) // 8)
    return _LARGE_ARRAYS[megabytes]


def large_result(megabytes: int, i: int) -> np.ndarray:
    """Returns a prepared array: the timed miss is the store, not the making of the data."""
    CALLS["large"] += 1
    return large_array(megabytes)


def hashing_result(argument: Any) -> int:
    """A cheap function of a big argument: its cost per call is the cost of keying it."""
    CALLS["hashing"] += 1
    return 42


def array_argument(megabytes: int, variant: int) -> np.ndarray:
    """A random array of ``megabytes`` MiB; ``variant`` changes one element (a distinct call)."""
    generator = np.random.default_rng(1234)
    array = generator.random(megabytes * (1 << 20) // 8)
    array[0] = float(variant)
    return array


def nested_dict_argument(items: int, variant: int) -> Dict[str, Dict[str, float]]:
    """A dict of dicts holding ``items`` numbers in groups of 10; ``variant`` changes one."""
    groups = max(1, items // 10)
    nested = {f"group{g}": {f"k{j}": g * 10.0 + j for j in range(10)} for g in range(groups)}
    nested["group0"]["k0"] = float(variant)
    return nested


def spin(seconds: float) -> None:
    """Compute for ``seconds`` of this thread's CPU time (not wall time: a process the
    scheduler sets aside still has its whole computation to do when it comes back)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:  # a system call (no vDSO for this clock): not too often
        for _ in range(100):
            pass


def concurrent_result(i: int) -> Dict[str, Any]:
    """Records the computation in the shared file, then takes the configured time (a sleep, or
    CPU time: ``COMPUTE_KIND_VARIABLE``)."""
    CALLS["concurrent"] += 1
    path = os.environ.get(COMPUTATIONS_FILE_VARIABLE)
    if path:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, b"%d\n" % i)  # one small O_APPEND write: atomic across processes
        finally:
            os.close(descriptor)
    seconds = float(os.environ.get(COMPUTE_SECONDS_VARIABLE, "0"))
    if seconds and os.environ.get(COMPUTE_KIND_VARIABLE) == "cpu":
        spin(seconds)
    elif seconds:
        time.sleep(seconds)
    return small_value(i)
