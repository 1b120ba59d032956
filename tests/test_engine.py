"""The storage engine (``persist_to_disk.engine``), tested against real LMDB and a real disk.

A store is the LMDB environment of one leaf folder. Each cached call is a (bucket, digest) pair;
each time it is stored a new *version* is appended under the next sequence number, a deletion
appends a *tombstone*, and a lookup reads only the newest version. These tests pin down what the
layer above and the maintenance tools rely on:

1. store basics: lookups never create anything, versions are append-only, tombstones hide values,
   scans return the newest live record of every call, clear keeps the metadata, records keep
   every field;
2. the key layout (bucket | digest | big-endian sequence, metadata key after every record);
3. a lookup decodes one record, however full the bucket (0.0.7 unpickled the whole bucket per
   hit), and a cache hit never takes a file lock;
4. a full map grows, also while another process grows it;
5. a bounded number of environments stays open, however many leaf stores a process uses;
6. a forked child can use a store its parent has open, and the parent carries on;
7. network filesystems are refused with a message that says what to do;
8. foreign, broken, truncated, half-missing or deleted folders are reported or repaired, never
   silently changed or written into the void; new folders and files are owner-only;
9. each durability level sets the LMDB sync flags it promises, also after the setting changes;
10. a writer killed mid-stream loses none of the appends it returned from.

The few peeks at private state (``pool._handles`` to read an open environment's flags and map
size) only observe; nothing of LMDB is mocked.
"""

import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import traceback
from pathlib import Path

import lmdb
import pytest

import persist_to_disk as ptd
from persist_to_disk.engine import (
    MAX_BUCKET, POOL, CorruptStoreError, Durability, EnvironmentPool, ForeignFolderError, Record,
    RecordKind, Store, StoreFormatError, UnsafeFilesystemError,
    ensure_local_filesystem, filesystem, keys, locks,
)
from persist_to_disk.engine import LocalStorage
from persist_to_disk.engine import settings as engine_settings
from persist_to_disk.engine import store as store_module
from persist_to_disk.imported import legacy_buckets_message
from persist_to_disk.engine.filesystem import parse_mountinfo
from persist_to_disk.engine.records import decode_record, encode_record

from conftest import run_python
import engine_workers
from engine_workers import digest_for, record_for, value_for
from helpers import files_under, fill_up, store_folders


@pytest.fixture
def restore_settings():
    """The engine settings installed before the test, installed again after it."""
    before = engine_settings.current()
    yield before
    engine_settings.install(before)


TESTS_FOLDER = Path(__file__).resolve().parent
MiB = 1 << 20


# --- helpers ------------------------------------------------------------------------------------
def open_environment(store: Store, pool: EnvironmentPool = POOL) -> "lmdb.Environment":
    """The LMDB environment the pool holds open for ``store`` (observed, never used to write)."""
    return pool._handles[store.path].env


RECORD_FIELDS = ("kind", "created", "compute_seconds", "serializer", "python_version",
                 "key_blob", "value_blob", "sequence")


def fields(record: Record, **changes) -> dict:
    """Every field of a record by name (optionally with some replaced), for comparisons."""
    return {**{name: getattr(record, name) for name in RECORD_FIELDS}, **changes}


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_for_child(pid: int, limit: float = 60.0) -> int:
    """The exit code of a forked child; a child still running after ``limit`` seconds is hung
    (a deadlock, not slowness): it is killed and the test fails."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child {pid} hung and was killed")


def join_all(processes, limit: float = 120.0) -> list:
    """Exit codes of ``processes``; one still running after ``limit`` seconds is hung: killed,
    and reported as None."""
    deadline = time.monotonic() + limit
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
            return [None] * len(processes)
    return [process.exitcode for process in processes]


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with its mode and, for files, its bytes."""
    return {str(p.relative_to(folder)): (p.stat().st_mode, p.read_bytes() if p.is_file() else None)
            for p in files_under(folder)}


def newest_values(store: Store, bucket=None) -> dict:
    """``{(bucket, digest): (sequence, value)}`` of a scan, checking no call appears twice."""
    found = {}
    for bucket_id, digest, record in store.scan(bucket):
        assert (bucket_id, digest) not in found, "a scan returned one call twice"
        found[(bucket_id, digest)] = (record.sequence, record.value_blob)
    return found


