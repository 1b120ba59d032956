"""Decorated functions and process entry points for ``test_concurrency.py``.

They live in an importable module, not in the test file, so that ``spawn`` children can unpickle
them by reference (``concurrency_workers.square``) exactly as ``fork`` children inherit them.

Two environment variables, set by the test and inherited by every child:

* ``PTD_TEST_PROJECT``: the test's project folder. A fresh (spawned) interpreter would otherwise
  use its working directory and so a different project cache; :func:`use_test_project` is the
  pool initializer and the first step of every job.
* ``PTD_TEST_EVENTS``: a folder for what the functions really did. Each computation (never a
  cache hit) appends one JSON line to ``computations.log`` with a single ``O_APPEND`` write, so
  lines from concurrent processes never interleave; marker files coordinate parked calls.
"""

import json
import os
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import persist_to_disk as ptd

PROJECT_ENV = "PTD_TEST_PROJECT"
EVENTS_ENV = "PTD_TEST_EVENTS"
LOG_NAME = "computations.log"

SLOW_SECONDS = 0.3       # a "slow" computation
MEET_PATIENCE = 2.0      # how long a meeting computation waits for its partner
PARK_LIMIT = 60.0        # a parked computation gives up waiting after this long


# --- set-up and bookkeeping -------------------------------------------------------------------
def use_test_project() -> None:
    """Use the test's project folder (pool initializer; first step of every job)."""
    ptd.config.set_project_path(os.environ[PROJECT_ENV])


def events_folder() -> str:
    return os.environ[EVENTS_ENV]


def marker(name: str) -> str:
    return os.path.join(events_folder(), name)


def touch(name: str) -> None:
    with open(marker(name), "a"):
        pass


def claim(name: str) -> bool:
    """Create marker ``name`` if nobody has; return whether this call created it."""
    try:
        os.close(os.open(marker(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def record_computation(function: str, x, started: float, ended: float) -> None:
    line = json.dumps({"function": function, "x": x, "pid": os.getpid(),
                       "start": started, "end": ended}) + "\n"
    fd = os.open(marker(LOG_NAME), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def computations(function: str = None) -> list:
    """Every computation recorded so far (of ``function`` only, if given), in log order.

    ``start``/``end`` are ``time.monotonic()`` readings, comparable across processes on Linux
    and macOS (one system-wide clock).
    """
    path = marker(LOG_NAME)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        found = [json.loads(line) for line in handle]
    return [c for c in found if function is None or c["function"] == function]


def expected(x) -> dict:
    """What every squaring function below returns for ``x``."""
    return {"x": x, "square": x * x}


def _square(function: str, x, seconds: float = 0.0) -> dict:
    started = time.monotonic()
    if seconds:
        time.sleep(seconds)
    value = expected(x)
    record_computation(function, x, started, time.monotonic())
    return value


# --- decorated functions ----------------------------------------------------------------------
@ptd.persistf()
def square(x):
    """Fast, default ('call') lock scope."""
    return _square("square", x)


@ptd.persistf()
def square_briefly(x):
    """A little slow, so that threads asking for the same call really overlap."""
    return _square("square_briefly", x, 0.02)


@ptd.persistf(lock_granularity="call")
def slow_call_scope(x):
    return _square("slow_call_scope", x, SLOW_SECONDS)


@ptd.persistf(lock_granularity="func")
def slow_func_scope(x):
    return _square("slow_func_scope", x, SLOW_SECONDS)


@ptd.persistf(lock_granularity="global")
def slow_global_scope(x):
    return _square("slow_global_scope", x, SLOW_SECONDS)


SLOW_BY_SCOPE = {"call": slow_call_scope, "func": slow_func_scope, "global": slow_global_scope}


def _meet(function: str, x) -> dict:
    """Start, then wait (up to MEET_PATIENCE) until another computation of ``function`` has
    started too. Two computations that run in parallel therefore always overlap; two that are
    serialized never can (the first gives up waiting and ends before the second starts)."""
    started = time.monotonic()
    touch(f"{function}-{x}.started")
    prefix, mine = f"{function}-", f"{function}-{x}.started"
    while time.monotonic() < started + MEET_PATIENCE:
        if any(n.startswith(prefix) and n.endswith(".started") and n != mine
               for n in os.listdir(events_folder())):
            break
        time.sleep(0.005)
    record_computation(function, x, started, time.monotonic())
    return expected(x)


@ptd.persistf(lock_granularity="call")
def meet_call_scope(x):
    return _meet("meet_call_scope", x)


@ptd.persistf(lock_granularity="func")
def meet_func_scope(x):
    return _meet("meet_func_scope", x)


def _park(function: str, x) -> dict:
    """The first computation of ``x`` anywhere parks: it creates ``<function>-<x>.parked`` and
    waits until ``<function>-<x>.release`` exists (or PARK_LIMIT). Any later computation of
    ``x`` returns at once. The value names the process that computed it."""
    started = time.monotonic()
    if claim(f"{function}-{x}.claimed"):
        touch(f"{function}-{x}.parked")
        while (not os.path.exists(marker(f"{function}-{x}.release"))
               and time.monotonic() < started + PARK_LIMIT):
            time.sleep(0.01)
    record_computation(function, x, started, time.monotonic())
    return {"x": x, "pid": os.getpid()}


@ptd.persistf()
def parked(x):
    return _park("parked", x)


@ptd.persistf(lock_timeout=0.2)
def parked_with_timeout(x):
    return _park("parked_with_timeout", x)


@ptd.persistf(lock_granularity="global")
def inner_global(x):
    return _square("inner_global", x)


@ptd.persistf(lock_granularity="global")
def outer_global(x):
    """A cached function calling another cached function, both under the project's lock."""
    started = time.monotonic()
    value = {"x": x, "inner": [inner_global(x), inner_global(x + 1)]}
    record_computation("outer_global", x, started, time.monotonic())
    return value


@ptd.persistf(lock_granularity="func")
def fibonacci(n):
    """Recursive: computing n takes the function's lock again for n - 1 and n - 2."""
    started = time.monotonic()
    value = n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)
    record_computation("fibonacci", n, started, time.monotonic())
    return value


# --- what a child process runs ----------------------------------------------------------------
def call_each(function, arguments) -> list:
    return [function(x) for x in arguments]


def call_from_threads(function, arguments, threads: int) -> list:
    with ThreadPoolExecutor(max_workers=threads) as executor:
        return list(executor.map(function, arguments))


def read_until_stopped(function, arguments, stop) -> dict:
    """Read ``function``'s stored results (READONLY: never computes) in passes until ``stop``
    is set, then once more. Report hits, wrong values and what the last pass missed."""
    hits, passes, wrong = 0, 0, []
    while True:
        final = stop.is_set()
        missing = []
        for x in arguments:
            try:
                value = function(x, cache_switch=ptd.READONLY)
            except ptd.CacheMissError:
                missing.append(x)
                continue
            hits += 1
            if value != expected(x):
                wrong.append((x, value))
        passes += 1
        if final:
            return {"hits": hits, "passes": passes, "wrong": wrong, "final_misses": missing}


def run_job(index: int, target, args: tuple, results, barrier=None) -> None:
    """Process target: set up, wait at ``barrier`` (if any), run ``target(*args)`` and put
    ``(index, "ok", value)`` -- or ``(index, "error", traceback)`` -- on ``results``."""
    try:
        use_test_project()
        if barrier is not None:
            barrier.wait(timeout=60)
        results.put((index, "ok", target(*args)))
    except BaseException:
        results.put((index, "error", traceback.format_exc()))
