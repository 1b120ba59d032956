"""Scenario 5: the cost of keying big arguments.

A function that costs nothing to compute is called with a 10 MB numpy array, and with a nested
dict of 1,000 numbers (100 groups of 10). Distinct calls (``hashing_calls`` variants, each
differing in one element) are timed as misses; hits are then timed with equal copies of the
arguments (not the same objects: a cache must key by content), after a warm-up pass.
"""

import copy
import time

from .. import workload
from ..measurements import Column
from .common import computations, expect_computations, seconds_per_call

NAME = "hashing"
TITLE = "Argument hashing: big arguments"


def summary(settings) -> str:
    return (f"A cheap function called with a {settings.hashing_array_megabytes} MB numpy array, "
            f"and with a nested dict of {settings.hashing_dict_items:,} items: miss and hit "
            "cost per call, which is mostly the cost of keying the argument (hits use equal "
            "copies, so identity cannot help).")


KINDS = ("array", "dict")


def drive(runner, library: str, adapter_class) -> None:
    settings = runner.settings
    with runner.job(NAME, library) as job:
        job.phase("run", {"array_megabytes": settings.hashing_array_megabytes,
                          "dict_items": settings.hashing_dict_items,
                          "calls": settings.hashing_calls, "passes": settings.repeat})


def _arguments(kind: str, params: dict) -> list:
    if kind == "array":
        return [workload.array_argument(params["array_megabytes"], v)
                for v in range(params["calls"])]
    return [workload.nested_dict_argument(params["dict_items"], v)
            for v in range(params["calls"])]


def phase_run(adapter, params: dict, emit) -> None:
    cached = adapter.cached(workload.hashing_result)
    for kind in KINDS:
        arguments = _arguments(kind, params)
        copies = [(copy.deepcopy(argument),) for argument in arguments]
        try:
            before = computations("hashing")
            for argument in arguments:
                began = time.perf_counter()
                cached(argument)
                emit("miss_ms", (time.perf_counter() - began) * 1e3, argument=kind)
            expect_computations("hashing", before, len(arguments), f"misses ({kind})")
            before = computations("hashing")
            seconds_per_call(cached, copies)  # warm-up, not timed
            for _ in range(params["passes"]):
                emit("hit_ms", seconds_per_call(cached, copies) * 1e3, argument=kind)
            expect_computations("hashing", before, 0, f"hits ({kind})")
        except Exception as err:  # this argument kind fails for this library: say how
            emit.error(f"{type(err).__name__}: {err}", argument=kind)


def columns(settings) -> list:
    mb, items = settings.hashing_array_megabytes, settings.hashing_dict_items
    return [Column(f"{mb} MB array: miss, ms", "miss_ms", {"argument": "array"}, digits=2),
            Column(f"{mb} MB array: hit, ms", "hit_ms", {"argument": "array"}, digits=2),
            Column(f"dict of {items:,}: miss, ms", "miss_ms", {"argument": "dict"}, digits=3),
            Column(f"dict of {items:,}: hit, ms", "hit_ms", {"argument": "dict"}, digits=3)]
