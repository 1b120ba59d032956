"""The engine's surface for the layer above (issue 11): the storage interface, its settings
object, and what a store checks and raises on its own.

* A record says where it came from (``Record.origin``), stored as a suffix of its serializer
  tag so that records imported by earlier versions read the same.
* A store raises only engine errors: a failed read or write is ``StorageIOError`` (an
  ``OSError`` with the cause's ``errno``), never an ``lmdb`` exception.
* ``append_if_absent`` is a conditional create, decided in the write transaction.
* ``LocalStorage.open_store`` refuses a bad folder before anything is computed.
* The process-wide singletons follow the installed ``EngineSettings``, and engine messages
  name what the installed ``Wording`` says.
"""

import errno
import os
import stat

import lmdb
import pytest

from engine_workers import digest_for, record_for, value_for
from helpers import fill_up
from persist_to_disk.engine import (POOL, CallStore, ComputeLock, EngineSettings,
                                    ForeignFolderError, LocalStorage, LockScope, Record,
                                    RecordKind, Sharing, StorageIOError, StorageTier, Store,
                                    UntrustedFolderError, Wording, environments, keys, locks,
                                    pool, settings, trust)
from persist_to_disk.engine.records import encode_record


@pytest.fixture
def engine_settings():
    """Restores the settings installed before the test (the singletons follow them back)."""
    before = settings.current()
    yield before
    settings.install(before)


def write_value(payload: bytes):
    def write(out):
        out.write(payload)
        return "pickle:5"
    return write


# --- the interface ------------------------------------------------------------------------------
def test_the_lmdb_store_and_the_local_tier_implement_the_storage_interface(tmp_path):
    assert isinstance(Store(tmp_path / "leaf"), CallStore)
    assert isinstance(LocalStorage(EngineSettings()), StorageTier)
    lock = Store(tmp_path / "leaf").compute_lock(0, digest_for("call"), LockScope.CALL)
    assert isinstance(lock, ComputeLock)


