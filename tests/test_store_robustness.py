"""Storage robustness of the LMDB engine: map growth, lost or damaged files, descriptor limits.

What these tests pin down (issues 9 and 10):

1. **A map grown by another process never breaks a process that has the store open**: every
   transaction adopts the grown map (``MapResizedError`` -> ``set_mapsize(0)``), at every place
   the engine begins one (reading, checking staleness, opening, writing, compacting), and no
   handle lock is ever left held by an exception (the next call would hang for good).
2. **Compaction completes while other processes grow the map**, and loses nothing they write.
3. **A store knows it existed**: an emptied or deleted ``data.mdb`` is reported, never
   initialised afresh; a deleted ``CURRENT`` does not hide the store, and compaction never
   deletes a generation it has not proven superseded or unused. Two processes creating one new
   store at once both work.
4. **Descriptor limits**: the pool sizes itself from ``RLIMIT_NOFILE``, and running out of
   descriptors while opening a store closes idle ones instead of failing.
5. **A garbage seal or ``CURRENT``** is a ``CorruptStoreError`` naming the folder, and ``ptd
   verify`` reports it with exit status 1, without a traceback.

The map starts at 1 MiB here (``EngineSettings.initial_map_size``, installed in this process by
a fixture and in subprocesses by their code), so that a few MiB written by one process
grow it past what another has mapped. Every subprocess and thread wait has a time limit.
"""

import errno
import multiprocessing
import os
import queue
import subprocess
import sys
import textwrap
import threading
import traceback
from pathlib import Path

import pytest

import persist_to_disk as ptd
from conftest import write_module
from engine_workers import digest_for, record_for, value_for
from helpers import fill_up
from persist_to_disk.cli import main
from persist_to_disk.engine import (POOL, CorruptStoreError, EngineError, EnvironmentPool, Store,
                                    compact, settings)
from persist_to_disk.engine import pool as pool_module
from persist_to_disk.settings import INITIAL_MAP_SIZE_VARIABLE
from persist_to_disk.engine.generations import SEAL_KEY

MiB = 1 << 20
TESTS_FOLDER = Path(__file__).resolve().parent
WAIT = 60  # seconds any single step may take before the test calls it a hang
# Growth by others becomes frequent. The variable is what the API layer puts in the engine
# settings it installs (decorated functions); the install is for stores opened directly.
SMALL_MAP = f"import os\n" \
            f"os.environ['PERSIST_TO_DISK_INITIAL_MAP_SIZE'] = '{MiB}'\n" \
            f"from persist_to_disk.engine import environments, settings\n" \
            f"settings.install(settings.current().replace(initial_map_size={MiB}))\n"


@pytest.fixture
def engine_settings():
    """The engine settings installed before the test, installed again after it."""
    before = settings.current()
    yield before
    settings.install(before)


@pytest.fixture
def small_map(engine_settings):
    """This process opens stores with a 1 MiB map."""
    settings.install(engine_settings.replace(initial_map_size=MiB))


def python_path_with_tests() -> str:
    """``PYTHONPATH`` for subprocesses that import ``engine_workers``."""
    return os.pathsep.join([str(TESTS_FOLDER)] + [p for p in [os.environ.get("PYTHONPATH")] if p])


def child_environment(ptd_env) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_TO_DISK_")}
    environment["PERSIST_TO_DISK_HOME"] = str(ptd_env.home)
    environment["PYTHONPATH"] = python_path_with_tests()
    return environment


