"""Many processes and threads sharing one cache, with real processes (``fork`` and ``spawn``).

What a user running a cached function from a process pool, a job array or threads relies on:

* every call returns the right value, and a call is computed once in total, however many
  processes ask for it at the same moment (a miss takes its scope's lock and looks again);
* with the default ``call`` scope, different calls compute in parallel; ``func`` serializes the
  calls of one function, ``global`` those of the whole project;
* ``fork`` is safe after the parent has opened the store, in the children and in the parent;
* a process killed while computing leaves no stale lock (the kernel drops its ``flock``);
* ``lock_timeout`` computes anyway rather than wait, and still stores the result;
* a cached function may call another one under the ``global`` lock without deadlocking itself.

The decorated functions live in ``concurrency_workers`` so that spawned children can import
them. Each counts its real computations in a log file (one ``O_APPEND`` line per computation):
that count, not timing, is what the tests assert. Waits have generous limits so that a deadlock
fails the test instead of hanging it.
"""

import collections
import contextlib
import multiprocessing
import os
import queue
import random
import signal
import threading
import time

import pytest

import concurrency_workers as workers
from helpers import lock_held_elsewhere
import persist_to_disk as ptd
from persist_to_disk.engine import POOL, lock_place

START_METHODS = ["fork", "spawn"]
WAIT_LIMIT = 60.0  # seconds before a job that has not finished counts as hung


# --- helpers ----------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def worker_env(ptd_env, monkeypatch):
    """Children find the test's project folder and events folder through the environment."""
    events = ptd_env.tmp / "events"
    events.mkdir()
    monkeypatch.setenv(workers.PROJECT_ENV, str(ptd_env.project))
    monkeypatch.setenv(workers.EVENTS_ENV, str(events))
    return events


class Jobs:
    """Processes each running ``workers.run_job``: ``target(*args)``, optionally all released
    at once by a barrier. ``wait()`` returns their values in job order, or fails the test if a
    job raised or did not finish within the limit."""

    def __init__(self, context, jobs, *, together: bool = False) -> None:
        self.results = context.Queue()
        # Kept on self: a spawned child unpickles it after start() returns, and a collected
        # barrier's semaphores would be gone by then.
        self.barrier = context.Barrier(len(jobs)) if together else None
        self.processes = [
            context.Process(target=workers.run_job, args=(i, target, tuple(args), self.results,
                                                           self.barrier), daemon=True)
            for i, (target, args) in enumerate(jobs)]
        for process in self.processes:
            process.start()

    def wait(self, limit: float = WAIT_LIMIT) -> list:
        values, deadline = {}, time.monotonic() + limit
        while len(values) < len(self.processes):
            try:
                index, status, value = self.results.get(
                    timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f"{len(self.processes) - len(values)} job(s) did not finish within "
                            f"{limit:.0f}s: deadlocked or blocked on a lock")
            if status != "ok":
                pytest.fail(f"job {index} raised:\n{value}")
            values[index] = value
        for process in self.processes:
            process.join(timeout=10)
        return [values[i] for i in range(len(self.processes))]

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join(timeout=10)


@contextlib.contextmanager
def started(context, jobs, *, together: bool = False):
    group = Jobs(context, jobs, together=together)
    try:
        yield group
    finally:
        group.stop()


def run_jobs(context, jobs, *, together: bool = False) -> list:
    with started(context, jobs, together=together) as group:
        return group.wait()


def computed_counts(function: str) -> collections.Counter:
    """How many times each argument of ``function`` was really computed, in all processes."""
    return collections.Counter(c["x"] for c in workers.computations(function))


def wait_for_marker(name: str, limit: float = WAIT_LIMIT) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(workers.marker(name)):
        if time.monotonic() > deadline:
            pytest.fail(f"{name} did not appear within {limit:.0f}s")
        time.sleep(0.01)