# --- Record.origin ------------------------------------------------------------------------------
def test_a_record_keeps_its_origin_through_append_and_read(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    store.append_value(0, digest_for("imported"), write_value(b"value"), created=1.0,
                       compute_seconds=0.0, python_version="3.11.7", key_blob=b"key",
                       origin="ptd-0.0.7")
    store.append(0, digest_for("computed"), record_for("computed"))

    imported = store.latest(0, digest_for("imported"))
    assert (imported.serializer, imported.origin) == ("pickle:5", "ptd-0.0.7")
    assert imported.value_blob == b"value"
    assert store.latest(0, digest_for("imported"), with_value=False).origin == "ptd-0.0.7"
    assert store.latest(0, digest_for("computed")).origin == ""
    scanned = {digest: record.origin for _, digest, record in store.scan()}
    assert scanned == {digest_for("imported"): "ptd-0.0.7", digest_for("computed"): ""}


def test_a_record_imported_by_an_earlier_version_reads_its_origin_from_the_serializer_tag(
        tmp_path):
    """Earlier versions wrote the origin into the serializer field itself; those bytes (and
    their checksums) must read as serializer ``pickle:5`` from origin ``ptd-0.0.7``."""
    store = Store(tmp_path / "leaf", "fast")
    store.append(0, digest_for("call"), record_for("call"))  # creates the store
    digest = digest_for("old import")
    prefix = keys.record_prefix(7, digest)
    old = Record(RecordKind.VALUE, 1.0, 0.0, "pickle:5+ptd-0.0.7", "3.11.7", b"key", b"v" * 100)
    written = encode_record(old, prefix)
    assert b"pickle:5+ptd-0.0.7" in written
    POOL.close(store.path)
    env = lmdb.open(store.path, subdir=True, max_spare_txns=0)  # as that version wrote it
    try:
        with env.begin(write=True) as txn:
            txn.put(keys.record_key(prefix, 0), written)
    finally:
        env.close()

    record = Store(store.path, "fast").latest(7, digest)
    assert (record.serializer, record.origin, record.value_blob) == ("pickle:5", "ptd-0.0.7",
                                                                    b"v" * 100)
    new = old._replace(serializer="pickle:5", origin="ptd-0.0.7")
    assert encode_record(new, prefix) == written, "the on-disk format is unchanged"


# --- StorageIOError -----------------------------------------------------------------------------
def test_a_write_to_a_full_disk_raises_storage_io_error_with_enospc(small_disk):
    store = Store(small_disk / "leaf", "fast")
    store.append(0, digest_for("small"), record_for("small"))
    fill_up(small_disk / "filler")

    with pytest.raises(StorageIOError) as raised:
        for i in range(64):  # 64 x 256 KiB: more than the 6 MB disk holds
            store.append(0, digest_for(("big", i)), record_for(("big", i), 256 * 1024))
    error = raised.value
    assert isinstance(error, OSError)
    assert error.errno == errno.ENOSPC
    assert error.path == store.path and store.path in str(error)
    assert not isinstance(error, lmdb.Error)
    (small_disk / "filler").unlink()
    assert store.latest(0, digest_for("small")).value_blob == value_for("small")


def test_an_lmdb_failure_while_reading_reaches_the_caller_as_storage_io_error(
        tmp_path, monkeypatch):
    store = Store(tmp_path / "leaf", "fast")
    store.append(0, digest_for("call"), record_for("call"))

    def failing_read(*args, **kwargs):
        raise lmdb.DiskError(f"{store.path}: Input/output error")

    monkeypatch.setattr(POOL, "newest", failing_read)
    with pytest.raises(StorageIOError, match="Input/output error") as raised:
        store.latest(0, digest_for("call"))
    assert raised.value.errno == errno.EIO and store.path in str(raised.value)


def test_what_a_callers_load_raises_is_not_taken_for_a_storage_failure(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    store.append(0, digest_for("big"), record_for("big", 100 * 1024))  # loaded in place

    def load(record):
        raise FileNotFoundError(errno.ENOENT, "raised by the caller's unpickling")

    with pytest.raises(FileNotFoundError) as raised:
        store.load_latest(0, digest_for("big"), load)
    assert not isinstance(raised.value, StorageIOError)


# --- append_if_absent ---------------------------------------------------------------------------
def test_append_if_absent_appends_only_where_the_call_has_no_live_value(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    digest = digest_for("call")

    assert store.append_if_absent(0, digest, record_for("first")) is True
    assert store.append_if_absent(0, digest, record_for("second")) is False
    assert store.latest(0, digest).value_blob == value_for("first")
    assert store.stats().versions == 1

    assert store.delete(0, digest)
    assert store.append_if_absent(0, digest, record_for("after delete")) is True
    assert store.latest(0, digest).value_blob == value_for("after delete")


def test_append_if_absent_writes_the_metadata_only_when_it_appends(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    store.append(0, digest_for("call"), record_for("call"))
    assert store.append_if_absent(0, digest_for("call"), record_for("x"), meta={"a": 1}) is False
    assert store.read_meta() == {}
    assert store.append_if_absent(0, digest_for("other"), record_for("y"), meta={"a": 1})
    assert store.read_meta()["a"] == 1


# --- LocalStorage.open_store --------------------------------------------------------------------
def test_open_store_refuses_a_path_that_is_a_file(tmp_path, engine_settings):
    path = tmp_path / "leaf"
    path.write_bytes(b"not a folder")
    with pytest.raises(ForeignFolderError, match="is a file"):
        LocalStorage(engine_settings).open_store(str(path))
    assert path.read_bytes() == b"not a folder"


def test_open_store_refuses_a_folder_others_can_write_before_anything_is_created(
        tmp_path, engine_settings):
    leaf = tmp_path / "leaf"
    leaf.mkdir()
    os.chmod(leaf, 0o777)
    storage = LocalStorage(engine_settings.replace(sharing=Sharing.NO))
    with pytest.raises(UntrustedFolderError, match="writable by every user"):
        storage.open_store(str(leaf))
    assert os.listdir(leaf) == []

    trusting = LocalStorage(engine_settings.replace(sharing=Sharing.ALL))
    store = trusting.open_store(str(leaf), "fast")
    store.append(0, digest_for("call"), record_for("call"))
    assert store.latest(0, digest_for("call")).value_blob == value_for("call")
    POOL.close(store.path)


def test_open_store_asks_the_settings_foreign_folder_check_only_where_no_store_exists(
        tmp_path, engine_settings):
    asked = []

    def foreign(folder):
        asked.append(folder)
        if os.path.isdir(folder) and os.listdir(folder):
            return f"{folder} holds another program's files; not used."
        return None

    storage = LocalStorage(engine_settings.replace(foreign_folder=foreign))
    foreign_leaf = tmp_path / "theirs"
    foreign_leaf.mkdir()
    (foreign_leaf / "17.pkl").write_bytes(b"theirs")
    with pytest.raises(ForeignFolderError, match="another program's files") as raised:
        storage.open_store(str(foreign_leaf))
    assert str(foreign_leaf) in str(raised.value)
    assert os.listdir(foreign_leaf) == ["17.pkl"]

    ours = tmp_path / "ours"
    store = storage.open_store(str(ours), "fast")
    store.append(0, digest_for("call"), record_for("call"))
    asked.clear()
    assert storage.open_store(str(ours), "fast").latest(0, digest_for("call")) is not None
    assert asked == [], "a folder holding a store is ours: the check is not asked"


def test_open_store_installs_its_settings(tmp_path, engine_settings):
    mine = engine_settings.replace(max_open_environments=7)
    LocalStorage(mine).open_store(str(tmp_path / "leaf"))
    assert settings.current() is mine and POOL.max_open == 7


def test_a_global_compute_lock_lives_in_the_lock_root(tmp_path):
    store = Store(tmp_path / "project" / "f" / "leaf", lock_root=str(tmp_path / "project"))
    lock = store.compute_lock(0, digest_for("call"), LockScope.GLOBAL, timeout=1)
    assert lock.path == str(tmp_path / "project" / locks.GLOBAL_LOCK_FILE)
    assert lock.acquire() is None
    lock.release()
    call_lock = store.compute_lock(0, digest_for("call"), LockScope.CALL)
    assert call_lock.path.startswith(store.path + os.sep)
    assert call_lock.call == (store.path, digest_for("call"))


# --- settings and wording -----------------------------------------------------------------------
def test_installing_settings_resizes_the_pool_and_changes_the_trust_policy(
        tmp_path, engine_settings):
    settings.install(engine_settings.replace(max_open_environments=3, sharing=Sharing.GROUP,
                                             trust_roots=(str(tmp_path),),
                                             handle_recheck_seconds=0.5,
                                             lock_recheck_seconds=0.25,
                                             max_open_lock_files=9,
                                             initial_map_size=2 << 20))
    assert POOL.max_open == 3
    assert trust.current_policy() == trust.TrustPolicy(Sharing.GROUP, (str(tmp_path),))
    assert pool.RECHECK_SECONDS == 0.5 and environments.initial_map_size() == 2 << 20
    assert locks.RECHECK_SECONDS == 0.25 and locks.MAX_OPEN_LOCK_FILES == 9

    store = Store(tmp_path / "leaf", "fast")
    store.append(0, digest_for("call"), record_for("call"))
    assert POOL._handles[store.path].env.info()["map_size"] == 2 << 20
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o2770, "created for the group"
    POOL.close(store.path)

    settings.install(engine_settings)
    assert POOL.max_open == pool.environment_budget()
    assert trust.current_policy().sharing is Sharing.NO


def test_the_engine_reads_no_environment_variable_for_its_map_size(
        tmp_path, engine_settings, monkeypatch):
    monkeypatch.setenv("PERSIST_TO_DISK_INITIAL_MAP_SIZE", str(2 << 20))
    store = Store(tmp_path / "leaf", "fast")
    store.append(0, digest_for("call"), record_for("call"))
    assert POOL._handles[store.path].env.info()["map_size"] == settings.DEFAULT_MAP_SIZE
    POOL.close(store.path)


def test_the_installed_wording_names_the_tools_in_engine_messages(tmp_path, engine_settings):
    leaf = tmp_path / "leaf"
    leaf.mkdir()
    os.chmod(leaf, 0o777)
    words = Wording(persist_path="the_folder_option", share_setting="who_writes",
                    share="by calling allow('{level}')", verify="run `check {path}`")
    settings.install(engine_settings.replace(wording=words))
    with pytest.raises(UntrustedFolderError) as raised:
        trust.check_trusted(str(leaf))
    message = str(raised.value)
    assert "use another the_folder_option" in message
    assert "the setting who_writes: 'group'" in message and "by calling allow('group')" in message

    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ForeignFolderError, match="choose another the_folder_option"):
        LocalStorage(settings.current()).open_store(str(tmp_path / "file"))

    from persist_to_disk.engine.errors import damaged_store_error
    assert f"Run `check {leaf}`" in str(damaged_store_error(str(leaf), lmdb.CorruptedError("x")))


# --- one walk of the newest record of each call -------------------------------------------------
def test_scan_stats_clear_and_compaction_agree_on_each_calls_newest_record(tmp_path, monkeypatch):
    """They all see a call through ``keys.newest_of_each_call``: recomputed calls count once,
    deleted calls not at all, and a scan split into many short transactions sees each live
    call exactly once."""
    from persist_to_disk.engine import compact
    from persist_to_disk.engine import store as store_module
    monkeypatch.setattr(store_module, "_SCAN_BATCH", 3)
    store = Store(tmp_path / "leaf", "fast")
    for i in range(10):
        for version in range(i % 3 + 1):  # 1 to 3 versions
            store.append(i % 4, digest_for(i), record_for((i, version)))
    for i in (2, 5):
        assert store.delete(i % 4, digest_for(i))

    live = {digest_for(i): value_for((i, i % 3)) for i in range(10) if i not in (2, 5)}
    scanned = [(digest, record.value_blob) for _, digest, record in store.scan()]
    assert sorted(scanned) == sorted(live.items())
    assert [d for _, d, _ in store.scan(bucket=1)] == sorted(
        d for d in live if d in {digest_for(i) for i in range(10) if i % 4 == 1})
    stats = store.stats()
    assert (stats.entries, stats.tombstones) == (8, 2)
    assert stats.versions == sum(i % 3 + 1 for i in range(10)) + 2

    report = compact(store.path, durability="fast")
    assert (report.kept, report.tombstones) == (8, 2)
    assert report.superseded == sum(i % 3 for i in range(10) if i not in (2, 5))
    assert sorted((d, r.value_blob) for _, d, r in store.scan()) == sorted(live.items())
    assert store.clear() == 8
    assert list(store.scan()) == [] and store.stats().entries == 0