class Child:
    """A Python subprocess driven line by line (stdin/stdout); every wait has a limit."""

    def __init__(self, code: str, ptd_env, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SMALL_MAP + textwrap.dedent(code), *args],
            cwd=str(ptd_env.project), env=child_environment(ptd_env), text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: "queue.Queue" = queue.Queue()
        self.errors: list = []
        threading.Thread(target=self._pump, args=(self.process.stdout, self.lines.put),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.process.stderr, self.errors.append),
                         daemon=True).start()

    @staticmethod
    def _pump(stream, put) -> None:
        for line in stream:
            put(line.rstrip("\n"))
        put(None)

    def stderr(self) -> str:
        return "\n".join(line for line in self.errors if line is not None)[-3000:]

    def line(self, timeout: float = WAIT) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            pytest.fail(f"the subprocess printed nothing for {timeout}s: it hangs\n"
                        f"{self.stderr()}")
        if line is None:
            code = self.process.wait(WAIT)
            pytest.fail(f"the subprocess exited early (status {code}):\n{self.stderr()}")
        return line

    def send(self, text: str = "go") -> None:
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = WAIT) -> list:
        """The lines it prints until it exits; a hang fails the test."""
        rest = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                self.kill()
                pytest.fail(f"the subprocess did not finish within {timeout}s: it hangs; it "
                            f"printed {rest}\n{self.stderr()}")
            if line is None:
                break
            rest.append(line)
        assert self.process.wait(WAIT) == 0, f"{rest}\n{self.stderr()}"
        return rest

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)


@pytest.fixture
def children():
    """Start :class:`Child` processes; whatever still runs at the end is killed."""
    started = []

    def start(code: str, ptd_env, *args: str) -> Child:
        child = Child(code, ptd_env, *args)
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()


def grow(store: Store, megabytes: int, tag: str = "growth") -> list:
    """Append ``megabytes`` MiB of 128 KiB values from this process; return their names."""
    names = [(tag, i) for i in range(megabytes * 8)]
    for name in names:
        store.append(1, digest_for(name), record_for(name, 128 * 1024))
    return names


def assert_values(store: Store, names, size: int = 64, bucket: int = 1) -> None:
    for name in names:
        record = store.latest(bucket, digest_for(name))
        assert record is not None and record.value_blob == value_for(name, size), name


# =================================================================================================
# 1. A map grown by another process
# =================================================================================================
def test_a_reader_whose_map_another_process_grew_keeps_hitting_and_never_hangs(
        tmp_path, ptd_env, small_map, children):
    """The staleness check (``is_current``) began a transaction while holding the handle's
    lock and let ``MapResizedError`` out: the call raised and the lock stayed held, so the
    next call of the process blocked forever (issue 9, item 2)."""
    leaf = tmp_path / "leaf"
    store = Store(leaf, "fast")
    store.append(0, digest_for("before"), record_for("before"))
    reader = children("""
        import sys
        from persist_to_disk.engine import Store
        from engine_workers import digest_for, value_for
        # the staleness check runs before every read
        settings.install(settings.current().replace(handle_recheck_seconds=0.0))
        store = Store(sys.argv[1], "fast")
        print("ready", store.latest(0, digest_for("before")).value_blob == value_for("before"),
              flush=True)
        sys.stdin.readline()
        for attempt in range(3):
            try:
                record = store.latest(0, digest_for("before"))
                print("hit", record.value_blob == value_for("before"), flush=True)
            except Exception as err:
                print("error", type(err).__name__, err, flush=True)
        print("miss", store.latest(1, digest_for("absent")) is None, flush=True)
        """, ptd_env, str(leaf))
    assert reader.line() == "ready True"

    grow(store, 4)  # 4 MiB: far past the reader's 1 MiB map
    reader.send()

    assert reader.finish() == ["hit True"] * 3 + ["miss True"]


def test_a_process_hitting_a_result_while_another_stores_large_results_never_fails_or_hangs(
        ptd_env, children, python_runner):
    """The issue's scenario, through the decorator: process A hits ``f(0)`` every 1.1 s (so
    each call starts with the periodic staleness check) while process B stores four results
    larger than the whole initial map."""
    write_module(ptd_env.project, "growth_demo.py", """
        import persist_to_disk as ptd
        computed = []

        @ptd.persistf()
        def f(x, size=0):
            computed.append(x)
            return b"r" * size if size else x
        """)
    done = ptd_env.tmp / "B is done"
    hitter = children("""
        import os, sys, time
        from growth_demo import f, computed
        assert f(0) == 0
        print("ready", flush=True)
        hits = errors = after = 0
        for call in range(30):
            time.sleep(1.1)  # past RECHECK_SECONDS: the call checks its handle first
            after += os.path.exists(sys.argv[1])
            try:
                hits += f(0) == 0
            except Exception as err:
                errors += 1
                print("error", type(err).__name__, err, flush=True)
            if after == 2:  # two calls once B is done
                break
        print("done", hits, errors, len(computed), flush=True)
        """, ptd_env, str(done))
    assert hitter.line() == "ready"

    python_runner(SMALL_MAP + textwrap.dedent("""
        from growth_demo import f
        for x in range(1, 5):
            assert len(f(x, size=3 * 2 ** 20)) == 3 * 2 ** 20
        """), timeout=WAIT)
    done.touch()

    lines = hitter.finish()
    assert lines[-1].split()[2:] == ["0", "1"], lines  # no error, computed once
    assert int(lines[-1].split()[1]) >= 2