@pytest.fixture
def umask_022():
    """The usual umask, so that permission checks do not depend on how the tests were started."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# =================================================================================================
# 1. Store basics
# =================================================================================================
def test_looking_up_a_missing_store_returns_nothing_and_creates_nothing(tmp_path):
    store = Store(tmp_path / "cache" / "leaf")

    assert store.latest(0, digest_for("anything")) is None
    assert list(store.scan()) == []
    assert store.stats().versions == 0
    assert store.read_meta() == {}
    assert store.delete(0, digest_for("anything")) is False
    assert store.clear() == 0
    assert not store.exists()
    assert not (tmp_path / "cache").exists()
    assert store.path not in POOL.open_paths()


def test_an_appended_record_is_the_latest_with_every_field_kept(tmp_path):
    store = Store(tmp_path / "leaf")
    record = Record(RecordKind.VALUE, 1_700_000_000.25, 3.5, "cloudpickle", "3.11.7",
                    b"key tuple", b"\x00value\xff")

    sequence = store.append(7, digest_for("call"), record)

    assert sequence == 0
    assert fields(store.latest(7, digest_for("call"))) == fields(record, sequence=0)
    assert store.latest(7, digest_for("another call")) is None
    assert store.latest(8, digest_for("call")) is None  # the bucket is part of the key


def test_storing_a_call_again_appends_a_newer_version_and_keeps_the_old_one(tmp_path):
    store = Store(tmp_path / "leaf")
    store.append(3, digest_for("call"), record_for("first result"))

    sequence = store.append(3, digest_for("call"), record_for("second result"))

    assert sequence == 1
    latest = store.latest(3, digest_for("call"))
    assert latest.sequence == 1
    assert latest.value_blob == value_for("second result")
    stats = store.stats()
    assert (stats.entries, stats.versions, stats.tombstones) == (1, 2, 0)


def test_deleting_appends_a_tombstone_that_hides_the_value(tmp_path):
    store = Store(tmp_path / "leaf")
    store.append(0, digest_for("call"), record_for("result"))
    store.append(0, digest_for("kept"), record_for("kept"))

    assert store.delete(0, digest_for("call")) is True

    assert store.latest(0, digest_for("call")) is None
    assert store.delete(0, digest_for("call")) is False  # nothing live left to delete
    stats = store.stats()
    assert (stats.entries, stats.versions, stats.tombstones) == (1, 3, 1)
    assert list(newest_values(store)) == [(0, digest_for("kept"))]
    # storing the call again makes it live, as the version after the tombstone
    assert store.append(0, digest_for("call"), record_for("again")) == 2
    assert store.latest(0, digest_for("call")).value_blob == value_for("again")


def test_scan_returns_the_newest_live_record_of_every_call_across_several_batches(tmp_path):
    """2,600 calls in two buckets (more than one scan batch of 1,024, also per bucket), some
    stored twice, some deleted."""
    store = Store(tmp_path / "leaf", "fast")
    expected = {}
    for i in range(2600):
        bucket, digest = i % 2, digest_for(i)
        store.append(bucket, digest, record_for((i, "v0")))
        expected[(bucket, digest)] = (0, value_for((i, "v0")))
        if i % 5 == 0:
            store.append(bucket, digest, record_for((i, "v1")))
            expected[(bucket, digest)] = (1, value_for((i, "v1")))
        if i % 7 == 0:
            store.delete(bucket, digest)
            del expected[(bucket, digest)]
    store.append(9, digest_for("alone"), record_for("alone"))
    expected[(9, digest_for("alone"))] = (0, value_for("alone"))
    in_bucket = {b: {k: v for k, v in expected.items() if k[0] == b} for b in (0, 1)}
    assert min(len(calls) for calls in in_bucket.values()) > 1024

    scanned = [(bucket, digest) for bucket, digest, _ in store.scan()]
    assert scanned == sorted(scanned)  # key order: bucket, then digest
    assert newest_values(store) == expected
    assert newest_values(store, bucket=0) == in_bucket[0]
    assert newest_values(store, bucket=1) == in_bucket[1]
    assert newest_values(store, bucket=2) == {}
    assert store.stats().entries == len(expected)


def test_scan_without_values_returns_everything_but_the_value(tmp_path):
    store = Store(tmp_path / "leaf")
    record = record_for("call")
    store.append(4, digest_for("call"), record)

    [(bucket, digest, found)] = list(store.scan(with_values=False))

    assert (bucket, digest) == (4, digest_for("call"))
    assert fields(found) == fields(record, value_blob=b"", sequence=0)


def test_clear_removes_every_record_but_keeps_the_metadata(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    for i in range(30):
        store.append(i % 4, digest_for(i), record_for(i), meta={"function": "pkg.f"})
    store.append(0, digest_for(0), record_for("second version"))
    store.delete(1, digest_for(1))

    assert store.clear() == 29  # calls that were live

    assert store.latest(0, digest_for(0)) is None
    assert list(store.scan()) == []
    stats = store.stats()
    assert (stats.entries, stats.versions, stats.tombstones, stats.live_bytes) == (0, 0, 0, 0)
    assert store.read_meta()["function"] == "pkg.f"
    # A record written after the clear starts past every sequence the clear deleted (0 and 1
    # here), so no record key ever comes back with other contents (compaction relies on it).
    assert store.append(0, digest_for(0), record_for("after clear")) == 2


def test_clear_works_on_a_store_without_metadata(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    for i in range(10):
        store.append(i % 3, digest_for(i), record_for(i))  # no meta: the last key is a record

    assert store.clear() == 10

    assert store.stats().versions == 0
    assert store.read_meta() == {}


def test_stats_counts_live_calls_versions_tombstones_and_bytes(tmp_path):
    store = Store(tmp_path / "leaf")
    records = {name: record_for(name, size) for name, size in
               (("a", 100), ("b", 200), ("c", 300), ("b again", 250))}
    store.append(0, digest_for("a"), records["a"], meta={"function": "f"})
    store.append(1, digest_for("b"), records["b"])
    store.append(1, digest_for("b"), records["b again"])
    store.append(2, digest_for("c"), records["c"])
    store.delete(2, digest_for("c"))

    stats = store.stats()

    assert stats.path == store.path
    assert stats.entries == 2            # a, b
    assert stats.versions == 5           # a, b, b again, c, tombstone of c
    assert stats.tombstones == 1         # c
    assert stats.live_bytes == len(encode_record(records["a"])) + len(
        encode_record(records["b again"]))
    assert stats.file_bytes == os.path.getsize(Path(store.path) / "data.mdb")


@pytest.mark.parametrize("record", [
    Record(RecordKind.VALUE, 1_700_000_000.123456, 12.5, "pickle", "3.11.7", b"key", b"value"),
    Record(RecordKind.VALUE, 0.0, 0.0, "cloudpickle", "3.9.18", b"", b"", 7),
    Record(RecordKind.TOMBSTONE, 1e9, 0.0, "", "", b"", b"", 2 ** 63),
    Record(RecordKind.VALUE, -1.5, 1e-9, "pickle", "3.13.0rc1", b"\x00\xff" * 40_000,
           bytes(range(256)) * 400, 123_456_789),
], ids=["plain", "empty-blobs", "tombstone", "binary-blobs"])
def test_a_record_survives_encoding_with_every_field(record):
    data = encode_record(record)

    decoded = decode_record(data, record.sequence)
    assert fields(decoded) == fields(record)
    assert type(decoded.kind) is RecordKind
    assert decoded.is_tombstone is (record.kind is RecordKind.TOMBSTONE)
    assert fields(decode_record(memoryview(data), record.sequence)) == fields(record)  # buffers
    assert fields(decode_record(data, record.sequence, with_value=False)) == fields(
        record, value_blob=b"")


@pytest.mark.parametrize("format_byte", [0, 4, 255])  # 4: a future format
def test_a_record_of_an_unknown_format_raises_store_format_error(format_byte):
    data = bytearray(encode_record(record_for("call")))
    data[0] = format_byte

    with pytest.raises(StoreFormatError, match=f"format {format_byte}"):
        decode_record(bytes(data))


def test_a_record_shorter_than_its_header_raises_store_format_error():
    with pytest.raises(StoreFormatError):
        decode_record(encode_record(record_for("call"))[:10])


def _put_raw(store: Store, bucket: int, digest: bytes, sequence: int, data: bytes) -> None:
    """Write bytes under a record key, as a newer version of the engine would."""
    key = keys.record_key(keys.record_prefix(bucket, digest), sequence)
    POOL.write(store.path, store.durability, lambda txn: txn.put(key, data))


def test_a_lookup_of_a_record_written_by_a_newer_format_raises_store_format_error(tmp_path):
    store = Store(tmp_path / "leaf")
    store.append(0, digest_for("call"), record_for("old"))
    newer = bytearray(encode_record(record_for("new")))
    newer[0] = 4  # a future format (3 is records with code)
    _put_raw(store, 0, digest_for("call"), 1, bytes(newer))

    with pytest.raises(StoreFormatError):
        store.latest(0, digest_for("call"))
    assert list(store.scan()) == []  # not ours to interpret: skipped, not misread


def test_stats_and_clear_still_work_when_a_newer_format_record_is_present(tmp_path):
    """A store shared with a newer version must stay clearable by this one."""
    store = Store(tmp_path / "leaf")
    store.append(0, digest_for("call"), record_for("old"))
    store.append(1, digest_for("other"), record_for("other"))
    newer = bytearray(encode_record(record_for("new")))
    newer[0] = 4  # a future format (3 is records with code)
    _put_raw(store, 0, digest_for("call"), 1, bytes(newer))

    assert store.stats().versions == 3
    store.clear()
    assert store.stats().versions == 0


# =================================================================================================
# 2. Keys
# =================================================================================================
@pytest.mark.parametrize("bucket, digest", [
    (0, b"\x00" * 15), (0, b"\x00" * 17), (0, b""), (-1, b"\x00" * 16),
    (MAX_BUCKET + 1, b"\x00" * 16), (2 ** 32, b"\x00" * 16),
])
def test_record_prefix_rejects_wrong_digest_sizes_and_buckets_out_of_range(bucket, digest):
    with pytest.raises(ValueError):
        keys.record_prefix(bucket, digest)


def test_record_prefix_accepts_the_whole_bucket_range():
    assert keys.record_prefix(0, b"\x01" * 16) == b"\x00\x00\x00\x00" + b"\x01" * 16
    assert keys.record_prefix(MAX_BUCKET, b"\x01" * 16)[:4] == b"\xff\xff\xff\xfe"
    assert keys.record_prefix(MAX_BUCKET, b"\x01" * 16) < keys.META_KEY


def test_a_store_rejects_a_digest_of_the_wrong_size(tmp_path):
    store = Store(tmp_path / "leaf")
    with pytest.raises(ValueError, match="16 bytes"):
        store.append(0, b"short", record_for("call"))


def test_sequences_are_big_endian_so_keys_sort_like_numbers():
    prefix = keys.record_prefix(5, digest_for("call"))
    sequences = [0, 1, 255, 256, 65_535, 65_536, 2 ** 32, 2 ** 63]

    encoded = [keys.record_key(prefix, s) for s in sequences]

    assert encoded == sorted(encoded)
    assert [keys.split_key(k) for k in encoded] == [(5, digest_for("call"), s) for s in sequences]


def test_the_newest_of_more_than_256_versions_wins(tmp_path):
    """Version 256 must sort after version 255 (little-endian sequences would not)."""
    store = Store(tmp_path / "leaf", "fast")
    for version in range(300):
        assert store.append(1, digest_for("call"), record_for(version)) == version

    latest = store.latest(1, digest_for("call"))
    assert (latest.sequence, latest.value_blob) == (299, value_for(299))
    assert newest_values(store) == {(1, digest_for("call")): (299, value_for(299))}


def test_the_metadata_key_never_appears_in_scans_or_counts(tmp_path):
    store = Store(tmp_path / "leaf")
    store.append(0, digest_for("first"), record_for("first"), meta={"function": "pkg.f"})
    store.append(MAX_BUCKET, digest_for("last"), record_for("last"), meta={"function": "other"})

    assert set(newest_values(store)) == {(0, digest_for("first")),
                                         (MAX_BUCKET, digest_for("last"))}
    assert set(newest_values(store, bucket=MAX_BUCKET)) == {(MAX_BUCKET, digest_for("last"))}
    assert store.stats().versions == 2
    assert store.latest(MAX_BUCKET, digest_for("last")).value_blob == value_for("last")
    meta = store.read_meta()
    assert meta["function"] == "pkg.f"  # written once, with the store's first record
    assert meta["store_format"] == 1


# =================================================================================================
# 3. One record per hit, and no lock on a hit
# =================================================================================================
@pytest.fixture
def decode_counter(monkeypatch):
    """Count the records the store decodes (the real decoder still does the work)."""
    calls = []
    real = store_module.decode_record

    def counting_decode_record(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module, "decode_record", counting_decode_record)
    return calls


@pytest.mark.parametrize("other_calls, versions", [(0, 1), (1999, 1), (0, 2000)],
                         ids=["alone", "2000-calls-in-bucket", "2000-versions"])
def test_a_lookup_decodes_exactly_one_record_however_full_the_bucket(
        tmp_path, decode_counter, other_calls, versions):
    store = Store(tmp_path / "leaf", "fast")
    for i in range(other_calls):
        store.append(6, digest_for(("neighbour", i)), record_for(("neighbour", i)))
    for version in range(versions):
        store.append(6, digest_for("call"), record_for(("call", version)))
    decode_counter.clear()

    record = store.latest(6, digest_for("call"))

    assert record.value_blob == value_for(("call", versions - 1))
    assert len(decode_counter) == 1


_tripled_calls = []


@ptd.persistf()
def _tripled(x):
    _tripled_calls.append(x)
    return 3 * x


def test_a_cache_hit_through_the_decorator_takes_no_file_lock(monkeypatch):
    _tripled_calls.clear()
    assert _tripled(5) == 15  # the miss computes under the call's lock

    def compute_lock_is_forbidden(*args, **kwargs):
        raise AssertionError("a cache lookup took a file lock")

    monkeypatch.setattr(Store, "compute_lock", compute_lock_is_forbidden)

    assert _tripled(5) == 15
    assert _tripled_calls == [5]
    with pytest.raises(AssertionError, match="took a file lock"):
        _tripled(6)  # a miss still needs the lock: the patch is in effect


_one_bucket_calls = []


@ptd.persistf(hashsize=1, durability="fast")
def _in_one_bucket(x):
    _one_bucket_calls.append(x)
    return {"x": x}


def test_a_hit_through_the_decorator_decodes_one_record_in_a_bucket_of_2000(decode_counter):
    """The 0.0.7 flaw: every hit unpickled the whole bucket."""
    _one_bucket_calls.clear()
    for x in range(2000):
        _in_one_bucket(x)
    decode_counter.clear()

    assert _in_one_bucket(1234) == {"x": 1234}

    assert len(_one_bucket_calls) == 2000
    assert len(decode_counter) == 1


# =================================================================================================
# 4. Map growth
# =================================================================================================
def test_a_full_map_grows_and_the_write_succeeds(tmp_path, restore_settings):
    engine_settings.install(engine_settings.current().replace(initial_map_size=MiB))
    store = Store(tmp_path / "leaf", "fast")

    for i in range(40):  # 40 x 100 KiB: four times the first map
        store.append(i % 3, digest_for(i), record_for(i, 100 * 1024))

    assert open_environment(store).info()["map_size"] >= 4 * MiB
    for i in range(40):
        assert store.latest(i % 3, digest_for(i)).value_blob == value_for(i, 100 * 1024)


def test_a_value_larger_than_the_whole_map_is_stored(tmp_path, restore_settings):
    engine_settings.install(engine_settings.current().replace(initial_map_size=MiB))
    store = Store(tmp_path / "leaf", "fast")

    store.append(0, digest_for("big"), record_for("big", 5 * MiB))

    assert store.latest(0, digest_for("big")).value_blob == value_for("big", 5 * MiB)


def test_two_processes_growing_one_store_at_once_lose_nothing(tmp_path, restore_settings):
    """Each writer fills 5.6 MiB of a map that starts at 1 MiB, so both keep growing it and keep
    adopting the other's growth (MapResizedError). Every value is then read by both writers and
    by this process, which had the store open at its first, smallest size all along."""
    engine_settings.install(engine_settings.current().replace(initial_map_size=MiB))
    count, value_size = 120, 48 * 1024
    store = Store(tmp_path / "leaf", "fast")
    store.append(0, digest_for("parent"), record_for("parent"))
    assert open_environment(store).info()["map_size"] == MiB

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    writers = [context.Process(target=engine_workers.grow_store,
                               args=(store.path, worker, count, value_size, MiB, barrier))
               for worker in (0, 1)]
    for writer in writers:
        writer.start()
    assert join_all(writers) == [0, 0]

    for worker in (0, 1):
        for i in range(count):
            record = store.latest(i % 3, digest_for((worker, i)))
            assert record is not None and record.value_blob == value_for((worker, i), value_size)
    assert store.latest(0, digest_for("parent")).value_blob == value_for("parent")
    assert open_environment(store).info()["map_size"] >= 8 * MiB  # adopted the grown map
    assert store.stats().entries == 2 * count + 1


# =================================================================================================
# 5. A bounded number of open environments
# =================================================================================================
def test_a_pool_keeps_at_most_max_open_environments_and_every_store_still_reads_back(tmp_path):
    pool = EnvironmentPool(max_open=8)
    try:
        fds_before = open_fd_count()
        stores = [Store(tmp_path / f"leaf{n}", "fast", pool=pool) for n in range(50)]
        for n, store in enumerate(stores):
            store.append(n % 3, digest_for(n), record_for(n))
            assert len(pool.open_paths()) <= 8
        assert open_fd_count() <= fds_before + 3 * 8 + 4

        for n, store in reversed(list(enumerate(stores))):  # reopens what was closed
            assert store.latest(n % 3, digest_for(n)).value_blob == value_for(n)
            assert len(pool.open_paths()) <= 8
        for n, store in enumerate(stores):
            store.append(n % 3, digest_for(n), record_for((n, "again")))
            assert store.stats().versions == 2
            assert len(pool.open_paths()) <= 8
        assert open_fd_count() <= fds_before + 3 * 8 + 4
    finally:
        pool.close_all()
    assert pool.open_paths() == []


_leaf_calls = []


@ptd.persistf(groupby=["leaf"], durability="fast")
def _leaf_value(leaf, x):
    _leaf_calls.append(leaf)
    return (leaf, x)


@pytest.mark.slow
def test_ten_thousand_groupby_leaves_in_one_process_keep_open_files_bounded():
    """Each leaf is its own LMDB environment (3 file descriptors); 10,000 of them would pass
    the usual descriptor limit and ~128 TiB of address space if all stayed open. (Each leaf
    also has its own lock files, of which at most ``locks.MAX_OPEN_LOCK_FILES`` stay open.)"""
    _leaf_calls.clear()
    fd_limit = open_fd_count() + 3 * POOL.max_open + locks.MAX_OPEN_LOCK_FILES + 16
    for leaf in range(10_000):
        assert _leaf_value(leaf, 1) == (leaf, 1)
        if leaf % 200 == 0:
            assert open_fd_count() <= fd_limit
            assert len(POOL.open_paths()) <= POOL.max_open
    for leaf in range(0, 10_000, 7):  # hits, mostly in environments closed long ago
        assert _leaf_value(leaf, 1) == (leaf, 1)

    assert len(_leaf_calls) == 10_000
    assert open_fd_count() <= fd_limit
    assert len(store_folders(_leaf_value.cache_folder())) == 10_000


# =================================================================================================
# 6. Fork
# =================================================================================================
def test_a_forked_child_reads_and_writes_a_store_its_parent_has_open(tmp_path):
    store = Store(tmp_path / "leaf", "standard")
    store.append(0, digest_for("parent"), record_for("parent"))
    assert store.latest(0, digest_for("parent")) is not None
    assert store.path in POOL.open_paths()

    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 1
        try:
            engine_workers.append_in_forked_child(store.path, 0, 20)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    assert wait_for_child(pid) == 0

    # the parent carries on with the handle it had, and sees what the child wrote
    for i in range(20):
        assert store.latest(i % 4, digest_for(("child", 0, i))).value_blob == value_for(
            ("child", 0, i))
    store.append(0, digest_for("parent after fork"), record_for("parent after fork"))
    assert store.latest(0, digest_for("parent after fork")).value_blob == value_for(
        "parent after fork")
    assert store.stats().entries == 22


def test_forked_workers_and_their_parent_write_one_store_at_once(tmp_path):
    store = Store(tmp_path / "leaf", "standard")
    store.append(0, digest_for("parent"), record_for("parent"))

    context = multiprocessing.get_context("fork")
    children = [context.Process(target=engine_workers.append_in_forked_child,
                                args=(store.path, worker, 60)) for worker in (1, 2)]
    for child in children:
        child.start()
    for i in range(60):
        store.append(i % 4, digest_for(("parent", i)), record_for(("parent", i)))
    assert join_all(children) == [0, 0]

    for i in range(60):
        for name in (("parent", i), ("child", 1, i), ("child", 2, i)):
            assert store.latest(i % 4, digest_for(name)).value_blob == value_for(name)
    assert store.stats().entries == 181


# =================================================================================================
# 7. Network filesystems
# =================================================================================================
_OTHER_MOUNTS = [
    "22 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw",
    "23 28 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw",
    "26 28 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=8123456k,mode=755",
]

#: The fields after the device number of realistic mountinfo lines, by filesystem type.
_MOUNTS = {
    "nfs4": "/ /mnt/home rw,relatime shared:271 - nfs4 fileserver:/export/home rw,vers=4.2,"
            "rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,"
            "clientaddr=10.0.0.5,local_lock=none,addr=10.0.0.2",
    "nfs": "/ /data rw,relatime shared:90 - nfs nas:/vol/data rw,vers=3,rsize=65536,"
           "wsize=65536,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.1.1.1",
    "lustre": "/ /lustre/scratch rw,relatime shared:300 - lustre "
              "10.10.0.1@o2ib:10.10.0.2@o2ib:/scratch rw,flock,lazystatfs,encrypt",
    "cifs": "/ /mnt/team\\040share rw,relatime shared:150 - cifs //nas.example.org/team\\040share "
            "rw,vers=3.1.1,cache=strict,username=alice,uid=1000,noforceuid,gid=1000,"
            "addr=192.168.1.20,file_mode=0755,dir_mode=0755,soft,nounix,mapposix,rsize=4194304",
    "fuse.sshfs": "/ /home/alice/remote rw,nosuid,nodev,relatime shared:400 - fuse.sshfs "
                  "alice@cluster:/home/alice rw,user_id=1000,group_id=1000",
    "ext4": "/ / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro",
    "xfs": "/ /data rw,noatime shared:40 - xfs /dev/sdb1 rw,attr2,inode64,logbufs=8,"
           "logbsize=32k,noquota",
    "tmpfs": "/ /tmp rw,nosuid,nodev shared:20 - tmpfs tmpfs rw,size=16384000k,inode64",
    "overlay": "/ / rw,relatime master:1 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/"
               "l/ABC:/var/lib/docker/overlay2/l/DEF,upperdir=/var/lib/docker/overlay2/123/diff,"
               "workdir=/var/lib/docker/overlay2/123/work",
}
NETWORK_TYPES = ["nfs4", "nfs", "lustre", "cifs", "fuse.sshfs"]
LOCAL_TYPES = ["ext4", "xfs", "tmpfs", "overlay"]


def fake_mountinfo(path: Path, fstype: str) -> str:
    """/proc/self/mountinfo text in which ``path``'s real device is mounted as ``fstype``."""
    device = os.stat(path).st_dev
    line = f"512 28 {os.major(device)}:{os.minor(device)} {_MOUNTS[fstype]}"
    return "\n".join(_OTHER_MOUNTS + [line]) + "\n"


