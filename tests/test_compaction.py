"""Compaction: what it drops, what it keeps, and that nobody using the store notices.

Compaction rebuilds a store into a new generation and switches every process over through a
seal written inside LMDB (engine/generations.py, engine/compaction.py). These tests show the
file really shrinks, nothing live is lost, and processes that have the old generation open go
on reading and writing correctly, also when the compactor is killed at any point.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import persist_to_disk as ptd
from persist_to_disk.engine import (POOL, CompactionFailedError, CompactionPolicy, NoStoreError,
                                    Record, RecordKind, Store, compact, find_stores)
from persist_to_disk.engine import generations

TESTS = Path(__file__).parent


def digest_for(i) -> bytes:
    return str(i).encode().rjust(16, b"0")[-16:]


def record_for(i, version=0, created=None, size=200) -> Record:
    value = f"{i}:{version}:".encode().ljust(size, b"v")
    return Record(RecordKind.VALUE, time.time() if created is None else created, 0.5,
                  "pickle:5", "3.11.7", f"key{i:>6}".encode(), value)


def fill(store: Store, count: int, recompute_every: int = 0, size: int = 200) -> None:
    for i in range(count):
        store.append(i % 50, digest_for(i), record_for(i, size=size), meta={"function": "f"})
    if recompute_every:
        for i in range(0, count, recompute_every):
            store.append(i % 50, digest_for(i), record_for(i, 1, size=size))


def value_of(store: Store, i):
    found = store.latest(i % 50, digest_for(i))
    return None if found is None else found.value_blob


# --- what compaction drops and keeps ------------------------------------------------------
def test_compaction_drops_superseded_versions_and_deleted_calls_and_shrinks_the_file(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    fill(store, 4000, recompute_every=2)  # half the calls recomputed: 6000 records
    for i in range(1, 200, 2):
        store.delete(i % 50, digest_for(i))
    before = store.stats()

    report = store.compact()

    after = store.stats()
    assert (report.kept, report.superseded, report.tombstones) == (3900, 2000, 100)
    assert (after.entries, after.versions, after.tombstones) == (3900, 3900, 0)
    assert after.live_bytes == before.live_bytes
    assert report.bytes_before == before.file_bytes
    assert report.bytes_after == after.file_bytes < before.file_bytes / 1.5
    for i in range(4000):
        expected = None if (i % 2 and i < 200) else record_for(i, 0 if i % 2 else 1).value_blob
        assert value_of(store, i) == expected


def test_after_compaction_a_recompute_still_appends_a_newer_version(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    fill(store, 10, recompute_every=1)
    store.compact()
    assert store.latest(3, digest_for(3)).sequence == 1  # the newest version kept its number
    store.append(3, digest_for(3), record_for(3, 2))
    assert store.latest(3, digest_for(3)).sequence == 2
    assert value_of(store, 3) == record_for(3, 2).value_blob


def test_older_than_drops_calls_last_written_before_the_cutoff(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    day = 86400
    for i in range(10):
        store.append(i % 50, digest_for(i), record_for(i, created=time.time() - 3 * day))
    for i in range(10, 15):
        store.append(i % 50, digest_for(i), record_for(i))

    report = store.compact(CompactionPolicy(older_than=2 * day))

    assert (report.kept, report.expired) == (5, 10)
    assert [i for i in range(15) if value_of(store, i) is not None] == list(range(10, 15))


def test_max_size_keeps_the_newest_calls_that_fit(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    now = time.time()
    for i in range(100):
        store.append(i % 50, digest_for(i), record_for(i, created=now - 100 + i, size=1000))
    record_bytes = Store(tmp_path / "leaf").stats().live_bytes // 100

    report = store.compact(CompactionPolicy(max_size=30 * record_bytes + 10))

    assert (report.kept, report.evicted) == (30, 70)
    assert report.kept_bytes <= 30 * record_bytes + 10
    assert [i for i in range(100) if value_of(store, i) is not None] == list(range(70, 100))


def test_a_dry_run_reports_what_would_go_and_changes_nothing(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    fill(store, 1000, recompute_every=2)
    files_before = sorted(os.listdir(store.path))
    stats_before = store.stats()

    report = store.compact(dry_run=True)

    assert report.dry_run and (report.kept, report.superseded) == (1000, 500)
    assert report.generation_after == report.generation_before == 0
    assert 0 < report.bytes_after < report.bytes_before  # an estimate of the rebuilt size
    assert sorted(os.listdir(store.path)) == files_before
    assert store.stats() == stats_before


def test_a_record_of_a_newer_format_is_kept_untouched(tmp_path):
    """We cannot tell what a newer version's record means, so we never drop it."""
    import lmdb
    from persist_to_disk.engine import keys
    from persist_to_disk.engine.records import encode_record
    store = Store(tmp_path / "leaf", "fast")
    fill(store, 5)
    store.close()
    future = bytearray(encode_record(record_for(99)))
    future[0] = 99  # record format 99
    env = lmdb.open(str(tmp_path / "leaf"))
    with env.begin(write=True) as txn:
        txn.put(keys.record_key(keys.record_prefix(7, digest_for(99)), 0), bytes(future))
    env.close()

    report = store.compact()

    assert (report.kept, report.unreadable) == (5, 1)
    assert store.stats().unreadable == 1