def test_a_store_opened_just_as_another_process_grows_its_map_still_reads_and_stores(
        tmp_path, ptd_env, small_map, children):
    """``open_generation`` began a transaction right after ``lmdb.open``: a map grown in
    between raised ``MapResizedError``, so the read raised and the write's result was lost,
    reported as a disk-space problem (issue 10, item 1). The subprocess pauses right after
    each open (a hook around the real open) while this process grows the map."""
    leaf = tmp_path / "leaf"
    store = Store(leaf, "fast")
    store.append(0, digest_for("before"), record_for("before"))
    opener = children("""
        import sys
        from persist_to_disk.engine import POOL, Store
        from engine_workers import digest_for, record_for, value_for
        real_open = environments.open_environment

        def open_then_pause(*args, **kwargs):
            env = real_open(*args, **kwargs)
            print("opened", flush=True)
            sys.stdin.readline()  # the test grows the map now
            return env

        environments.open_environment = open_then_pause
        store = Store(sys.argv[1], "fast")
        try:
            record = store.latest(0, digest_for("before"))
            print("read", record.value_blob == value_for("before"), flush=True)
        except Exception as err:
            print("read failed:", type(err).__name__, err, flush=True)
        POOL.close_all()
        try:
            store.append(0, digest_for("written"), record_for("written"))
            print("stored", flush=True)
        except Exception as err:
            print("store failed:", type(err).__name__, err, flush=True)
        """, ptd_env, str(leaf))

    assert opener.line() == "opened"
    grow(store, 4, "first")
    opener.send()
    assert opener.line() == "read True"
    assert opener.line() == "opened"
    grow(store, 8, "second")  # past what the reopened store mapped (the data then)
    opener.send()
    assert opener.finish() == ["stored"]

    assert store.latest(0, digest_for("written")).value_blob == value_for("written")


def within(seconds: float, call):
    """``("returned", value)``, ``("raised", exception)`` or ``("hung", None)`` for ``call()``
    run in a daemon thread given ``seconds``."""
    outcome = []

    def run():
        try:
            outcome.append(("returned", call()))
        except BaseException as err:
            outcome.append(("raised", err))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome[0] if outcome else ("hung", None)


def test_a_staleness_check_that_raises_releases_the_handle_lock(tmp_path, monkeypatch,
                                                               engine_settings):
    """Fault injection: whatever the check of a handle raises, the handle's lock is released on
    the way out, so the next call of the process proceeds instead of blocking for good. (A
    pool of its own: a lock left held would block closing the shared one at teardown.)"""
    pool = EnvironmentPool()
    store = Store(tmp_path / "leaf", "fast", pool=pool)
    store.append(0, digest_for("call"), record_for("call"))
    settings.install(engine_settings.replace(handle_recheck_seconds=0.0))
    real_check = pool_module._Handle.is_current

    def failing_check(self, generation_too=True):
        raise OSError(errno.EIO, "injected: the check failed")

    monkeypatch.setattr(pool_module._Handle, "is_current", failing_check)
    for call in (lambda: store.latest(0, digest_for("call")),
                 lambda: store.append(0, digest_for("other"), record_for("other"))):
        kind, error = within(10, call)
        assert kind == "raised" and "injected" in str(error), (
            "the handle's lock was left held by the previous call: this one hangs"
            if kind == "hung" else (kind, error))
    monkeypatch.setattr(pool_module._Handle, "is_current", real_check)

    kind, record = within(10, lambda: store.latest(0, digest_for("call")))
    assert kind == "returned", "the handle's lock was left held: the next call hangs"
    assert record.value_blob == value_for("call")
    pool.close_all()