@pytest.mark.parametrize("fstype", NETWORK_TYPES)
def test_a_cache_folder_on_a_network_filesystem_is_refused_with_what_to_do(tmp_path, fstype):
    folder = tmp_path / "cache" / "leaf"  # not created yet: its nearest existing parent counts

    with pytest.raises(UnsafeFilesystemError) as raised:
        ensure_local_filesystem(str(folder), fake_mountinfo(tmp_path, fstype))

    message = str(raised.value)
    assert str(folder) in message
    assert f"({fstype}," in message
    assert "local disk" in message
    assert isinstance(raised.value, OSError)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("fstype", LOCAL_TYPES)
def test_a_cache_folder_on_a_local_filesystem_is_accepted(tmp_path, fstype):
    ensure_local_filesystem(str(tmp_path / "cache"), fake_mountinfo(tmp_path, fstype))


def test_only_the_mount_of_the_folders_own_device_counts(tmp_path):
    device = os.stat(tmp_path).st_dev
    other = f"{os.major(device) + 1}:{os.minor(device) + 1}"
    text = "\n".join([f"600 28 {other} {_MOUNTS['nfs4']}",
                      f"601 28 {os.major(device)}:{os.minor(device)} {_MOUNTS['ext4']}"])

    ensure_local_filesystem(str(tmp_path), text)  # the NFS mount is another device