def test_compacting_an_empty_or_cleared_store_leaves_a_small_file(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    fill(store, 3000)
    assert store.clear() == 3000
    report = store.compact()
    assert report.kept == 0 and report.bytes_after <= 64 * 1024
    assert store.read_meta()["function"] == "f"  # the store keeps its description


def test_a_compaction_that_runs_out_of_disk_changes_nothing(small_disk):
    store = Store(small_disk / "leaf", "fast")
    stored = 0
    try:
        while True:  # fill the disk until a write fails
            store.append(stored % 50, digest_for(stored), record_for(stored, size=3000))
            stored += 1
    except Exception:
        pass
    assert stored > 100
    expected = {i: value_of(store, i) for i in range(stored)}

    with pytest.raises(CompactionFailedError, match="Nothing was changed"):
        store.compact()

    assert generations.existing_generations(store.path) == [0]
    assert not [name for name in os.listdir(store.path) if name.startswith("gen-")]
    assert {i: value_of(store, i) for i in range(stored)} == expected


def test_a_folder_without_a_store_is_reported(tmp_path):
    with pytest.raises(NoStoreError, match=str(tmp_path)):
        compact(tmp_path)


def test_old_generations_are_deleted_and_find_stores_sees_one_store(tmp_path):
    leaf = tmp_path / "func"
    store = Store(leaf, "fast")
    fill(store, 100)
    Store(leaf / "group-a", "fast").append(0, digest_for(0), record_for(0))  # a groupby leaf
    for _ in range(3):
        store.compact()
    assert generations.read_current(str(leaf)) == 3
    assert sorted(p for p in os.listdir(leaf) if p.startswith("gen-")) == ["gen-3"]
    assert not (leaf / "data.mdb").exists()
    assert list(find_stores(tmp_path)) == [str(leaf), str(leaf / "group-a")]


# --- processes that have the old generation open ------------------------------------------
COMPACT_IN_ANOTHER_PROCESS = """
from persist_to_disk.engine import Record, RecordKind, Store, compact
report = compact({leaf!r})
store = Store({leaf!r}, "fast")
store.append(1, b"written-after-01",
             Record(RecordKind.VALUE, 0.0, 0.0, "pickle:5", "3", b"", b"late"))
print(report.generation_after)
"""


def test_a_process_with_the_old_generation_open_follows_the_switch(tmp_path, python_runner):
    store = Store(tmp_path / "leaf", "fast")
    fill(store, 200, recompute_every=2)
    assert value_of(store, 5) is not None  # this process now has generation 0 open

    result = python_runner(COMPACT_IN_ANOTHER_PROCESS.format(leaf=store.path))
    assert result.stdout.split() == ["1"]
    # Counting runs in the sealed generation, finds the seal and counts again in the new one:
    # once, not twice.
    stats = store.stats()
    assert (stats.entries, stats.versions) == (201, 201)

    # A hit in the sealed generation is still right; a miss double-checks and finds the
    # record the other process wrote into the new generation.
    assert value_of(store, 5) == record_for(5).value_blob
    assert store.latest(1, b"written-after-01").value_blob == b"late"
    # A write finds the seal in its own transaction and goes to the new generation.
    store.append(2, digest_for("mine"), record_for("mine"))
    assert Store(tmp_path / "leaf").stats().entries == 202
    POOL.close_all()
    assert generations.existing_generations(str(tmp_path / "leaf")) == [1]
    assert Store(tmp_path / "leaf").latest(2, digest_for("mine")) is not None


def test_a_compactor_that_died_after_sealing_still_sends_everyone_to_the_new_generation(
        tmp_path, monkeypatch, python_runner):
    """The seal, not CURRENT, decides: a crash between the two loses nothing."""
    from persist_to_disk.engine import compaction
    store = Store(tmp_path / "leaf", "fast")
    fill(store, 300, recompute_every=3)

    def crash(*_):
        raise KeyboardInterrupt("killed before writing CURRENT")
    monkeypatch.setattr(compaction, "write_current", crash)
    with pytest.raises(KeyboardInterrupt):
        store.compact()
    monkeypatch.undo()
    POOL.close_all()
    assert generations.read_current(store.path) == 0  # CURRENT was never written

    python_runner(f"""
        from persist_to_disk.engine import Store, Record, RecordKind
        store = Store({store.path!r}, "fast")
        store.append(3, b"after-the-crash!", Record(RecordKind.VALUE, 0.0, 0.0, "pickle:5",
                                                     "3", b"", b"new"))
        """)
    assert store.latest(3, b"after-the-crash!").value_blob == b"new"
    for i in range(300):
        assert value_of(store, i) == record_for(i, 1 if i % 3 == 0 else 0).value_blob

    report = store.compact()  # the next compaction repairs the hint and tidies up
    assert report.kept == 301
    assert generations.existing_generations(store.path) == [report.generation_after]


CLEAR_AND_WRITE_AGAIN = """
from persist_to_disk.engine import Record, RecordKind, Store
store = Store({leaf!r}, "fast")
store.clear()
for i in range(5):
    store.append(i % 50, str(i).encode().rjust(16, b"0")[-16:],
                 Record(RecordKind.VALUE, 0.0, 0.0, "pickle:5", "3", b"", b"after the clear"))
"""


def test_a_clear_and_new_writes_during_the_rebuild_are_what_the_new_generation_holds(
        tmp_path, python_runner):
    """Another process clears the store and stores the same calls again while compaction
    copies: the new generation must hold the new values, not the ones the copy started from."""
    store = Store(tmp_path / "leaf", "fast")
    fill(store, 30000)
    done = []

    def meanwhile(_examined):
        if not done:
            done.append(python_runner(CLEAR_AND_WRITE_AGAIN.format(leaf=store.path)))

    report = store.compact(progress=meanwhile)

    assert done and report.carried_over > 0
    assert [value_of(store, i) for i in range(5)] == [b"after the clear"] * 5
    assert value_of(store, 5) is None
    assert store.stats().entries == 5


DIE_AFTER_SEALING = """
import os
from persist_to_disk.engine import compaction
compaction.write_current = lambda *args: os._exit(9)  # killed between the seal and CURRENT
compaction.compact({leaf!r})
"""


def test_a_process_holding_a_sealed_generation_compacts_the_newest_one(tmp_path, python_runner):
    """This process has generation 0 open; another compactor sealed it and died; a third
    process wrote into generation 1. Compacting from here must start from generation 1, not
    rebuild the sealed 0 and delete 1 with what was written there."""
    store = Store(tmp_path / "leaf", "fast")
    fill(store, 100)
    assert value_of(store, 1) is not None  # generation 0 is open here
    died = python_runner(DIE_AFTER_SEALING.format(leaf=store.path), check=False)
    assert died.returncode == 9
    python_runner(f"""
        from persist_to_disk.engine import Store, Record, RecordKind
        Store({store.path!r}, "fast").append(7, b"written-in-gen-1",
            Record(RecordKind.VALUE, 0.0, 0.0, "pickle:5", "3", b"", b"newer"))
        """)

    report = store.compact()

    assert (report.generation_before, report.generation_after) == (1, 2)
    assert report.kept == 101
    assert store.latest(7, b"written-in-gen-1").value_blob == b"newer"
    POOL.close_all()
    assert Store(store.path).latest(7, b"written-in-gen-1").value_blob == b"newer"
    assert generations.existing_generations(store.path) == [2]


KILLABLE_COMPACTOR = """
import sys, time
from persist_to_disk.engine import compact
while True:
    compact(sys.argv[1])
"""


def test_killing_the_compactor_at_random_points_loses_nothing(tmp_path, ptd_env):
    store = Store(tmp_path / "leaf", "fast")
    fill(store, 3000, recompute_every=2, size=400)
    expected = {i: value_of(store, i) for i in range(3000)}
    POOL.close_all()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_TO_DISK_")}
    rng = random.Random(7)
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", KILLABLE_COMPACTOR, store.path], env=env)
        time.sleep(rng.uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        POOL.close_all()
        reopened = Store(store.path, "fast")
        assert {i: value_of(reopened, i) for i in range(3000)} == expected
    report = Store(store.path).compact()
    assert report.kept == 3000
    assert generations.existing_generations(store.path) == [report.generation_after]


# --- compaction in a loop against concurrent writers and readers --------------------------
@pytest.mark.slow
def test_compaction_in_a_loop_loses_nothing_written_by_concurrent_writers(ptd_env, tmp_path):
    """Two writers store (and recompute, and forget) calls through the decorator while two
    readers read stored calls READONLY and a compactor compacts the store in a loop. Every
    call a writer stored must then be there with its own value; no reader saw a miss or a
    wrong value."""
    events = tmp_path / "events"
    events.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_TO_DISK_")}
    env.update(PERSIST_TO_DISK_HOME=str(ptd_env.home), PYTHONPATH=str(TESTS),
               PYTHONHASHSEED="random")

    def start(*args):
        return subprocess.Popen([sys.executable, "-m", "compaction_workers", *args],
                                cwd=str(ptd_env.project), env=env)

    calls_per_writer = 4000
    writers = [start("write", str(events), str(w), str(calls_per_writer)) for w in range(2)]
    while not list(events.glob("writer-*.log")):
        time.sleep(0.01)
    others = [start("read", str(events)), start("read", str(events)),
              start("compact", str(events))]
    for process in writers:
        assert process.wait(timeout=240) == 0, _errors(events)
    (events / "stop").touch()
    for process in others:
        assert process.wait(timeout=120) == 0, _errors(events)

    summary = json.loads((events / "compactor.json").read_text())
    reads = sum(int(line) for line in (events / "reads.log").read_text().split())
    assert summary["compactions"] >= 3, summary
    assert summary["carried_over"] > 0, summary  # writes did land during rebuilds
    assert reads > 0
    check = subprocess.run(
        [sys.executable, "-c", FINAL_CHECK, str(calls_per_writer)], cwd=str(ptd_env.project),
        env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    report = json.loads(check.stdout)
    assert report == {"missing": [], "wrong": [], "resurrected": [],
                      "stored": 2 * (calls_per_writer - calls_per_writer // 7)}, report
    print(f"compactions={summary['compactions']} carried_over={summary['carried_over']} "
          f"reads={reads}")


FINAL_CHECK = """
import json, sys
import persist_to_disk as ptd
from compaction_workers import expected, forgotten, record
count = int(sys.argv[1])
missing, wrong, resurrected, stored = [], [], [], 0
for writer in range(2):
    for j in range(count):
        if forgotten(j):
            if record.is_cached(writer, j):
                resurrected.append((writer, j))
            continue
        try:
            value = record(writer, j, cache_switch=ptd.READONLY)
        except ptd.CacheMissError:
            missing.append((writer, j))
            continue
        stored += 1
        if value != expected(writer, j):
            wrong.append((writer, j))
print(json.dumps({"missing": missing, "wrong": wrong, "resurrected": resurrected,
                  "stored": stored}))
"""


def _errors(events: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(events.glob("errors-*.txt"))) or "no errors"