def test_the_initial_map_size_follows_an_environment_variable_read_at_each_open(
        tmp_path, monkeypatch, engine_settings):
    # The API layer reads the variable into the engine's settings (the engine reads none).
    monkeypatch.setenv(INITIAL_MAP_SIZE_VARIABLE, str(2 * MiB))
    store = ptd.config.storage().open_store(str(tmp_path / "leaf"), "fast")
    store.append(0, digest_for("call"), record_for("call"))
    assert POOL._handles[store.path].env.info()["map_size"] == 2 * MiB

    POOL.close_all()
    monkeypatch.setenv(INITIAL_MAP_SIZE_VARIABLE, "a lot")
    with pytest.raises(ptd.PersistError, match=INITIAL_MAP_SIZE_VARIABLE):
        ptd.config.storage().open_store(str(tmp_path / "leaf"), "fast").latest(
            0, digest_for("call"))


# =================================================================================================
# 2. Compaction while other processes grow the map
# =================================================================================================
def test_compaction_completes_when_another_process_grows_the_map_during_the_copy(
        tmp_path, ptd_env, small_map, children):
    """The compactor holds a snapshot while it copies; a map grown meanwhile was adopted with
    ``set_mapsize(0)``, which invalidated that snapshot, and every such compaction failed,
    blaming free disk space (issue 10, item 3). The compactor pauses in its progress callback
    (during the copy) while this process writes 5 MiB more."""
    leaf = tmp_path / "leaf"
    store = Store(leaf, "fast")
    names = [("kept", i) for i in range(50)]
    for name in names:
        store.append(1, digest_for(name), record_for(("old", name)))
        store.append(1, digest_for(name), record_for(name))
    compactor = children("""
        import sys
        from persist_to_disk.engine import compact

        def pause_once(examined):
            if not pause_once.done:
                pause_once.done = True
                print("copying", flush=True)
                sys.stdin.readline()

        pause_once.done = False
        try:
            report = compact(sys.argv[1], progress=pause_once)
            print("compacted", report.generation_after, report.carried_over, report.kept,
                  report.superseded, flush=True)
        except Exception as err:
            print("failed:", type(err).__name__, err, flush=True)
        """, ptd_env, str(leaf))
    assert compactor.line() == "copying"

    written = grow(store, 5, "during")
    compactor.send()

    assert compactor.finish() == [f"compacted 1 {len(written)} 50 50"]
    POOL.close_all()
    fresh = Store(leaf, "fast")
    assert_values(fresh, names)
    assert_values(fresh, written, 128 * 1024)
    assert fresh.stats().versions == len(names) + len(written)
    assert (leaf / "CURRENT").read_text().strip() == "1" and not (leaf / "data.mdb").exists()


def test_compacting_in_a_loop_while_another_process_keeps_growing_the_map_never_fails(
        tmp_path, ptd_env, small_map, children):
    """A writer recomputes 40 calls with 32 KiB values without pause while this process
    compacts the store again and again: each new generation starts small, so the writer keeps
    growing the map under the compactor. No compaction may fail, and the newest value of
    every call survives."""
    leaf = tmp_path / "leaf"
    stop = tmp_path / "stop"
    writer = children("""
        import json, os, sys
        from persist_to_disk.engine import Store
        from engine_workers import digest_for, record_for
        store = Store(sys.argv[1], "fast")
        versions = {}
        round = 0
        while round < 2 or not os.path.exists(sys.argv[2]):
            for i in range(40):
                store.append(i % 4, digest_for(i), record_for((i, round), 32 * 1024))
                versions[i] = round
            if round == 1:
                print("writing", flush=True)
            round += 1
        print(json.dumps(versions), flush=True)
        """, ptd_env, str(leaf), str(stop))
    assert writer.line() == "writing"

    failures, reports = [], []
    for attempt in range(25):
        try:
            reports.append(compact(leaf, durability="fast"))
        except EngineError as err:
            failures.append(f"{type(err).__name__}: {err}")
    stop.touch()
    (versions,) = writer.finish()

    assert failures == []
    assert len({report.generation_after for report in reports}) == 25
    import json
    POOL.close_all()
    store = Store(leaf, "fast")
    for i, round in json.loads(versions).items():
        i = int(i)
        assert store.latest(i % 4, digest_for(i)).value_blob == value_for((i, round), 32 * 1024)