def test_opening_a_store_on_a_network_filesystem_is_refused_and_creates_nothing(
        tmp_path, monkeypatch):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(fake_mountinfo(tmp_path, "nfs4"))
    monkeypatch.setattr(filesystem, "MOUNTINFO_PATH", str(mountinfo))
    monkeypatch.setattr(filesystem, "_checked_devices", {})
    store = Store(tmp_path / "cache" / "leaf")

    with pytest.raises(UnsafeFilesystemError, match="nfs4"):
        store.append(0, digest_for("call"), record_for("call"))
    assert not (tmp_path / "cache").exists()


def test_parse_mountinfo_handles_optional_fields_and_escaped_spaces():
    text = "\n".join([
        "25 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw",  # no optional field
        "22 25 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw",
        "40 25 0:40 /exports /mnt/my\\040team\\040share rw,relatime shared:12 master:3 "
        "propagate_from:2 unbindable - cifs //nas/my\\040share rw,vers=3.0",
        "41 25 259:1048575 / /big rw - xfs /dev/nvme9n1 rw",
        "",
        "not a mountinfo line",
    ])

    assert parse_mountinfo(text) == {
        os.makedev(8, 1): ("ext4", "/"),
        os.makedev(0, 21): ("proc", "/proc"),
        os.makedev(0, 40): ("cifs", "/mnt/my team share"),
        os.makedev(259, 1048575): ("xfs", "/big"),
    }


