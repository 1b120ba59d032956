"""Decorated functions that tests/test_reliability_load.py and test_reliability_faults.py run in
many processes at once.

They follow ``concurrency_workers``: every real computation (never a hit) appends one line to the
events log with ``record_computation``, so the tests count computations outside the cache, and
``expected`` is what a right answer looks like. A computation takes about a millisecond, long
enough for other processes to ask for the same call while it runs.
"""

import hashlib
import os
import random
import time

import persist_to_disk as ptd
from concurrency_workers import _park, expected, record_computation

WORK_SECONDS = 0.001


def _work(function: str, x, seconds: float = WORK_SECONDS) -> None:
    started = time.monotonic()
    time.sleep(seconds)
    record_computation(function, x, started, time.monotonic())


# --- one function hammered by N processes, per lock scope --------------------------------------
@ptd.persistf(lock_granularity="call")
def hammer_call(x):
    _work("hammer_call", x)
    return expected(x)


@ptd.persistf(lock_granularity="func")
def hammer_func(x):
    _work("hammer_func", x)
    return expected(x)


@ptd.persistf(lock_granularity="global")
def hammer_global(x):
    _work("hammer_global", x)
    return expected(x)


HAMMER_BY_SCOPE = {"call": hammer_call, "func": hammer_func, "global": hammer_global}


# --- groupby leaves created by several processes (or threads) at once ---------------------------
def leaf_expected(leaf: str, x: int) -> dict:
    return {"leaf": leaf, **expected(x)}


@ptd.persistf(groupby=["leaf"], lock_granularity="call")
def leaves_call(leaf, x):
    _work("leaves_call", f"{leaf}/{x}")
    return leaf_expected(leaf, x)


@ptd.persistf(groupby=["leaf"], lock_granularity="func")
def leaves_func(leaf, x):
    _work("leaves_func", f"{leaf}/{x}")
    return leaf_expected(leaf, x)


@ptd.persistf(groupby=["leaf"], lock_granularity="global")
def leaves_global(leaf, x):
    _work("leaves_global", f"{leaf}/{x}")
    return leaf_expected(leaf, x)


LEAVES_BY_SCOPE = {"call": leaves_call, "func": leaves_func, "global": leaves_global}


def call_each_pair(function, pairs) -> list:
    return [function(leaf, x) for leaf, x in pairs]


# --- a process killed while it holds the compute lock, per scope --------------------------------
@ptd.persistf(lock_granularity="func")
def parked_func(x):
    return _park("parked_func", x)


@ptd.persistf(lock_granularity="global")
def parked_global(x):
    return _park("parked_global", x)


# --- a stream of stores that gets killed (test_reliability_faults) -----------------------------
STREAM_LEAF_SIZE = 8  # calls per groupby leaf: new leaves (new LMDB files) keep being created
STREAM_PAYLOAD = 2048


def stream_expected(x: int) -> dict:
    """What ``stream(x // STREAM_LEAF_SIZE, x)`` returns: a payload only ``x`` produces."""
    seed = hashlib.sha256(str(x).encode()).digest()
    return {"x": x, "payload": seed * (STREAM_PAYLOAD // len(seed))}


@ptd.persistf(groupby=["leaf"])
def stream(leaf, x):
    time.sleep(random.random() * 0.002)  # so that kills often land while the lock is held
    return stream_expected(x)


def store_until_killed(fd: int, first: int, durability: str, seed: int) -> None:
    """Store ``stream`` calls from ``first`` on, forever; after each call has returned, write
    ``"<x>\\n"`` to ``fd``. Now and then recompute an earlier call (RECACHE appends a newer
    version). Exits with 3 if a call ever returns a wrong value."""
    ptd.config.set_durability(durability)
    rng = random.Random(seed)
    x = first
    while True:
        calls = [(x, ptd.CACHE)]
        if x and rng.random() < 0.15:
            calls.append((rng.randrange(x), ptd.RECACHE))
        for y, mode in calls:
            if stream(y // STREAM_LEAF_SIZE, y, cache_switch=mode) != stream_expected(y):
                os._exit(3)
            os.write(fd, f"{y}\n".encode())
        x += 1


# --- a writer whose lock.mdb is deleted while it has the store open (test_reliability_faults) ----
def hold_a_write_transaction(path: str, opened, go, holding, release) -> None:
    """Open the store at ``path`` and write once (``opened``); on ``go``, begin a write
    transaction, set ``holding`` and keep it open until ``release`` (it writes nothing)."""
    from engine_workers import digest_for, record_for
    from persist_to_disk.engine import POOL, Store

    store = Store(path)
    store.append(0, digest_for("holder"), record_for("holder"))
    opened.set()
    go.wait(60)
    POOL.write(store.path, store.durability, lambda txn: (holding.set(), release.wait(60)))