# =================================================================================================
# 3. A store knows it existed
# =================================================================================================
def filled_store(leaf: Path, count: int = 20) -> list:
    store = Store(leaf, "fast")
    names = [("call", i) for i in range(count)]
    for name in names:
        store.append(1, digest_for(name), record_for(name))
    POOL.close_all()
    return names


def test_an_emptied_data_file_is_reported_on_every_call_and_never_initialised_afresh(
        tmp_path, capsys):
    """A ``data.mdb`` truncated to 0 bytes was silently re-initialised: every result gone and
    ``ptd verify`` clean (issue 10, item 2)."""
    leaf = tmp_path / "leaf"
    filled_store(leaf)
    os.truncate(leaf / "data.mdb", 0)

    store = Store(leaf)
    for call in (lambda: store.latest(1, digest_for(("call", 0))),
                 lambda: store.append(1, digest_for("new"), record_for("new")),
                 store.stats):
        with pytest.raises(CorruptStoreError, match="is empty") as raised:
            call()
        assert str(leaf / "data.mdb") in str(raised.value)
    assert (leaf / "data.mdb").stat().st_size == 0

    assert main(["verify", str(leaf)]) == 1
    out, err = capsys.readouterr()
    assert f"DAMAGED  {leaf}" in out and "Traceback" not in out + err
    assert (leaf / "data.mdb").stat().st_size == 0


def test_a_data_file_deleted_beside_its_lock_file_is_reported_and_not_created_again(tmp_path):
    leaf = tmp_path / "leaf"
    filled_store(leaf)
    (leaf / "data.mdb").unlink()

    store = Store(leaf)
    with pytest.raises(CorruptStoreError, match="data.mdb is missing") as raised:
        store.latest(1, digest_for(("call", 0)))
    assert str(leaf) in str(raised.value) and "lock.mdb" in str(raised.value)
    with pytest.raises(CorruptStoreError):
        store.append(1, digest_for("new"), record_for("new"))
    assert not (leaf / "data.mdb").exists()


def test_a_store_whose_CURRENT_was_deleted_after_a_compaction_keeps_its_results_and_compacts(
        tmp_path, capsys):
    """Without ``CURRENT`` a compacted store looked empty, and the next ``ptd compact``
    deleted ``gen-1``, which held the data (issue 10, item 2)."""
    leaf = tmp_path / "leaf"
    names = filled_store(leaf)
    assert compact(leaf).generation_after == 1
    POOL.close_all()
    (leaf / "CURRENT").unlink()

    store = Store(leaf)
    assert store.exists()
    assert_values(store, names)
    store.append(1, digest_for("after"), record_for("after"))  # lands in gen-1, in use
    POOL.close_all()

    assert main(["compact", str(leaf)]) == 0
    capsys.readouterr()
    assert (leaf / "CURRENT").read_text().strip() == "2"
    POOL.close_all()
    assert_values(Store(leaf), names + ["after"])
    assert Store(leaf).stats().entries == len(names) + 1


def test_without_CURRENT_a_rebuild_never_switched_to_is_not_mistaken_for_the_store(
        tmp_path, ptd_env, children):
    """A compactor killed after its copy and before its seal leaves a complete ``gen-1`` that
    was never used; with no ``CURRENT`` (none is written before the first switch) the store
    is still generation 0, and the next compaction deletes that rebuild."""
    leaf = tmp_path / "leaf"
    names = filled_store(leaf)
    dying = children("""
        import os, sys
        from persist_to_disk.engine import compact, compaction

        def die(*args, **kwargs):
            print("copied", flush=True)
            os._exit(0)

        compaction._seal = die
        compact(sys.argv[1])
        """, ptd_env, str(leaf))
    assert dying.finish() == ["copied"]
    assert (leaf / "gen-1" / "data.mdb").is_file() and not (leaf / "CURRENT").exists()

    store = Store(leaf)
    store.append(1, digest_for("after"), record_for("after"))
    assert_values(store, names + ["after"])
    assert POOL._handles[store.path].generation == 0

    assert compact(leaf).generation_after == 2
    assert not (leaf / "gen-1").exists()
    POOL.close_all()
    assert_values(Store(leaf), names + ["after"])