def test_parse_mountinfo_reads_this_machines_mount_table():
    with open("/proc/self/mountinfo") as handle:
        devices = parse_mountinfo(handle.read())
    assert os.stat("/proc").st_dev in devices
    assert devices[os.stat("/proc").st_dev][0] == "proc"


# =================================================================================================
# 8. Folder problems
# =================================================================================================
def test_a_folder_of_0_0_7_pkl_buckets_is_refused_and_left_unchanged(tmp_path):
    leaf = tmp_path / "leaf"
    leaf.mkdir()
    (leaf / "17.pkl").write_bytes(b"\x80\x04}\x94.")  # pickle.dumps({}, protocol=4)
    (leaf / "301.pkl").write_bytes(b"\x80\x04}\x94.")
    before = snapshot(leaf)

    # The engine knows nothing of .pkl files: the layer above's check refuses the folder,
    # asked by the storage tier when it opens a leaf without a store.
    installed = engine_settings.current()
    storage = LocalStorage(installed.replace(foreign_folder=legacy_buckets_message))
    try:
        with pytest.raises(ForeignFolderError, match=r"\.pkl") as raised:
            storage.open_store(str(leaf)).append(0, digest_for("call"), record_for("call"))
        assert str(leaf) in str(raised.value)
        with pytest.raises(ForeignFolderError):
            storage.open_store(str(leaf))
    finally:
        engine_settings.install(installed)
    assert snapshot(leaf) == before