def bucket_of(function, x) -> int:
    return function.__persisted__.locate((x,), {})[1]


def arguments_in_different_buckets(function):
    first = 0
    second = next(x for x in range(1, 1000) if bucket_of(function, x) != bucket_of(function, 0))
    return first, second


def lock_is_held_by_another_process(function, x) -> bool:
    """Whether someone holds the compute lock that a miss of ``function(x)`` would wait for."""
    persisted = function.__persisted__
    store, _, digest, _ = persisted.locate((x,), {})
    return lock_held_elsewhere(*lock_place(persisted.scope, store.path, digest,
                                           persisted.project_root))


def overlap(first: dict, second: dict) -> bool:
    return max(first["start"], second["start"]) < min(first["end"], second["end"])


# --- 1. pools ---------------------------------------------------------------------------------
@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_pool_computes_each_distinct_call_once_and_a_later_pool_computes_nothing(start_method):
    context = multiprocessing.get_context(start_method)
    arguments = list(range(20)) + list(range(10)) * 2
    random.Random(0).shuffle(arguments)

    with context.Pool(4, initializer=workers.use_test_project) as pool:
        values = pool.map_async(workers.square, arguments, chunksize=1).get(WAIT_LIMIT)
    assert values == [workers.expected(x) for x in arguments]
    assert computed_counts("square") == {x: 1 for x in range(20)}

    with context.Pool(4, initializer=workers.use_test_project) as pool:
        again = pool.map_async(workers.square, arguments, chunksize=1).get(WAIT_LIMIT)
    assert again == values
    assert computed_counts("square") == {x: 1 for x in range(20)}, "the second pool recomputed"


# --- 2. fork after the parent opened the store ------------------------------------------------
def test_fork_after_the_parent_opened_the_store_children_and_parent_keep_working():
    for x in range(5):
        assert workers.square(x) == workers.expected(x)
    store = workers.square.__persisted__.locate((0,), {})[0]
    assert store.path in POOL.open_paths(), "precondition: the parent holds the store open"
    parent = os.getpid()

    # A miss that takes the same bucket lock as the parent's first call did before the fork.
    neighbour = next(x for x in range(100, 100_000)
                     if bucket_of(workers.square, x) == bucket_of(workers.square, 0))
    arguments = list(range(15)) + [neighbour]

    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:  # forked children: hits 0-4, misses 5-14 and the neighbour
        values = pool.map_async(workers.square, arguments, chunksize=1).get(WAIT_LIMIT)
    assert values == [workers.expected(x) for x in arguments]
    assert computed_counts("square") == {x: 1 for x in arguments}
    by_pid = {c["x"]: c["pid"] for c in workers.computations("square")}
    assert all(by_pid[x] == parent for x in range(5))
    assert all(by_pid[x] != parent for x in arguments[5:])

    # The parent goes on: hits on what it and the children stored, and a new miss stored.
    for x in arguments:
        assert workers.square(x) == workers.expected(x)
    assert workers.square(15) == workers.expected(15)
    assert computed_counts("square") == {x: 1 for x in arguments + [15]}
    assert workers.square.cache_info()["entries"] == 17

    # A child forked now sees the parent's newest write.
    with context.Pool(1) as pool:
        assert pool.apply_async(workers.square, (15,)).get(WAIT_LIMIT) == workers.expected(15)
    assert computed_counts("square")[15] == 1