def test_compaction_never_deletes_a_generation_it_has_not_proven_superseded(tmp_path):
    """A ``data.mdb`` restored from a backup beside a compacted store holds records and no
    seal: nothing proves it superseded, so compaction leaves it alone (it deleted every
    generation but the one in use)."""
    leaf = tmp_path / "leaf"
    names = filled_store(leaf)
    backup = (leaf / "data.mdb").read_bytes()
    compact(leaf)
    POOL.close_all()
    (leaf / "data.mdb").write_bytes(backup)
    (leaf / "data.mdb").chmod(0o600)

    compact(leaf)

    assert (leaf / "data.mdb").read_bytes() == backup
    POOL.close_all()
    assert_values(Store(leaf), names)
    assert (leaf / "CURRENT").read_text().strip() == "2"


def _create_one_store(leaf: str, worker: int, barrier) -> None:
    try:
        barrier.wait(WAIT)
        Store(leaf, "fast").append(1, digest_for(worker), record_for(worker))
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def test_processes_creating_one_new_store_at_the_same_moment_all_store_their_results(tmp_path):
    """A new store's ``data.mdb`` appears with its meta pages already written, so an empty one
    is damage; creators racing must still all succeed, each using the one file that won."""
    context = multiprocessing.get_context("fork")
    for attempt in range(12):
        leaf = tmp_path / f"new-{attempt}" / "leaf"
        barrier = context.Barrier(4)
        workers = [context.Process(target=_create_one_store, args=(str(leaf), worker, barrier))
                   for worker in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT)
        assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
        store = Store(leaf, "fast")
        assert_values(store, range(4))
        assert sorted(p.name for p in leaf.iterdir()) == ["data.mdb", "lock.mdb"]


def test_a_store_whose_creation_ran_out_of_disk_is_created_once_space_is_freed(small_disk):
    filler = small_disk / "filler"
    fill_up(filler)
    leaf = small_disk / "leaf"
    with pytest.raises(OSError) as raised:
        Store(leaf, "fast").append(0, digest_for("call"), record_for("call"))
    assert raised.value.errno == errno.ENOSPC
    filler.unlink()

    Store(leaf, "fast").append(0, digest_for("call"), record_for("call"))
    assert Store(leaf, "fast").latest(0, digest_for("call")).value_blob == value_for("call")


# =================================================================================================
# 4. Descriptor limits
# =================================================================================================
@pytest.mark.parametrize("limit", [64, 128])
def test_300_groupby_leaves_store_and_hit_under_a_descriptor_limit(limit, python_runner):
    """With 3 descriptors per open environment and a pool of 64 whatever the limit, ``ulimit
    -n 128`` left most leaves uncached and ``ulimit -n 64`` made most hits raise ``Too many
    open files`` (issue 10, item 4)."""
    result = python_runner(f"""
        import resource, warnings
        resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))
        import persist_to_disk as ptd

        computed = []

        @ptd.persistf(groupby=["leaf"])
        def value(leaf, x):
            computed.append(leaf)
            return (leaf, x)

        errors = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for round in range(2):
                for leaf in range(300):
                    try:
                        assert value(leaf, 1) == (leaf, 1)
                    except Exception as err:
                        errors.append(f"{{type(err).__name__}}: {{err}}")
        print(len(computed), len(errors), len(caught))
        print(errors[:2], [str(w.message) for w in caught][:2])
        """, timeout=300)
    counts, details = result.stdout.splitlines()
    assert counts == "300 0 0", details