_grouped_calls = []


@ptd.persistf(groupby=["group"])
def _grouped(group, x):
    _grouped_calls.append(x)
    return x


def test_the_decorator_refuses_a_0_0_7_leaf_before_computing(tmp_path):
    _grouped_calls.clear()
    _grouped("old", 1)  # creates the function's folder
    leaf = Path(_grouped.cache_folder()) / "new"
    leaf.mkdir()
    (leaf / "3.pkl").write_bytes(b"\x80\x04}\x94.")
    before = snapshot(leaf)

    with pytest.raises(ptd.ForeignFolderError):
        _grouped("new", 2)
    assert _grouped_calls == [1]
    assert snapshot(leaf) == before


def test_a_store_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "leaf"
    path.write_bytes(b"not a folder")

    with pytest.raises(ForeignFolderError, match="is a file") as raised:
        Store(path).append(0, digest_for("call"), record_for("call"))
    assert str(path) in str(raised.value)
    assert path.read_bytes() == b"not a folder"


def test_a_garbage_data_file_raises_corrupt_store_error_and_is_left_untouched(tmp_path):
    leaf = tmp_path / "leaf"
    leaf.mkdir()
    garbage = b"this is not an LMDB environment\n" * 512
    (leaf / "data.mdb").write_bytes(garbage)
    store = Store(leaf)

    with pytest.raises(CorruptStoreError) as raised:
        store.latest(0, digest_for("call"))
    assert str(leaf) in str(raised.value)
    with pytest.raises(CorruptStoreError):
        store.append(0, digest_for("call"), record_for("call"))
    assert (leaf / "data.mdb").read_bytes() == garbage

    # moving the folder aside, as the message says, starts the cache afresh in this process
    leaf.rename(tmp_path / "moved aside")
    fresh = Store(leaf)
    fresh.append(0, digest_for("call"), record_for("call"))
    assert fresh.latest(0, digest_for("call")).value_blob == value_for("call")


def test_a_missing_lock_file_is_recreated_and_the_data_is_intact(tmp_path):
    store = Store(tmp_path / "leaf")
    for i in range(20):
        store.append(i % 3, digest_for(i), record_for(i))
    store.close()
    (tmp_path / "leaf" / "lock.mdb").unlink()

    for i in range(20):
        assert store.latest(i % 3, digest_for(i)).value_blob == value_for(i)
    assert (tmp_path / "leaf" / "lock.mdb").is_file()
    store.append(0, digest_for("after"), record_for("after"))
    assert store.stats().entries == 21