def test_fork_while_another_parent_thread_is_reading_leaves_both_sides_working():
    for x in range(20):
        workers.square(x)
    stop, errors, reads = threading.Event(), [], [0]

    def keep_reading():
        try:
            while not stop.is_set():
                for x in range(20):
                    assert workers.square(x) == workers.expected(x)
                    reads[0] += 1
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    reader = threading.Thread(target=keep_reading, daemon=True)
    reader.start()
    deadline = time.monotonic() + WAIT_LIMIT
    while reads[0] == 0 and not errors and time.monotonic() < deadline:
        time.sleep(0.001)  # fork only once the thread is busy reading
    try:
        context = multiprocessing.get_context("fork")
        jobs = [(workers.call_each, (workers.square, list(range(15 + i, 25 + i))))
                for i in range(4)]
        values = run_jobs(context, jobs)  # four forks while the thread runs read transactions
    finally:
        stop.set()
        reader.join(timeout=WAIT_LIMIT)
    assert not reader.is_alive(), "the reading thread hung"
    assert errors == []
    assert reads[0] > 0
    for i, got in enumerate(values):
        assert got == [workers.expected(x) for x in range(15 + i, 25 + i)]
    assert computed_counts("square") == {x: 1 for x in range(28)}
    assert workers.square(27) == workers.expected(27)


# --- 3. identical concurrent calls ------------------------------------------------------------
@pytest.mark.parametrize("start_method", START_METHODS)
@pytest.mark.parametrize("scope", ["call", "func", "global"])
def test_identical_calls_started_together_compute_once(scope, start_method):
    function = workers.SLOW_BY_SCOPE[scope]
    context = multiprocessing.get_context(start_method)
    values = run_jobs(context, [(function, (42,))] * 3, together=True)
    assert values == [workers.expected(42)] * 3
    assert computed_counts(function.__name__) == {42: 1}


# --- 4. what runs in parallel -----------------------------------------------------------------
def test_call_scope_computes_different_calls_of_one_function_in_parallel():
    a, b = arguments_in_different_buckets(workers.meet_call_scope)
    run_jobs(multiprocessing.get_context("fork"),
             [(workers.meet_call_scope, (a,)), (workers.meet_call_scope, (b,))], together=True)
    first, second = workers.computations("meet_call_scope")
    assert {first["x"], second["x"]} == {a, b}
    assert overlap(first, second), (first, second)


def test_func_scope_computes_different_calls_of_one_function_one_at_a_time():
    a, b = arguments_in_different_buckets(workers.meet_func_scope)  # so only the scope serializes
    run_jobs(multiprocessing.get_context("fork"),
             [(workers.meet_func_scope, (a,)), (workers.meet_func_scope, (b,))], together=True)
    first, second = workers.computations("meet_func_scope")
    assert {first["x"], second["x"]} == {a, b}
    assert not overlap(first, second), (first, second)


# --- 5. threads -------------------------------------------------------------------------------
def test_threads_of_one_process_compute_each_distinct_call_once():
    arguments = [i % 12 for i in range(96)]
    random.Random(1).shuffle(arguments)
    # In a child process, so that a deadlock among the threads fails instead of hanging pytest.
    [values] = run_jobs(multiprocessing.get_context("fork"),
                        [(workers.call_from_threads, (workers.square_briefly, arguments, 8))])
    assert values == [workers.expected(x) for x in arguments]
    assert computed_counts("square_briefly") == {x: 1 for x in range(12)}
    assert len({c["pid"] for c in workers.computations("square_briefly")}) == 1


# --- 6. a killed process ----------------------------------------------------------------------
def test_a_process_killed_while_computing_does_not_block_the_next_one():
    context = multiprocessing.get_context("fork")
    with started(context, [(workers.parked, (7,))]) as holder:
        wait_for_marker("parked-7.parked")
        victim = holder.processes[0]
        assert lock_is_held_by_another_process(workers.parked, 7), "precondition"
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=WAIT_LIMIT)
        assert victim.exitcode == -signal.SIGKILL

    assert not lock_is_held_by_another_process(workers.parked, 7), "the kernel released it"
    [value] = run_jobs(context, [(workers.parked, (7,))])  # would hang on a stale lock
    assert value["x"] == 7 and value["pid"] != victim.pid
    assert [c["pid"] for c in workers.computations("parked")] == [value["pid"]]
    assert workers.parked.is_cached(7)
    assert workers.parked(7) == value  # read back from the store, not computed
    assert len(workers.computations("parked")) == 1