def test_running_out_of_descriptors_while_opening_closes_idle_stores_instead_of_failing(
        tmp_path, python_runner):
    """A pool allowed far more environments than the descriptors left (64 here): the open
    that hits EMFILE closes idle environments and tries again."""
    result = python_runner(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        from persist_to_disk.engine import EnvironmentPool, Store
        from engine_workers import digest_for, record_for, value_for
        pool = EnvironmentPool(max_open=1000)
        stores = [Store({str(tmp_path)!r} + f"/leaf{{n}}", "fast", pool=pool) for n in range(100)]
        for n, store in enumerate(stores):
            store.append(0, digest_for(n), record_for(n))
        wrong = [n for n, store in enumerate(stores)
                 if store.latest(0, digest_for(n)).value_blob != value_for(n)]
        print(wrong, len(pool.open_paths()) < 100)
        """, extra_env={"PYTHONPATH": python_path_with_tests()}, timeout=WAIT)
    assert result.stdout.strip() == "[] True"


@pytest.mark.parametrize("limit", [24, 32])
def test_under_a_very_low_descriptor_limit_every_call_works_and_half_the_limit_stays_free(
        limit, python_runner):
    """At ``ulimit -n 24`` 294 of 600 calls raised ``Too many open files`` from listing a new
    leaf, and at 32 the library kept 29 descriptors: the pool (half the limit) and lock files
    (at least 8) took more than everything. Together they now keep at most half."""
    result = python_runner(f"""
        import os, resource, warnings
        resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))
        import persist_to_disk as ptd

        def open_descriptors():
            return len(os.listdir("/proc/self/fd"))

        @ptd.persistf(groupby=["leaf"])
        def value(leaf, x):
            return (leaf, x, "computed")

        before = open_descriptors()
        errors, most = [], 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for round in range(2):
                for leaf in range(300):
                    try:
                        assert value(leaf, 1) == (leaf, 1, "computed")
                    except Exception as err:
                        errors.append(f"{{type(err).__name__}}: {{err}}")
                    most = max(most, open_descriptors() - before)
        cached = sum(value(leaf, 1, cache_switch=ptd.CHECKONLY) for leaf in range(300))
        print(len(errors), cached, len(caught), most <= {limit} // 2)
        print(errors[:2], [str(w.message) for w in caught][:2], most)
        """, timeout=300)
    counts, details = result.stdout.splitlines()
    assert counts == "0 300 0 True", details


def test_listing_a_new_leaf_with_every_descriptor_taken_closes_idle_stores_instead_of_failing(
        python_runner):
    """The user's files take every descriptor the idle environments left: finding whether a
    new leaf holds a store (a folder listing, which needs a descriptor) closes idle
    environments and lists again, as opening a store does, instead of raising ``Too many
    open files`` (issue 10, item 4)."""
    result = python_runner("""
        import os, resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        import persist_to_disk as ptd

        @ptd.persistf(groupby=["leaf"])
        def value(leaf, x):
            return (leaf, x)

        for leaf in range(8):  # the pool's budget at this limit: every descriptor it may use
            value(leaf, 1)
        taken = []
        try:
            while True:
                taken.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        errors = []
        for leaf in list(range(8, 20)) + list(range(8)):  # new leaves, then hits
            try:
                assert value(leaf, 1) == (leaf, 1)
            except Exception as err:
                errors.append(f"{type(err).__name__}: {err}")
        print(len(taken) > 0, len(errors), errors[:2])
        """, timeout=WAIT)
    assert result.stdout.strip() == "True 0 []"


def test_environments_and_lock_files_together_keep_at_most_half_the_descriptor_limit():
    """Budgets are read from the limit: three eighths for environments (3 descriptors each),
    an eighth for lock files, with minimums small enough to keep half free from 16 up."""
    import resource
    from persist_to_disk.engine import locks
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for limit in (16, 24, 32, 64, 128, 1024):
            if limit <= hard:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
                kept = (pool_module.DESCRIPTORS_PER_ENVIRONMENT
                        * pool_module.environment_budget()
                        + locks._descriptor_budget())
                assert kept <= limit // 2, limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_pool_budget_follows_the_descriptor_limit():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for limit, budget in ((64, 8), (128, 16), (4096, pool_module.DEFAULT_MAX_OPEN)):
            if limit <= hard:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
                assert EnvironmentPool().max_open == budget
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert EnvironmentPool(max_open=5).max_open == 5


# =================================================================================================
# 5. A garbage seal or CURRENT
# =================================================================================================
@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00 not text", b"next", b"-3", b"0"])
def test_a_garbage_seal_is_a_corrupt_store_error_naming_the_folder_on_every_call(
        tmp_path, garbage):
    """A seal record that is not a generation number raised ``ValueError`` or
    ``UnicodeDecodeError`` on every call (issue 10, item 7)."""
    leaf = tmp_path / "leaf"
    filled_store(leaf)
    store = Store(leaf)
    POOL.write(store.path, store.durability, lambda txn: txn.put(SEAL_KEY, garbage))
    POOL.close_all()

    for call in (lambda: store.latest(1, digest_for("absent")),
                 lambda: store.append(1, digest_for("new"), record_for("new"))):
        with pytest.raises(CorruptStoreError, match="seal") as raised:
            call()
        assert str(leaf) in str(raised.value) and "move the folder aside" in str(raised.value)
    assert isinstance(raised.value, ptd.PersistError)


def test_ptd_verify_reports_a_garbage_seal_with_exit_status_1_and_no_traceback(
        tmp_path, capsys):
    leaf = tmp_path / "leaf"
    filled_store(leaf)
    store = Store(leaf)
    POOL.write(store.path, store.durability, lambda txn: txn.put(SEAL_KEY, b"\x80garbage"))
    POOL.close_all()

    code = main(["verify", str(leaf)])

    out, err = capsys.readouterr()
    assert code == 1
    assert f"DAMAGED  {leaf}" in out and "seal" in out
    assert "Traceback" not in out + err


@pytest.mark.parametrize("garbage", ["bytes", "folder"])
def test_a_garbage_CURRENT_is_a_corrupt_store_error_and_ptd_verify_exits_1(
        tmp_path, capsys, garbage):
    leaf = tmp_path / "leaf"
    filled_store(leaf)
    compact(leaf)
    POOL.close_all()
    current = leaf / "CURRENT"
    current.unlink()
    if garbage == "bytes":
        current.write_bytes(b"\xff\xfe one")
    else:
        current.mkdir()

    with pytest.raises(CorruptStoreError, match="CURRENT") as raised:
        Store(leaf).latest(1, digest_for(("call", 0)))
    assert str(current) in str(raised.value) and "Remove it" in str(raised.value)

    code = main(["verify", str(leaf)])
    out, err = capsys.readouterr()
    assert code == 1 and f"DAMAGED  {leaf}" in out and "Traceback" not in out + err


def test_a_store_another_process_creates_between_two_looks_is_opened_not_called_lost(
        tmp_path, monkeypatch):
    """Creating a store makes ``data.mdb``, then LMDB's lock file. A process that looked for
    the data file just before another process created the store, and for the lock file just
    after, must open that store, not report that it lost its data file: that report made the
    process's first write fail, so one call of many processes creating a cache at once was
    stored by nobody and computed twice."""
    from persist_to_disk.engine import Store, generations

    leaf = tmp_path / "leaf"
    create_elsewhere = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from engine_workers import digest_for, record_for
        from persist_to_disk.engine import Store
        Store({str(leaf)!r}).append(0, digest_for("theirs"), record_for("theirs"))
    """)
    real_traces = generations.store_traces
    created = []

    def traces_after_another_process_created_the_store(path):
        if not created:  # between this process's two looks, another creates the store
            created.append(subprocess.run([sys.executable, "-c", create_elsewhere],
                                          capture_output=True, text=True, timeout=120))
        return real_traces(path)

    monkeypatch.setattr(generations, "store_traces",
                        traces_after_another_process_created_the_store)
    store = Store(leaf)
    store.append(0, digest_for("ours"), record_for("ours"))

    assert created and created[0].returncode == 0, created and created[0].stderr
    assert store.latest(0, digest_for("ours")).value_blob == record_for("ours").value_blob
    assert store.latest(0, digest_for("theirs")).value_blob == record_for("theirs").value_blob