def test_a_new_store_on_a_full_disk_raises_instead_of_killing_the_process(small_disk,
                                                                          python_runner):
    """LMDB maps its lock file sparse; on a full disk the first write to it would be SIGBUS.
    The engine allocates the lock file's blocks first, so the process gets an OSError."""
    filler = small_disk / "filler"
    fill_up(filler)
    result = python_runner(f"""
        import errno
        from persist_to_disk.engine import Store, Record, RecordKind
        try:
            Store({str(small_disk / "leaf")!r}).append(
                0, b"d" * 16, Record(RecordKind.VALUE, 0.0, 0.0, "pickle:5", "3", b"", b"v"))
        except OSError as err:
            print("OSError", err.errno == errno.ENOSPC)
        """, check=False)
    assert result.returncode == 0, f"killed (exit {result.returncode}): {result.stderr[-300:]}"
    assert result.stdout.split() == ["OSError", "True"]


def test_a_truncated_data_file_raises_corrupt_store_error_instead_of_killing_the_process(
        tmp_path, python_runner):
    """A data.mdb cut short (a copy that ran out of space, a partial rsync) must be reported
    like any other broken store. Reading it is done in another process: LMDB touching a page
    past the end of the file is SIGBUS, which would kill this one."""
    leaf = tmp_path / "leaf"
    store = Store(leaf, "fast")
    for i in range(300):
        store.append(i % 7, digest_for(i), record_for(i, 8192))
    store.close()
    data = leaf / "data.mdb"
    os.truncate(data, data.stat().st_size // 4)
    truncated = data.read_bytes()

    result = python_runner(f"""
        from persist_to_disk.engine import CorruptStoreError, Store
        try:
            print("read", sum(1 for _ in Store({str(leaf)!r}).scan()))
        except CorruptStoreError as err:
            print("CorruptStoreError:", err)
        """, check=False)

    assert result.returncode == 0, (
        f"reading the truncated store killed the process (exit {result.returncode}, "
        f"{result.stderr.strip()[-300:]!r})")
    assert result.stdout.startswith("CorruptStoreError:")
    assert str(leaf) in result.stdout
    assert data.read_bytes() == truncated


def test_an_append_after_the_store_folder_was_deleted_lands_on_disk(tmp_path):
    """Deleting a cache folder (rm -rf) while a process has its store open must not leave that
    process writing into the deleted file, where no other process, and no later run, sees it."""
    leaf = tmp_path / "cache" / "leaf"
    Store(leaf).append(0, digest_for("call"), record_for("old"))
    shutil.rmtree(tmp_path / "cache")

    Store(leaf).append(0, digest_for("call"), record_for("new"))

    assert (leaf / "data.mdb").is_file()
    assert Store(leaf).latest(0, digest_for("call")).value_blob == value_for("new")


def _modes(root: Path) -> dict:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in files_under(root)}


def test_a_new_store_and_every_folder_it_creates_are_owner_only(tmp_path, umask_022):
    root = tmp_path / "persist"
    Store(root / "project-1" / "pkg" / "leaf").append(0, digest_for("call"), record_for("call"))

    assert _modes(root) == {
        "project-1": 0o700,
        "project-1/pkg": 0o700,
        "project-1/pkg/leaf": 0o700,
        "project-1/pkg/leaf/data.mdb": 0o600,
        "project-1/pkg/leaf/lock.mdb": 0o600,
    }


def test_the_decorators_cache_tree_is_owner_only(ptd_env, umask_022):
    _grouped("a", 1)

    modes = _modes(ptd_env.persist)
    assert any(path.endswith("data.mdb") for path in modes), "nothing was stored"
    modes["<persist path>"] = stat.S_IMODE(ptd_env.persist.stat().st_mode)
    loose = {path: oct(mode) for path, mode in modes.items()
             if mode & (stat.S_IRWXG | stat.S_IRWXO)}
    assert loose == {}


# =================================================================================================
# 9. Durability
# =================================================================================================
@pytest.mark.parametrize("level, sync, metasync", [
    ("full", True, True), ("standard", True, False), ("fast", False, None),
])
def test_each_durability_level_opens_the_environment_with_its_sync_flags(
        tmp_path, level, sync, metasync):
    store = Store(tmp_path / "leaf", level)
    store.append(0, digest_for("call"), record_for("call"))

    flags = open_environment(store).flags()

    assert flags["sync"] is sync
    if metasync is not None:  # without sync, LMDB ignores metasync
        assert flags["metasync"] is metasync



@ptd.persistf(durability="full")
def _durable(x):
    return x


def test_the_decorators_durability_reaches_the_environment():
    _durable(1)
    store = _durable.__persisted__.store_for(())
    assert open_environment(store).flags()["metasync"] is True


def test_changing_the_configured_durability_reaches_an_environment_already_open():
    _tripled(1)  # the function's store is opened at the default level, standard
    store = _tripled.__persisted__.store_for(())
    assert open_environment(store).flags()["metasync"] is False

    ptd.config.set_durability("full")
    _tripled(2)

    store = _tripled.__persisted__.store_for(())
    assert store.durability is Durability.FULL
    assert open_environment(store).flags()["metasync"] is True, (
        "the store asks for full durability, but its environment still commits at standard")


def test_durability_parse_accepts_the_three_names_and_rejects_others():
    assert Durability.parse("full") is Durability.FULL
    assert Durability.parse(" Standard ") is Durability.STANDARD
    assert Durability.parse(Durability.FAST) is Durability.FAST
    for wrong in ("paranoid", "", None, 1):
        with pytest.raises(ValueError, match="'full', 'standard', 'fast'"):
            Durability.parse(wrong)
    with pytest.raises(ValueError):
        Store("/nonexistent/leaf", durability="safe")