# --- 7. lock_timeout ----------------------------------------------------------------------------
def test_lock_timeout_computes_anyway_warns_and_stores_the_result():
    context = multiprocessing.get_context("fork")
    with started(context, [(workers.parked_with_timeout, (7,))]) as holder:
        wait_for_marker("parked_with_timeout-7.parked")
        assert lock_is_held_by_another_process(workers.parked_with_timeout, 7), "precondition"

        with pytest.warns(ptd.PersistWarning, match="within 0.2s"):
            value = workers.parked_with_timeout(7)
        assert value == {"x": 7, "pid": os.getpid()}
        assert holder.processes[0].is_alive(), "the holder is still computing"
        assert workers.parked_with_timeout.is_cached(7)
        assert workers.parked_with_timeout(7) == value  # a hit: the result was kept
        assert [c["pid"] for c in workers.computations("parked_with_timeout")] == [os.getpid()]

        workers.touch("parked_with_timeout-7.release")
        [held] = holder.wait()
    assert held == {"x": 7, "pid": holder.processes[0].pid}
    assert workers.parked_with_timeout(7) == held  # the newest record wins


# --- 8. nested calls --------------------------------------------------------------------------
def test_nested_cached_calls_under_the_global_lock_do_not_deadlock():
    # In a child process, so that a deadlock fails instead of hanging pytest.
    [values] = run_jobs(multiprocessing.get_context("fork"),
                        [(workers.call_each, (workers.outer_global, [1, 2, 1]))])
    e = workers.expected
    assert values == [{"x": 1, "inner": [e(1), e(2)]}, {"x": 2, "inner": [e(2), e(3)]},
                      {"x": 1, "inner": [e(1), e(2)]}]
    assert computed_counts("outer_global") == {1: 1, 2: 1}
    assert computed_counts("inner_global") == {1: 1, 2: 1, 3: 1}


def test_nested_cached_calls_from_two_processes_under_the_global_lock_do_not_deadlock():
    jobs = [(workers.call_each, (workers.outer_global, [1, 2, 3])),
            (workers.call_each, (workers.outer_global, [3, 2, 1]))]
    first, second = run_jobs(multiprocessing.get_context("fork"), jobs, together=True)
    assert first == second[::-1]
    assert computed_counts("outer_global") == {1: 1, 2: 1, 3: 1}
    assert computed_counts("inner_global") == {1: 1, 2: 1, 3: 1, 4: 1}


def test_a_recursive_cached_function_under_the_func_lock_does_not_deadlock():
    [[value]] = run_jobs(multiprocessing.get_context("fork"),
                         [(workers.call_each, (workers.fibonacci, [25]))])
    assert value == 75025
    assert computed_counts("fibonacci") == {n: 1 for n in range(26)}


# --- 9. many writers and readers --------------------------------------------------------------
@pytest.mark.slow
def test_many_processes_writing_and_reading_one_store_agree():
    order = list(range(500))
    random.Random(2).shuffle(order)
    # Writer i asks for [100 i, 100 i + 200) in one shared random order: neighbours collide.
    plans = [[x for x in order if 100 * i <= x < 100 * i + 200] for i in range(4)]
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    readers = [(workers.read_until_stopped, (workers.square, order[k::2], stop))
               for k in range(2)]
    with started(context, readers) as reading:
        writes = run_jobs(context, [(workers.call_each, (workers.square, plan))
                                    for plan in plans])
        stop.set()
        reports = reading.wait()

    for plan, values in zip(plans, writes):
        assert values == [workers.expected(x) for x in plan]
    for report in reports:
        assert report["wrong"] == []
        assert report["final_misses"] == [], "a reader missed results stored before it looked"
    assert computed_counts("square") == {x: 1 for x in range(500)}
    assert workers.square.cache_info()["entries"] == 500
