"""Under load: N processes (2, 4 and 8, on a 2-core machine) hammer one cache at once.

For each lock scope (``call``, ``func``, ``global``) and for ``groupby`` leaves that several
processes create at the same moment, every process asks for every distinct call, in its own
random order, with repeats, all released together by a barrier. What must hold:

* every call returns the right value, and no process raises;
* every distinct call is computed exactly once in total (counted outside the cache, in the
  events log) and stored exactly once (one version per call: nobody stored it a second time);
* no entry is lost: the cache holds every distinct call afterwards.

Threads of one process creating ``groupby`` leaves at once are checked too (the in-process
registry of open environments must never open one twice). Pools with ``fork`` while the parent
holds environments open, and with ``spawn``, are in tests/test_concurrency.py.
"""

import multiprocessing
import random

import pytest

import load_workers
from concurrency_workers import call_each, call_from_threads, expected
from load_workers import call_each_pair, leaf_expected
from test_concurrency import computed_counts, run_jobs, worker_env  # noqa: F401 (autouse fixture)

DISTINCT_CALLS = 100
CALLS_PER_PROCESS = 400
FORK = multiprocessing.get_context("fork")


def overlapping_plans(processes: int, items: list, calls: int, seed: int) -> list:
    """One plan per process: every item once, plus random repeats, in the process's own order."""
    rng = random.Random(seed)
    plans = []
    for _ in range(processes):
        plan = list(items) + [rng.choice(items) for _ in range(calls - len(items))]
        rng.shuffle(plan)
        plans.append(plan)
    return plans


@pytest.mark.parametrize("processes", [2, 4, 8])
@pytest.mark.parametrize("scope", ["call", "func", "global"])
def test_n_processes_hammering_one_function_compute_and_store_each_call_once(scope, processes):
    function = load_workers.HAMMER_BY_SCOPE[scope]
    plans = overlapping_plans(processes, list(range(DISTINCT_CALLS)), CALLS_PER_PROCESS,
                              seed=processes)

    values = run_jobs(FORK, [(call_each, (function, plan)) for plan in plans], together=True)

    for plan, got in zip(plans, values):
        assert got == [expected(x) for x in plan]
    assert computed_counts(function.__name__) == {x: 1 for x in range(DISTINCT_CALLS)}
    info = function.cache_info()
    assert (info["entries"], info["versions"]) == (DISTINCT_CALLS, DISTINCT_CALLS)


LEAVES = [f"leaf{n}" for n in range(12)]
LEAF_CALLS = [(leaf, x) for leaf in LEAVES for x in range(5)]


@pytest.mark.parametrize("scope", ["call", "func", "global"])
def test_groupby_leaves_created_by_four_processes_at_once_are_computed_and_stored_once(scope):
    function = load_workers.LEAVES_BY_SCOPE[scope]
    plans = overlapping_plans(4, LEAF_CALLS, 100, seed=7)

    values = run_jobs(FORK, [(call_each_pair, (function, plan)) for plan in plans],
                      together=True)

    for plan, got in zip(plans, values):
        assert got == [leaf_expected(leaf, x) for leaf, x in plan]
    assert computed_counts(function.__name__) == {f"{leaf}/{x}": 1 for leaf, x in LEAF_CALLS}
    info = function.cache_info()
    assert (info["leaves"], info["entries"], info["versions"]) == (
        len(LEAVES), len(LEAF_CALLS), len(LEAF_CALLS))


def _leaf_of(pair):
    return load_workers.leaves_call(*pair)


def test_threads_of_one_process_creating_groupby_leaves_at_once_compute_each_call_once():
    """Eight threads opening the same new leaf stores at the same moment: each environment is
    opened once per process, and every call computed once."""
    plan = overlapping_plans(1, LEAF_CALLS, 240, seed=11)[0]
    # In a child process, so that a deadlock among the threads fails instead of hanging pytest.
    [values] = run_jobs(FORK, [(call_from_threads, (_leaf_of, plan, 8))])

    assert values == [leaf_expected(leaf, x) for leaf, x in plan]
    assert computed_counts("leaves_call") == {f"{leaf}/{x}": 1 for leaf, x in LEAF_CALLS}
    info = load_workers.leaves_call.cache_info()
    assert (info["leaves"], info["entries"], info["versions"]) == (
        len(LEAVES), len(LEAF_CALLS), len(LEAF_CALLS))
