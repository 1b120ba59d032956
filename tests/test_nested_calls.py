"""Cached functions calling cached functions never hang (issue 9), and independent processes
still compute each call once.

The jobs are in ``nested_jobs.py``, run as separate programs from the test's project folder:
several at once where the issue's hangs needed several. Each program has a time limit far
above what it needs (2-10 s), so a hang fails the test instead of hanging the suite.

The rules (README, "Nested cached calls"; ``engine/locks.py``): the ``call`` scope locks the
call itself; a process never waits for a lock its ancestor holds; threads of one process share
its locks and wait for each other only to compute the same call; and a thread that holds locks
never waits in a cycle. Where a rule lets a call compute without its lock, the log says
so.
"""

import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
JOB_LIMIT = 120  # seconds; each job needs a few


@pytest.fixture
def jobs(ptd_env):
    """``jobs.start(scenario, scope, argument)`` starts a job; ``jobs.finish()`` waits for all
    (failing on a hang or an error) and returns their stderr; ``jobs.computed()`` counts the
    computations of all jobs by ``(function, argument)``."""
    shutil.copy(HERE / "nested_jobs.py", ptd_env.project / "nested_jobs.py")
    log = ptd_env.tmp / "computed.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_TO_DISK_")}
    env.update(PERSIST_TO_DISK_HOME=str(ptd_env.home), NESTED_LOG=str(log))
    running = []

    class Jobs:
        def start(self, scenario: str, scope: str, argument: int = 0) -> None:
            running.append(subprocess.Popen(
                [sys.executable, "nested_jobs.py", scenario, scope, str(argument)],
                cwd=ptd_env.project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True))

        def finish(self) -> str:
            errors = []
            try:
                for process in running:
                    try:
                        out, err = process.communicate(timeout=JOB_LIMIT)
                    except subprocess.TimeoutExpired:
                        pytest.fail(f"a job hung: {process.args[2:]} did not finish within "
                                    f"{JOB_LIMIT} s")
                    assert process.returncode == 0 and out.strip() == "done", (process.args, err)
                    errors.append(err)
            finally:
                for process in running:
                    if process.poll() is None:
                        process.kill()
                        process.wait()
            return "\n".join(errors)

        def computed(self) -> collections.Counter:
            lines = log.read_text().splitlines() if log.exists() else []
            return collections.Counter(tuple(line.split(" ", 1)) for line in lines)

    yield Jobs()
    for process in running:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("scope", ["call", "func", "global"])
def test_three_jobs_recursing_through_overlapping_epochs_finish_and_compute_each_epoch_once(
        jobs, scope):
    for epoch in (150, 120, 90):
        jobs.start("train", scope, epoch)
    jobs.finish()
    counts = jobs.computed()
    assert set(counts) == {("train_until", str(epoch)) for epoch in range(151)}
    assert max(counts.values()) == 1, "independent jobs computed an epoch twice"


@pytest.mark.parametrize("scope", ["call", "func", "global"])
def test_a_function_handing_calls_of_itself_to_a_thread_pool_finishes(jobs, scope):
    jobs.start("threads", scope, 1)
    log = jobs.finish()
    counts = jobs.computed()
    assert len(counts) == 2 + 2 * 20 + 2 * 400  # every distinct call, two levels deep
    assert max(counts.values()) == 1
    assert "without its compute lock" not in log  # threads share their process's lock


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
@pytest.mark.parametrize("scope", ["call", "func", "global"])
def test_a_function_handing_calls_of_itself_to_a_process_pool_finishes(jobs, scope,
                                                                     start_method):
    jobs.start(start_method, scope, 1)
    log = jobs.finish()
    counts = jobs.computed()
    assert len(counts) == 3 + 3 * 20
    assert max(counts.values()) == 1
    if scope != "call":
        assert "an ancestor of this one" in log


@pytest.mark.parametrize("scope", ["func", "global", "call"])
def test_two_jobs_of_mutually_recursive_functions_finish(jobs, scope):
    jobs.start("ping", scope, 40)
    jobs.start("pong", scope, 41)
    jobs.finish()
    counts = jobs.computed()
    assert ("ping", "40") in counts and ("pong", "41") in counts


@pytest.mark.parametrize("scope", ["func", "global"])
def test_two_threads_of_mutually_recursive_functions_finish(jobs, scope):
    jobs.start("ping-pong-threads", scope, 30)
    jobs.finish()
    assert ("ping", "30") in jobs.computed()


def test_two_jobs_with_two_threads_each_of_mutually_recursive_functions_finish(jobs):
    jobs.start("ping-pong-threads", "func", 30)
    jobs.start("ping-pong-threads", "func", 31)
    jobs.finish()
    counts = jobs.computed()
    assert ("ping", "31") in counts and ("pong", "32") in counts


@pytest.mark.parametrize("scope", ["call", "func", "global"])
def test_a_call_handing_another_functions_call_with_the_same_arguments_to_a_thread_finishes(
        jobs, scope):
    jobs.start("other-function-in-a-thread", scope, 7)
    jobs.finish()
    assert jobs.computed() == {("outer", "7"): 1, ("inner", "7"): 1}


@pytest.mark.parametrize("scope", ["func", "global"])
def test_a_holder_waiting_for_its_helper_thread_in_ways_no_library_sees_never_hangs(jobs, scope):
    """A SimpleQueue (C code), an event loop, a polling loop and a plain lock: the helper's
    call is another call, and threads of one process never wait for each other's other
    calls."""
    jobs.start("waits-for-its-helper", scope)
    jobs.finish()
    assert len(jobs.computed()) == 8


def test_two_multithreaded_jobs_with_nested_calls_but_no_cycle_compute_each_call_once(jobs):
    """The kernel counts a process as one lock owner: job 1 computes ``slow_c(0)`` in one thread
    and waits in another (``top_a`` -> ``middle_b``) for job 2, which waits for ``slow_c(0)``.
    The kernel reports a cycle, but there is none: job 1's other thread finishes ``slow_c``.
    Only ``call`` locks are involved, so the report is not believed for a minute, and every
    call is computed once."""
    jobs.start("a-then-b-while-c", "call", 0)
    jobs.start("b-then-c", "call", 0)
    log = jobs.finish()
    assert jobs.computed() == {("slow_c", "0"): 1, ("middle_b", "0"): 1, ("top_a", "0"): 1}
    assert "without its compute lock" not in log
