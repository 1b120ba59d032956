"""Jobs for tests/test_nested_calls.py: cached functions that call cached functions, directly,
through thread pools and through process pools, run as ``python nested_jobs.py SCENARIO SCOPE
[ARG]`` from the test's project folder (so that pool children import this module by name).

Every computation appends a line ``<function> <argument>`` to the file named by
``NESTED_LOG``, with ``O_APPEND`` (lines of one ``write`` never interleave), so the test counts
what was computed in all processes.
"""

import concurrent.futures
import multiprocessing
import os
import sys
import time

import persist_to_disk as ptd

SCOPE = sys.argv[2] if len(sys.argv) > 2 else "call"


def computed(name: str, argument) -> None:
    fd = os.open(os.environ["NESTED_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{name} {argument}\n".encode())
    finally:
        os.close(fd)


@ptd.persistf(lock_granularity=SCOPE)
def train_until(epoch):
    """The issue's recursion: each epoch's result builds on the previous epoch's."""
    computed("train_until", epoch)
    time.sleep(0.01)
    return 0 if epoch == 0 else train_until(epoch - 1) + 1


@ptd.persistf(lock_granularity=SCOPE)
def ping(n):
    computed("ping", n)
    time.sleep(0.01)
    return 0 if n <= 0 else pong(n - 1) + 1


@ptd.persistf(lock_granularity=SCOPE)
def pong(n):
    computed("pong", n)
    time.sleep(0.01)
    return 0 if n <= 0 else ping(n - 1) + 1


@ptd.persistf(lock_granularity=SCOPE)
def fan_out_threads(n, depth):
    """Hands calls of itself to a thread pool, two levels deep."""
    computed("fan_out_threads", (n, depth))
    if depth == 0:
        return n
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(fan_out_threads, [n * 20 + i for i in range(20)],
                              [depth - 1] * 20))
    return sum(parts)


@ptd.persistf(lock_granularity=SCOPE)
def fan_out_processes(n, depth, start_method="fork"):
    """Hands calls of itself to a process pool (pool children cannot have pools of their own,
    so one level)."""
    computed("fan_out_processes", (n, depth))
    if depth == 0:
        return n
    with multiprocessing.get_context(start_method).Pool(3) as pool:
        parts = pool.starmap(fan_out_processes,
                             [(n * 20 + i, depth - 1, start_method) for i in range(20)])
    return sum(parts)


@ptd.persistf(lock_granularity=SCOPE)
def outer(x):
    """Hands a call of *another* cached function, with the same arguments, to a thread."""
    computed("outer", x)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(inner, x).result() + 1


@ptd.persistf(lock_granularity=SCOPE)
def inner(x):
    computed("inner", x)
    return 2 * x


@ptd.persistf(lock_granularity=SCOPE)
def waits_for_its_helper(n, how):
    """Hands ``waits_for_its_helper(n + 1)`` to a thread of its own and waits for it in one of
    the ways a library cannot see into."""
    computed("waits_for_its_helper", (n, how))
    if n > 0:
        return n
    import asyncio
    import queue
    import threading
    if how == "asyncio":
        async def main():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, waits_for_its_helper, n + 1, how)
        return asyncio.run(main())
    answers = queue.SimpleQueue()
    done = threading.Lock()
    done.acquire()
    helper = threading.Thread(target=lambda: (answers.put(waits_for_its_helper(n + 1, how)),
                                              done.release()))
    helper.start()
    if how == "simple-queue":
        return answers.get()
    if how == "plain-lock":
        done.acquire()
        return answers.get()
    while helper.is_alive():  # polling
        time.sleep(0.001)
    return answers.get()


@ptd.persistf(lock_granularity=SCOPE)
def slow_c(x):
    computed("slow_c", x)
    time.sleep(3)
    return x


@ptd.persistf(lock_granularity=SCOPE)
def middle_b(x):
    computed("middle_b", x)
    time.sleep(0.5)
    return slow_c(x) + 1


@ptd.persistf(lock_granularity=SCOPE)
def top_a(x):
    computed("top_a", x)
    return middle_b(x) + 1


def expected_fan_out(n, depth):
    if depth == 0:
        return n
    return sum(expected_fan_out(n * 20 + i, depth - 1) for i in range(20))


def main() -> None:
    ptd.config.set_project_path(os.getcwd())
    scenario = sys.argv[1]
    argument = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if scenario == "train":
        assert train_until(argument) == argument
    elif scenario == "ping":
        assert ping(argument) == argument
    elif scenario == "pong":
        assert pong(argument) == argument
    elif scenario == "threads":
        for n in range(argument, argument + 2):
            assert fan_out_threads(n, 2) == expected_fan_out(n, 2)
    elif scenario in ("fork", "spawn"):
        for n in range(argument, argument + 3):
            assert fan_out_processes(n, 1, scenario) == expected_fan_out(n, 1)
    elif scenario == "ping-pong-threads":
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(ping, argument)
            second = pool.submit(pong, argument + 1)
            assert first.result() == argument and second.result() == argument + 1
    elif scenario == "other-function-in-a-thread":
        assert outer(argument) == 2 * argument + 1
    elif scenario == "waits-for-its-helper":
        for how in ("simple-queue", "asyncio", "polling", "plain-lock"):
            assert waits_for_its_helper(0, how) == 1, how
    elif scenario == "a-then-b-while-c":  # two threads: c(x) now, a(x) -> b(x) half a second on
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            c = pool.submit(slow_c, argument)
            time.sleep(0.5)
            assert pool.submit(top_a, argument).result() == argument + 2
            assert c.result() == argument
    elif scenario == "b-then-c":
        time.sleep(0.2)
        assert middle_b(argument) == argument + 1
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print("done", flush=True)


if __name__ == "__main__":
    main()
