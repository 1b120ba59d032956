"""``@persistf()`` on ``async def`` (issue 14): awaiting the decorated function returns the stored
result or computes, stores and returns it, with every option and mode of plain functions.

What an asyncio pipeline relies on:

* compute once across the tasks of one loop, threads (each with its loop) and processes;
* the loop is never blocked by a wait: other tasks keep running while one waits for a lock
  another process holds, or for a shared tier that does not answer;
* a cancelled task leaves no lock behind, and a cancelled or failing computation stores
  nothing and lets the next waiter compute;
* nested cached coroutines (recursion, the same bucket, ``gather``, cycles of tasks) never hang.

Everything that could hang runs under a time limit: ``asyncio.wait_for`` in the loop, ``join``
timeouts for threads, ``communicate``/``waitpid`` limits for processes.
"""

import asyncio
import importlib
import inspect
import logging
import os
import subprocess
import sys
import threading
import time
import warnings

import pytest

import persist_to_disk as ptd
from conftest import write_module
from helpers import lock_held_elsewhere
from persist_to_disk.engine import lock_place
from persist_to_disk.errors import PersistWarning
from test_engine import wait_for_child

LIMIT = 60.0  # seconds before something that has not finished counts as hung


def run(coroutine, limit: float = LIMIT):
    """Run ``coroutine`` in a new event loop, failing (not hanging) after ``limit`` seconds."""
    async def bounded():
        return await asyncio.wait_for(coroutine, limit)
    return asyncio.run(bounded())


def in_thread(function, limit: float = LIMIT):
    """``function()`` in a new thread (with its own event loop if it makes one); its result,
    or the test fails if it has not returned within ``limit`` seconds."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as err:  # handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=limit)
    if thread.is_alive():
        pytest.fail(f"a call from another thread did not return within {limit:.0f} s: a lock "
                    "was left held")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --- functions other processes call too ---------------------------------------------------
JOBS = '''
import asyncio
import os

import persist_to_disk as ptd


def note(line):
    """One O_APPEND line per event, in the test's events folder."""
    with open(os.path.join(os.environ["ASYNC_EVENTS"], "events.log"), "a") as log:
        log.write(line + "\\n")


@ptd.persistf(skip_kwargs=["seconds"])
async def slow(x, seconds=0.0):
    note(f"computing slow {x} {os.getpid()}")
    await asyncio.sleep(seconds)
    return {"x": x, "pid": os.getpid()}


@ptd.persistf(skip_kwargs=["seconds"], lock_timeout=0.3)
async def impatient(x, seconds=0.0):
    note(f"computing impatient {x} {os.getpid()}")
    await asyncio.sleep(seconds)
    return {"x": x, "pid": os.getpid()}