# =================================================================================================
# 10. A killed writer
# =================================================================================================
@pytest.mark.parametrize("durability", ["full", "standard", "fast"])
def test_a_killed_writer_loses_none_of_the_appends_it_returned_from(
        tmp_path, python_runner, durability):
    path = tmp_path / "leaf"
    writer = subprocess.Popen(
        [sys.executable, str(TESTS_FOLDER / "engine_workers.py"), str(path), durability],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while len(lines) < 300:
            line = writer.stdout.readline()
            if not line:
                pytest.fail(f"the writer stopped early:\n{writer.stderr.read()}")
            lines.append(line)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        # Read the rest through writer.stdout itself: communicate() would read the pipe's file
        # descriptor directly and skip lines readline() had already buffered.
        rest = writer.stdout.read()
        writer.stderr.read()
        writer.wait(timeout=60)
    assert writer.returncode == -signal.SIGKILL
    returned = [line.split() for line in lines + rest.splitlines(keepends=True)
                if line.endswith("\n")]
    out_of_order = [(n, entry) for n, entry in enumerate(returned)
                    if entry != [str(n), "0"]]
    assert not out_of_order, (out_of_order[:5], len(returned), rest[-300:])

    # a new process opens the store as it is (no repair step), checks and writes it
    result = python_runner(
        f"""
        from persist_to_disk.engine import Store
        from engine_workers import digest_for, record_for, value_for
        store = Store({str(path)!r})
        missing = [i for i in range({len(returned)})
                   if (store.latest(i % 5, digest_for(("killed", i))) or record_for(0)).value_blob
                   != value_for(("killed", i), 512)]
        store.append(0, digest_for("after the kill"), record_for("after the kill"))
        print(missing, store.latest(0, digest_for("after the kill")) is not None)
        """,
        extra_env={"PYTHONPATH": str(TESTS_FOLDER)})
    assert result.stdout.splitlines()[0] == "[] True"


# =================================================================================================
# Review regressions: fork while a handle is retired; a read-only filesystem
# =================================================================================================
def test_a_fork_while_a_stale_handle_is_retired_leaves_the_pool_usable(tmp_path):
    """``_before_fork`` waits on a handle whose holder then retires it (as when a store folder
    is deleted or the durability changes): the fork hooks must neither break on the changed
    registry nor leave the pool lock held."""
    import threading
    from persist_to_disk.engine.pool import EnvironmentPool

    pool = EnvironmentPool()
    stores = [Store(tmp_path / name, pool=pool) for name in ("a", "b", "c")]
    for store in stores:
        store.append(0, digest_for("x"), record_for("x"))
    handle = pool._checkout(stores[1].path, stores[1].durability, write=False)  # lock held
    forking = threading.Thread(target=pool._before_fork)
    forking.start()
    forking.join(0.2)
    assert forking.is_alive()  # waiting for the running "transaction"
    pool._retire(handle)
    handle.lock.release()
    forking.join(10)
    assert not forking.is_alive()
    pool._after_fork_in_parent()

    done = threading.Event()
    threading.Thread(target=lambda: (stores[1].latest(0, digest_for("x")), done.set()),
                     daemon=True).start()
    assert done.wait(10), "the pool stayed locked after the fork hooks"
    assert stores[0].latest(0, digest_for("x")) is not None
    pool.close_all()


@pytest.fixture
def read_only_mount(tmp_path):
    """A small tmpfs the test can remount read-only (needs root; skipped otherwise)."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): " + made.stderr.decode()[:200])
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_cache_on_a_read_only_filesystem_answers_hits_and_still_computes_misses(
        read_only_mount, ptd_env):
    home = read_only_mount / "home"
    code = """
        import warnings
        import persist_to_disk as ptd
        warnings.simplefilter("always")

        @ptd.persistf()
        def double(x):
            print("computed", x)
            return 2 * x

        import sys
        for x in map(int, sys.argv[1:]):
            print("value", double(x))
    """
    run_python(code, ptd_env.project, home, "1")
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], check=True)
    result = run_python(code, ptd_env.project, home, "1", "2")
    assert result.stdout.split("\n")[:3] == ["value 2", "computed 2", "value 4"]
    assert "Could not store the result" in result.stderr
    assert "Read-only file system" in result.stderr


def test_load_latest_loads_a_large_value_in_place_and_a_small_one_from_a_copy(tmp_path):
    """A large value is handed to ``load`` as a view of the memory map (copying it first, then
    unpickling, held two copies and made glibc re-fault the memory on every hit); a small one
    as bytes. Either way ``load`` sees the record's whole value."""
    store = Store(tmp_path / "leaf", "fast")
    large, small = b"L" * (1 << 20), b"small value"
    store.append(1, digest_for("large"), record_for("large")._replace(value_blob=large))
    store.append(1, digest_for("small"), record_for("small")._replace(value_blob=small))
    seen = []

    def load(record):
        seen.append(type(record.value_blob))
        return bytes(record.value_blob)

    record, loaded = store.load_latest(1, digest_for("large"), load)
    assert loaded == large and record.value_blob == b"" and seen == [memoryview]
    record, loaded = store.load_latest(1, digest_for("small"), load)
    assert loaded == small and record.value_blob == small and seen[-1] is bytes
    assert store.load_latest(1, digest_for("absent"), load) is None
    store.delete(1, digest_for("large"))
    assert store.load_latest(1, digest_for("large"), load) is None


def test_an_error_while_loading_in_place_leaves_the_store_usable(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    store.append(1, digest_for("large"),
                 record_for("large")._replace(value_blob=b"L" * (1 << 20)))

    def broken(record):
        raise ValueError("cannot load")

    with pytest.raises(ValueError, match="cannot load"):
        store.load_latest(1, digest_for("large"), broken)
    store.append(1, digest_for("after"), record_for("after"))  # no transaction left open
    assert store.latest(1, digest_for("after")).value_blob == record_for("after").value_blob
