"""Faults: killed processes, a full disk, damaged or foreign records, through the decorator.

* **Killed writers, many rounds.** A process storing a stream of calls (into ``groupby`` leaves
  it keeps creating, with recomputations mixed in, at each durability level in turn) is killed
  with SIGKILL at a random moment, again and again. After every kill, every call that returned
  before it is stored and right; the next process carries on with the same cache without any
  repair; at the end every stored record holds its own call's value, and a fresh interpreter
  reads everything and writes more.
* **Killed while holding the compute lock**, with other processes waiting on that lock, for each
  scope: the waiters proceed (the kernel drops a dead process's ``flock``), and the call is
  computed once more, not twice.
* **A full disk** (a real, small tmpfs): calls return their computed results, warn once, and
  what was stored stays readable; once space is freed, the next process stores again.
* **Damaged or foreign stores**: a garbage ``data.mdb`` is a clear error on every call, before
  anything is computed, with the file untouched and the other leaves working; a record written
  by a newer format is a miss with a warning, recomputed beside the old record, never another
  call's value; a ``lock.mdb`` deleted while a process has the store open must not let two
  writers in at once (marked as a known bug until the engine notices the new lock file).

Already proven elsewhere (README, Guarantees): a killed engine writer (tests/test_engine.py), a
truncated ``data.mdb``, a missing ``lock.mdb``, map growth by two processes at once, a record
whose class no longer exists (tests/test_modes.py).
"""

import multiprocessing
import os
import pickle
import random
import signal
import threading
import time
import warnings
from pathlib import Path

import pytest

import concurrency_workers
import load_workers
import persist_to_disk as ptd
from concurrency_workers import PROJECT_ENV, computations
from conftest import run_python
from engine_workers import digest_for, record_for, value_for
from helpers import counting
from load_workers import STREAM_LEAF_SIZE, store_until_killed, stream, stream_expected
from persist_to_disk.engine import POOL, CorruptStoreError, Store
from persist_to_disk.engine.records import encode_record
from test_concurrency import (  # noqa: F401  (worker_env is an autouse fixture)
    WAIT_LIMIT, lock_is_held_by_another_process, started, wait_for_marker, worker_env,
)
from test_engine import _put_raw, read_only_mount  # noqa: F401  (read_only_mount is a fixture)
from test_modes import persist_warnings

TESTS_FOLDER = Path(__file__).resolve().parent
KILL_ROUNDS = 100
DURABILITIES = ["standard", "fast", "full"]
NEWLINE = b"\n"