'''


class Jobs:
    """The module ``async_jobs`` (in the test's project folder), imported here, and other
    processes running its functions."""

    def __init__(self, ptd_env, module) -> None:
        self.env = ptd_env
        self.module = module
        self.events = ptd_env.tmp / "events"
        self.processes = []

    def start(self, function: str, x: int, seconds: float) -> subprocess.Popen:
        """Another process awaiting ``function(x, seconds=seconds)``; returns once it is
        computing, so it holds the call's compute lock."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_TO_DISK_")}
        env.update(PERSIST_TO_DISK_HOME=str(self.env.home), ASYNC_EVENTS=str(self.events))
        code = ("import asyncio, async_jobs; "
                f"print(asyncio.run(async_jobs.{function}({x}, seconds={seconds}))['pid'])")
        process = subprocess.Popen([sys.executable, "-c", code], cwd=self.env.project, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.processes.append(process)
        deadline = time.monotonic() + LIMIT
        while f"computing {function} {x} {process.pid}" not in self.lines():
            if process.poll() is not None:
                pytest.fail(f"the other process failed: {process.communicate()[1]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the other process did not start computing within {LIMIT:.0f} s")
            time.sleep(0.01)
        return process

    def finish(self, process: subprocess.Popen) -> int:
        """Wait for ``process``; the pid it printed (whose result it returned)."""
        try:
            out, err = process.communicate(timeout=LIMIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the other process did not finish within {LIMIT:.0f} s")
        assert process.returncode == 0, err
        return int(out.strip())

    def lines(self) -> list:
        log = self.events / "events.log"
        return log.read_text().splitlines() if log.exists() else []

    def computed(self, function: str, x: int) -> list:
        """The pids of the processes that computed ``function(x)``."""
        prefix = f"computing {function} {x} "
        return [int(line[len(prefix):]) for line in self.lines() if line.startswith(prefix)]

    def lock_of(self, function, x: int):
        """``(lock file, byte)`` of the compute lock a miss of ``function(x)`` takes."""
        persisted = function.__persisted__
        place = persisted.locate((x,), {})
        return lock_place(persisted.scope, place.store.path, place.digest,
                          persisted.project_root)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=LIMIT)


@pytest.fixture
def jobs(ptd_env, monkeypatch):
    write_module(ptd_env.project, "async_jobs.py", JOBS)
    (ptd_env.tmp / "events").mkdir()
    monkeypatch.setenv("ASYNC_EVENTS", str(ptd_env.tmp / "events"))
    monkeypatch.syspath_prepend(str(ptd_env.project))
    sys.modules.pop("async_jobs", None)
    group = Jobs(ptd_env, importlib.import_module("async_jobs"))
    yield group
    group.stop()
    sys.modules.pop("async_jobs", None)


def ticking_while(awaitable, interval: float = 0.01):
    """Await ``awaitable`` while another task ticks every ``interval`` s: ``(its result, the
    ticks, the longest gap between two ticks, the seconds it took)``. A loop blocked by the
    awaited call shows as few ticks and one long gap."""
    async def measure():
        task = asyncio.ensure_future(awaitable)
        started = last = time.monotonic()
        ticks, longest = 0, 0.0
        while not task.done():
            await asyncio.sleep(interval)
            now = time.monotonic()
            ticks, longest, last = ticks + 1, max(longest, now - last), now
        return await task, ticks, longest, time.monotonic() - started
    return run(measure())


# --- the decorated coroutine function -----------------------------------------------------------
def test_the_decorated_function_is_a_coroutine_function_with_the_same_signature():
    async def fetch(url: str, retries: int = 3, *, timeout: float = 1.0) -> dict:
        """Fetch a page."""
        return {"url": url}

    decorated = ptd.persistf()(fetch)
    assert inspect.iscoroutinefunction(decorated)
    assert inspect.signature(decorated) == inspect.signature(fetch)
    assert decorated.__name__ == "fetch" and decorated.__doc__ == "Fetch a page."
    assert decorated.uncached is fetch
    assert run(decorated("a")) == {"url": "a"}


def test_async_generators_are_still_refused():
    async def pages():
        yield 1

    with pytest.raises(TypeError, match="generator"):
        ptd.persistf()(pages)


def test_a_second_await_is_a_hit_and_the_statistics_count_it():
    calls = []

    @ptd.persistf()
    async def square(x):
        calls.append(x)
        await asyncio.sleep(0)
        return x * x

    async def main():
        return [await square(3), await square(3), await square(4)]

    assert run(main()) == [9, 9, 16]
    assert calls == [3, 4]
    info = square.cache_info()
    assert (info["hits"], info["misses"], info["entries"]) == (1, 2, 2)
    assert square.is_cached(3) and not square.is_cached(5)
    assert square.forget(3) and not square.is_cached(3)


def test_every_mode_works_when_awaited():
    calls = []

    @ptd.persistf()
    async def double(x):
        calls.append(x)
        return [2 * x, len(calls)]

    async def main():
        assert await double(1, cache_switch=ptd.NOCACHE) == [2, 1]
        assert await double(1, cache_switch=ptd.CHECKONLY) is False, "NOCACHE stored nothing"
        with pytest.raises(ptd.CacheMissError, match="READONLY"):
            await double(1, cache_switch=ptd.READONLY)
        assert await double(1) == [2, 2]
        assert await double(1, cache_switch=ptd.CHECKONLY) is True
        assert await double(1, cache_switch=ptd.READONLY) == [2, 2]
        assert await double(1, cache_switch=ptd.RECACHE) == [2, 3]
        assert await double(1) == [2, 3], "RECACHE stored the newest version"

    run(main())
    assert calls == [1, 1, 1]

    @ptd.persistf(cache=ptd.READONLY)
    async def never_computed(x):
        raise AssertionError("READONLY never computes")

    with pytest.raises(ptd.CacheMissError):
        run(never_computed(1))


def test_max_age_and_the_per_call_max_age_keyword_recompute_what_is_older(ptd_env):
    now = [1_000_000.0]
    ptd.config.set_clock(lambda: now[0])
    calls = []

    @ptd.persistf(max_age=60, skip_kwargs=["now"])  # (the clock it reads is not an argument)
    async def quote(symbol):
        calls.append(symbol)
        return (symbol, now[0])

    async def main():
        first = await quote("X")
        now[0] += 30
        assert await quote("X") == first, "within max_age: a hit"
        assert await quote("X", cache_max_age=10) != first, "older than this call's max age"
        now[0] += 61
        third = await quote("X")
        assert third == ("X", now[0]), "older than max_age: computed again"
        return first

    run(main())
    assert calls == ["X", "X", "X"]


def test_fifty_tasks_awaiting_one_call_compute_it_once_and_each_gets_its_own_copy():
    calls, threads = [], []

    @ptd.persistf()
    async def fetch(x):
        calls.append(x)
        await asyncio.sleep(0.2)
        threads.append(threading.active_count())  # while 49 tasks wait for this one
        return {"x": x, "rows": list(range(10))}

    async def main():
        return await asyncio.gather(*(fetch(7) for _ in range(50)))

    threads_before = threading.active_count()
    results = run(main())
    assert calls == [7]
    assert threads[0] <= threads_before + 1, "waiting tasks cost no thread (the computing "\
        "task's lock has one)"
    assert all(result == {"x": 7, "rows": list(range(10))} for result in results)
    assert len({id(result) for result in results}) == 50, "waiters read copies of their own"
    info = fetch.cache_info()
    assert (info["misses"], info["hits"]) == (1, 49)


def test_two_hundred_different_calls_computing_at_once_do_not_take_a_thread_each():
    threads = []

    @ptd.persistf()
    async def ask(prompt):
        await asyncio.sleep(0.3)
        threads.append(threading.active_count())  # while the others compute too
        return prompt.upper()

    async def main():
        return await asyncio.gather(*(ask(f"p{i}") for i in range(200)))

    threads_before = threading.active_count()
    assert run(main()) == [f"P{i}" for i in range(200)]
    assert max(threads) < threads_before + 40, "a free lock is taken without a thread (the "\
        "results are written by the loop's default executor)"
    assert ask.cache_info()["entries"] == 200


def test_threads_each_running_their_own_event_loop_compute_a_call_once():
    calls = []

    @ptd.persistf()
    async def slow_square(x):
        calls.append(x)
        await asyncio.sleep(0.3)
        return x * x

    results = []
    threads = [threading.Thread(target=lambda: results.append(run(slow_square(5))))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=LIMIT)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert results == [25] * 4
    assert calls == [5]


# --- waiting never blocks the loop --------------------------------------------------------------
def test_other_tasks_keep_running_while_one_waits_for_a_lock_another_process_holds(jobs):
    other = jobs.start("slow", 1, seconds=1.5)
    value, ticks, longest, seconds = ticking_while(jobs.module.slow(1))
    assert value == {"x": 1, "pid": other.pid}, "the other process's result, read once stored"
    assert jobs.finish(other) == other.pid
    assert jobs.computed("slow", 1) == [other.pid], "computed once, by the other process"
    assert seconds > 0.5, "it did wait for the other process"
    assert longest < 0.5, f"the loop was blocked for {longest:.2f} s"
    assert ticks > seconds / 0.01 / 8, f"only {ticks} ticks in {seconds:.2f} s"


def test_a_lookup_that_waits_for_a_shared_tier_keeps_the_loop_running(
        s3_env, silent_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_server)
    monkeypatch.setenv("PERSIST_TO_DISK_REMOTE_TIMEOUT", "1")
    ptd.config.reload()
    monkeypatch.setenv("PERSIST_TO_DISK_REMOTE_SECRET", SECRET)
    ptd.config.set_remote(s3_env.url)

    @ptd.persistf()
    async def triple(x):
        return 3 * x

    triple.__persisted__.store_for(())  # opened first: boto3's import is not the lookup's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PersistWarning)  # (the server does not answer)
        value, ticks, longest, seconds = ticking_while(triple(1))
    assert value == 3
    assert seconds > 0.8, "the lookup waited for the server (one remote timeout)"
    assert longest < 0.5, f"the loop was blocked for {longest:.2f} s"


def test_a_result_another_machine_shared_is_fetched_instead_of_computed(
        ptd_env, s3_env, monkeypatch):
    monkeypatch.setenv("PERSIST_TO_DISK_REMOTE_SECRET", SECRET)
    ptd.config.set_remote(s3_env.url)
    calls = []

    @ptd.persistf()
    async def triple(x):
        calls.append(x)
        return 3 * x

    with warnings.catch_warnings():
        warnings.simplefilter("error", PersistWarning)
        assert run(triple(2)) == 6  # computed, stored here and uploaded
        ptd.config.set_persist_path(str(ptd_env.tmp / "another-machine"))  # an empty local cache
        assert run(triple(2)) == 6, "fetched from the shared tier"
        assert run(triple(2, cache_switch=ptd.CHECKONLY)) is True
    assert calls == [2]
    assert triple.cache_info()["hits"] == 1


def test_lock_timeout_computes_anyway_warns_and_stores_the_result(jobs):
    other = jobs.start("impatient", 2, seconds=3.0)
    with pytest.warns(PersistWarning, match="within 0.3s"):
        value = run(jobs.module.impatient(2))
    assert value == {"x": 2, "pid": os.getpid()}
    assert jobs.module.impatient.is_cached(2)
    jobs.finish(other)
    assert sorted(jobs.computed("impatient", 2)) == sorted([other.pid, os.getpid()])


# --- cancellation and failures --------------------------------------------------------------------
def test_cancelling_a_task_that_waits_for_another_process_leaves_no_lock_held(jobs):
    other = jobs.start("slow", 3, seconds=1.0)
    lock_file, offset = jobs.lock_of(jobs.module.slow, 3)

    async def wait_then_cancel():
        task = asyncio.ensure_future(jobs.module.slow(3))
        await asyncio.sleep(0.3)
        assert not task.done(), "precondition: it waits for the other process"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Still in the loop (a thread whose loop has closed gives its lock back anyway): the
        # thread the cancelled task left behind takes the lock once the other process gives
        # it up, and gives it back at once.
        assert jobs.finish(other) == other.pid
        deadline = time.monotonic() + LIMIT
        while lock_held_elsewhere(lock_file, offset):
            assert time.monotonic() < deadline, "the cancelled task's lock was never released"
            time.sleep(0.01)
        return in_thread(lambda: run(jobs.module.slow(3, cache_switch=ptd.RECACHE)))

    assert run(wait_then_cancel()) == {"x": 3, "pid": os.getpid()}


STEP = {"started": threading.Event(), "go": threading.Event()}


async def wait_for_go():
    STEP["started"].set()
    while not STEP["go"].is_set():
        await asyncio.sleep(0.005)


def test_cancelling_the_computing_task_stores_nothing_and_the_next_waiter_computes():
    STEP["started"].clear()
    STEP["go"].clear()
    calls = []

    @ptd.persistf()
    async def fetch(x):
        calls.append(x)
        await wait_for_go()
        return [x, len(calls)]

    async def main():
        computing = asyncio.ensure_future(fetch(1))
        while not STEP["started"].is_set():
            await asyncio.sleep(0.005)
        waiting = asyncio.ensure_future(fetch(1))
        await asyncio.sleep(0.05)
        computing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await computing
        assert not fetch.is_cached(1), "the cancelled computation stored nothing"
        STEP["go"].set()
        return await waiting

    assert run(main()) == [1, 2], "the waiter computed it"
    assert calls == [1, 1]
    assert run(fetch(1)) == [1, 2]

    # Cancelled with nobody waiting: the lock is given back (a call from another thread and
    # loop would wait for it for ever otherwise).
    STEP["started"].clear()
    STEP["go"].clear()

    async def cancel_alone():
        computing = asyncio.ensure_future(fetch(2))
        while not STEP["started"].is_set():
            await asyncio.sleep(0.005)
        computing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await computing

    run(cancel_alone())
    STEP["go"].set()
    assert in_thread(lambda: run(fetch(2))) == [2, 4]


class SlowToPickle:
    """A result whose pickling takes half a second (so a task can be cancelled meanwhile)."""

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        time.sleep(0.5)
        return SlowToPickle, (self.value,)


def test_a_task_cancelled_while_its_result_is_written_still_stores_it_for_the_waiters():
    calls = []

    @ptd.persistf()
    async def build(x):
        calls.append(x)
        return SlowToPickle(x)

    async def main():
        computing = asyncio.ensure_future(build(1))
        while not calls:
            await asyncio.sleep(0.005)
        waiting = asyncio.ensure_future(build(1))
        await asyncio.sleep(0.2)  # the result is being written
        computing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await computing
        return await waiting

    assert run(main()).value == 1
    assert calls == [1], "the waiter read the result written after the cancellation"
    assert in_thread(lambda: run(build(1))).value == 1, "and the lock was given back"
    assert calls == [1]


def test_an_exception_in_the_coroutine_stores_nothing_and_waiting_tasks_compute_themselves():
    attempts = []

    @ptd.persistf()
    async def flaky(x):
        attempts.append(x)
        await asyncio.sleep(0.05)
        if len(attempts) == 1:
            raise ValueError("the first attempt fails")
        return 2 * x

    async def main():
        return await asyncio.gather(*(flaky(3) for _ in range(3)), return_exceptions=True)

    first, second, third = run(main())
    assert isinstance(first, ValueError), "the exception reaches the task that computed"
    assert (second, third) == (6, 6)
    assert attempts == [3, 3], "one waiter computed it again, the other read its result"

    @ptd.persistf()
    async def failing(x):
        raise KeyError(x)

    with pytest.raises(KeyError):
        run(failing(1))
    assert not failing.is_cached(1)
    assert in_thread(lambda: run(failing(1, cache_switch=ptd.CHECKONLY))) is False


def test_a_result_that_cannot_be_pickled_is_returned_to_every_task():
    calls = []

    @ptd.persistf()
    async def handle(x):
        calls.append(x)
        await asyncio.sleep(0.02)
        return threading.Lock()

    async def main():
        return await asyncio.gather(*(handle(1) for _ in range(3)))

    with pytest.warns(PersistWarning, match="cannot serialize|neither pickle"):
        results = run(main())
    assert all(type(result) is type(threading.Lock()) for result in results)
    assert calls == [1, 1, 1], "nothing was stored, so each waiter computed in turn"


# --- options -----------------------------------------------------------------------------------
METHOD_CALLS = []


class Client:
    def __init__(self, base):
        self.base = base

    @ptd.persistf()
    async def get(self, path):
        METHOD_CALLS.append((self.base, path))
        await asyncio.sleep(0)
        return f"{self.base}/{path}"


def test_async_methods_are_cached_by_the_state_of_self():
    METHOD_CALLS.clear()

    async def main():
        return [await Client("a").get("x"), await Client("a").get("x"),
                await Client("b").get("x")]

    assert run(main()) == ["a/x", "a/x", "b/x"]
    assert METHOD_CALLS == [("a", "x"), ("b", "x")]
    assert Client.get.is_cached(Client("a"), "x")


def test_groupby_and_skip_kwargs_work_when_awaited(ptd_env):
    calls = []

    @ptd.persistf(groupby=["dataset"], skip_kwargs=["verbose"])
    async def train(dataset, epochs, verbose=False):
        calls.append((dataset, epochs))
        return f"{dataset}-{epochs}"

    async def main():
        return [await train("mnist", 1), await train("mnist", 1, verbose=True),
                await train("cifar", 1), await train("mnist", 2, cache_switch=ptd.CACHE)]

    assert run(main()) == ["mnist-1", "mnist-1", "cifar-1", "mnist-2"]
    assert calls == [("mnist", 1), ("cifar", 1), ("mnist", 2)]
    leaves = sorted(os.listdir(train.cache_folder()))
    assert leaves == ["cifar", "mnist"]


def test_a_closure_changing_a_captured_list_while_it_is_awaited_keeps_hitting():
    seen = []

    @ptd.persistf()
    async def remember(x):
        await asyncio.sleep(0)
        seen.append(x)
        return len(seen)

    async def main():
        return [await remember(1), await remember(1)]

    assert run(main()) == [1, 1], "the captured list is keyed as it was before the run"
    assert seen == [1]


# --- nested cached coroutines ---------------------------------------------------------------------
@ptd.persistf()
async def add_one(x):
    await asyncio.sleep(0.001)
    return x + 1


@ptd.persistf()
async def add_four(x):
    first = await add_one(x)
    second = await add_one(first)
    return sum(await asyncio.gather(add_one(second), add_one(second + 1))) - second - 1


@ptd.persistf()
async def fib(n):
    if n < 2:
        return n
    first, second = await asyncio.gather(fib(n - 1), fib(n - 2))
    return first + second


@pytest.mark.parametrize("scope", ["call", "func", "global"])
def test_nested_cached_coroutines_and_recursion_never_hang_under_any_lock_scope(scope, caplog):
    ptd.config.set_lock_granularity(scope)
    ptd.config.set_hashsize(1)  # every call in one bucket
    fib.cache_info(reset=True)

    async def main():
        return (await add_four(1), await fib(15),
                await asyncio.gather(add_four(10), add_four(10), fib(12), add_four(20)))

    with caplog.at_level(logging.WARNING, logger="persist_to_disk"):
        assert run(main()) == (5, 610, [14, 14, 144, 24])
    assert "without its compute lock" not in caplog.text, "no cycle, so no lock was skipped"
    assert fib.cache_info()["misses"] == 16, "each fib(n) computed once"


AGAIN = {"runs": 0}


@ptd.persistf()
async def again(x, child_task=False):
    AGAIN["runs"] += 1
    if AGAIN["runs"] % 3 == 0:
        return 0
    inner = again(x, child_task)
    return 1 + await (asyncio.ensure_future(inner) if child_task else inner)


@pytest.mark.parametrize("child_task", [False, True])
def test_a_coroutine_awaiting_its_own_call_again_computes_it_instead_of_waiting_for_itself(
        child_task):
    # A thread's nested call of the call it computes takes the lock it holds again; a task's
    # (or its child task's) must not wait for its own computation either.
    AGAIN["runs"] = 0
    assert run(again(1, child_task), limit=30) == 2
    assert AGAIN["runs"] == 3
    assert run(again(1, child_task)) == 2, "the outermost run's result is the newest"


CYCLE = {}


@ptd.persistf()
async def ping():
    CYCLE["runs"].append("ping")
    if CYCLE["runs"].count("ping") > 1:
        return "ping"
    CYCLE["ping"].set()
    await CYCLE["pong"].wait()
    return "ping>" + await pong()


@ptd.persistf()
async def pong():
    CYCLE["runs"].append("pong")
    if CYCLE["runs"].count("pong") > 1:
        return "pong"
    CYCLE["pong"].set()
    await CYCLE["ping"].wait()
    return "pong>" + await ping()


def test_tasks_whose_calls_wait_for_each_other_in_a_cycle_compute_without_waiting(caplog):
    async def main():
        CYCLE.update(runs=[], ping=asyncio.Event(), pong=asyncio.Event())
        return await asyncio.gather(ping(), pong())

    with caplog.at_level(logging.WARNING, logger="persist_to_disk"):
        first, second = run(main(), limit=30)
    # One of the two tasks sees the cycle and computes the other's call itself (its second
    # run, which calls nothing); the other task then reads that result.
    assert {first, second} in ({"ping>pong", "pong>ping>pong"}, {"pong>ping", "ping>pong>ping"})
    assert "cycle of tasks" in caplog.text


def test_a_child_forked_while_a_task_computes_computes_in_its_own_loop():
    STEP["started"].clear()
    STEP["go"].clear()
    parent = os.getpid()

    @ptd.persistf()
    async def held(x):
        if os.getpid() == parent:
            await wait_for_go()
        return (x, os.getpid())

    computing = threading.Thread(target=lambda: run(held(1)), daemon=True)
    computing.start()
    assert STEP["started"].wait(LIMIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (fork with threads, 3.12+)
        pid = os.fork()
    if pid == 0:  # the child: the parent's loop, tasks and locks are not its own
        code = 1
        try:
            child = os.getpid()
            code = 0 if run(held(1), 20) == (1, child) and run(held(2), 20) == (2, child) else 1
        finally:
            os._exit(code)
    try:
        assert wait_for_child(pid, LIMIT) == 0
    finally:
        STEP["go"].set()
        computing.join(timeout=LIMIT)
    assert not computing.is_alive()
    assert run(held(1)) == (1, parent), "the parent's result, stored after the child's"


# The shared tier's fixtures: a real S3 server (conftest.py) and one that never answers.
from shared_machines import SECRET  # noqa: E402
from test_shared_faults import silent_server  # noqa: E402,F401