# =================================================================================================
# 1. A writer killed at random moments, many rounds
# =================================================================================================
def run_until_killed(first: int, durability: str, seed: int, after: int, delay: float) -> list:
    """Fork a child running ``store_until_killed``; once it has reported ``after`` returned
    calls, wait ``delay`` seconds more and SIGKILL it. Return every call it reported as returned
    (complete lines only). Kills so land anywhere: in a commit, in a computation holding its
    lock, while a new leaf's LMDB files are being created."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            store_until_killed(write_end, first, durability, seed)
        finally:
            os._exit(1)
    os.close(write_end)
    output, deadline = b"", time.monotonic() + WAIT_LIMIT
    try:
        while output.count(NEWLINE) < after:
            if time.monotonic() > deadline:
                pytest.fail(f"the writer stored {output.count(NEWLINE)} calls in {WAIT_LIMIT}s: "
                            "stuck on what an earlier kill left behind?")
            chunk = os.read(read_end, 4096)
            if not chunk:
                break  # the child died by itself: reported below
            output += chunk
        time.sleep(delay)
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        output += pipe.read()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"the writer stopped by itself (status {status}): exit 3 means a wrong value")
    return [int(line) for line in output.decode().split("\n")[:-1]]


def lost_or_wrong(calls) -> list:
    """The calls among ``calls`` that are not stored, or stored with a wrong value."""
    bad = []
    for x in sorted(set(calls)):
        try:
            value = stream(x // STREAM_LEAF_SIZE, x, cache_switch=ptd.READONLY)
        except ptd.CacheMissError:
            bad.append((x, "lost"))
            continue
        if value != stream_expected(x):
            bad.append((x, "wrong value"))
    return bad


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_loses_nothing_it_returned(ptd_env):
    rng = random.Random(2024)
    returned, first = [], 0
    for round_number in range(KILL_ROUNDS):
        durability = DURABILITIES[round_number % len(DURABILITIES)]
        got = run_until_killed(first, durability, seed=round_number,
                               after=rng.randrange(16), delay=rng.uniform(0, 0.004))
        returned += got
        # Checked in this process, which the next writer is then forked from: the stores this
        # process opened to check must not trouble it.
        assert lost_or_wrong(returned) == [], f"after round {round_number}"
        first = max(returned, default=-1) + 1

    distinct = set(returned)
    assert len(distinct) >= 4 * KILL_ROUNDS

    # Every stored record holds its own call's value: nothing corrupted, nothing mixed up.
    leaves = stream.__persisted__.stores()
    for store in leaves:
        leaf = int(Path(store.path).name)
        for _, _, record in store.scan():
            (name, x), = pickle.loads(record.key_blob)
            assert name == "x" and x // STREAM_LEAF_SIZE == leaf
            assert pickle.loads(record.value_blob) == stream_expected(x)
    assert sum(s.stats().entries for s in leaves) >= len(distinct)

    # A fresh interpreter (not a fork of this one) reads everything and stores more.
    check = run_python(f"""
        import os
        import persist_to_disk as ptd
        from concurrency_workers import use_test_project
        from load_workers import STREAM_LEAF_SIZE as SIZE, stream, stream_expected
        use_test_project()
        xs = {sorted(distinct)!r}
        bad = [x for x in xs
               if stream(x // SIZE, x, cache_switch=ptd.READONLY) != stream_expected(x)]
        after = max(xs) + 1
        stream(after // SIZE, after)
        print(bad, stream.is_cached(after // SIZE, after))
        """, ptd_env.project, ptd_env.home,
        extra_env={"PYTHONPATH": str(TESTS_FOLDER), PROJECT_ENV: str(ptd_env.project)})
    assert check.stdout.split("\n")[0] == "[] True"


# =================================================================================================
# 2. Killed while holding the compute lock, with others waiting
# =================================================================================================
PARKED_BY_SCOPE = {"call": "parked", "func": "parked_func", "global": "parked_global"}


@pytest.mark.parametrize("scope", ["call", "func", "global"])
def test_waiters_proceed_when_the_process_holding_the_compute_lock_is_killed(scope):
    name = PARKED_BY_SCOPE[scope]
    function = getattr(concurrency_workers if scope == "call" else load_workers, name)
    context = multiprocessing.get_context("fork")

    with started(context, [(function, (7,))]) as holder:
        wait_for_marker(f"{name}-7.parked")
        with started(context, [(function, (7,)), (function, (7,))]) as waiters:
            time.sleep(0.3)  # both ask for the call and wait on the holder's lock
            assert all(p.is_alive() for p in waiters.processes)
            assert waiters.results.empty(), "a waiter did not wait for the lock"
            assert lock_is_held_by_another_process(function, 7)
            os.kill(holder.processes[0].pid, signal.SIGKILL)
            first, second = waiters.wait()

    assert first == second, "one waiter computed, the other read its result"
    assert first["pid"] in {p.pid for p in waiters.processes}
    assert [c["pid"] for c in computations(name)] == [first["pid"]]
    assert function(7) == first


# =================================================================================================
# 3. A full disk
# =================================================================================================
FULL_DISK_SCRIPT = """
    import hashlib, sys, warnings
    import persist_to_disk as ptd

    @ptd.persistf()
    def big(x):
        return hashlib.sha256(str(x).encode()).digest() * (256 * 1024 // 32)

    first, last = int(sys.argv[1]), int(sys.argv[2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        right = all(big(x) == big.uncached(x) for x in range(first, last))
    stored = [x for x in range(last) if big.is_cached(x)]
    readable = all(big(x, cache_switch=ptd.READONLY) == big.uncached(x) for x in stored)
    messages = [str(w.message) for w in caught if issubclass(w.category, ptd.PersistWarning)]
    print(right, readable, stored)
    print(len(messages), messages[:1])
"""


@pytest.mark.slow
def test_a_full_disk_returns_results_warns_once_and_keeps_the_cache_readable(read_only_mount,
                                                                             ptd_env):
    """A 16 MiB tmpfs (left writable) is filled so that about 2 MiB remain: some 256 KiB
    results fit, then the disk is full."""
    home = read_only_mount / "home"
    filler = read_only_mount / "filler"
    filler.write_bytes(b"\0" * (14 * 1024 * 1024))

    full = run_python(FULL_DISK_SCRIPT, ptd_env.project, home, "0", "20").stdout.splitlines()
    right, readable, stored = full[0].split(" ", 2)
    stored = eval(stored)
    assert (right, readable) == ("True", "True")
    assert 0 < len(stored) < 20, "some results were stored, then the disk was full"
    count, first_message = full[1].split(" ", 1)
    assert count == "1", "one warning, however many results could not be stored"
    assert "Could not store" in first_message and "free disk space" in first_message

    filler.unlink()
    after = run_python(FULL_DISK_SCRIPT, ptd_env.project, home, "20", "24").stdout.splitlines()
    assert after[0] == f"True True {stored + [20, 21, 22, 23]}"
    assert after[1] == "0 []"


# =================================================================================================
# 4. Damaged or foreign stores, through the decorator
# =================================================================================================
def test_a_garbage_data_file_fails_every_call_before_computing_and_is_left_untouched(ptd_env):
    compute_calls = []

    @ptd.persistf(groupby=["leaf"])
    def compute(leaf, x):
        compute_calls.append((leaf, x))
        return (leaf, x)

    compute("good", 1), compute("bad", 1)
    POOL.close_all()
    data = Path(compute.__persisted__.locate(("bad", 1), {})[0].path) / "data.mdb"
    garbage = b"not an LMDB file, whatever it was\n" * 2000
    data.write_bytes(garbage)

    for _ in range(3):  # the same clear error every time: no crash, no repair loop
        with pytest.raises(CorruptStoreError, match="bad") as raised:
            compute("bad", 2)
        assert str(data.parent) in str(raised.value)
    assert compute_calls == [("good", 1), ("bad", 1)], "nothing computed into a broken store"
    assert data.read_bytes() == garbage, "never wiped"
    assert compute("good", 1) == ("good", 1) and compute("good", 2) == ("good", 2)
    assert compute_calls[-1] == ("good", 2)


def test_a_record_of_a_newer_format_is_a_miss_with_a_warning_and_is_kept(ptd_env):
    compute, calls = counting()
    assert compute(1) == (1, 1) and compute(2) == (2, 2)
    store, bucket, digest, _ = compute.__persisted__.locate((1,), {})
    newer = bytearray(encode_record(Store(store.path).latest(bucket, digest)))
    newer[0] = 4  # the record format byte of a future version
    _put_raw(store, bucket, digest, 1, bytes(newer))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert compute(1) == (1, 3), "recomputed, never read as something else"
    assert any("format" in str(w.message) for w in persist_warnings(caught))
    assert compute(1) == (1, 3) and compute(2) == (2, 2) and calls == [1, 2, 1]
    stats = Store(store.path).stats()
    assert (stats.versions, stats.entries) == (4, 2), "the newer record is kept, not wiped"


def test_a_lock_file_deleted_under_an_open_store_never_lets_two_writers_in_at_once(tmp_path):
    """LMDB serialises writers through a mutex in lock.mdb. If that file is deleted while one
    process has the store open, the next process makes a new one: two writer mutexes, two
    writers at once, and a corrupted store (seen: every later read aborts the process). Here
    the first process holds a write transaction; a write from another process must wait."""
    leaf = tmp_path / "leaf"
    Store(leaf).append(1, digest_for("before"), record_for("before"))
    POOL.close_all()
    context = multiprocessing.get_context("fork")
    opened, go, holding, release = (context.Event() for _ in range(4))
    holder = context.Process(target=load_workers.hold_a_write_transaction,
                             args=(str(leaf), opened, go, holding, release), daemon=True)
    holder.start()
    try:
        assert opened.wait(WAIT_LIMIT)
        (leaf / "lock.mdb").unlink()
        Store(leaf).append(2, digest_for("new lock file"), record_for("new lock file"))
        go.set()
        assert holding.wait(WAIT_LIMIT), "the holder never began its write transaction"

        writer = threading.Thread(target=Store(leaf).append, daemon=True,
                                  args=(3, digest_for("waits"), record_for("waits")))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive(), "a second writer committed during another's transaction"
    finally:
        release.set()
        holder.join(WAIT_LIMIT)
    writer.join(WAIT_LIMIT)
    assert holder.exitcode == 0
    for bucket, name in [(0, "holder"), (1, "before"), (2, "new lock file"), (3, "waits")]:
        assert Store(leaf).latest(bucket, digest_for(name)).value_blob == value_for(name)
