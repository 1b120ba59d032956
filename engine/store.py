"""A store: the records of one leaf folder, in one LMDB environment (``interface.CallStore``).

Look up the newest record of a call, append a record (or only if the call has no live value),
append a tombstone, scan, clear, stats, a small metadata document, and the compute lock of a
call. Records are never rewritten in place; the newest sequence of a (bucket, digest) wins.
Every method raises only engine errors: LMDB's own exceptions are damage
(:class:`~.errors.CorruptStoreError`) or a failed read or write
(:class:`~.errors.StorageIOError`). ``LocalStorage.open_store`` (``local.py``) checks the
folder before handing a store out; a store built directly (tests, tools) is not checked.
"""

import json
import os
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, Iterator, Optional, Tuple, TypeVar

import lmdb

from . import keys, lazy_imports
from .durability import Durability
from .pool import POOL, EnvironmentPool, StoreMissing
from .errors import EngineError, StoreFormatError, engine_error, storage_io_error
from .generations import store_exists, store_file_bytes
from .locks import ComputeLock, LockScope, call_lock_offset, compute_lock, lock_place
from .records import (CodeVersionStats, DamagedRecordError, Record, RecordKind, build_record,
                      decode_record, decode_view, encode_record)
from .settings import EngineSettings

STORE_FORMAT = 1
T = TypeVar("T")
_TOMBSTONE = RecordKind.TOMBSTONE
_LAST = b'\xff' * keys.SEQUENCE_SIZE
_LARGE = 64 * 1024  # values above this are read as views of the map, never copied out
_DIGEST_SIZE, _MAX_BUCKET, _PREFIX_SIZE = keys.DIGEST_SIZE, keys.MAX_BUCKET, keys.PREFIX_SIZE
_pack_bucket = keys._BUCKET.pack
_unpack_sequence = keys._SEQUENCE.unpack_from
_CALL_SCOPE = LockScope.CALL
@dataclass(frozen=True)
class StoreStats:
    path: str
    entries: int          # calls whose newest record holds a value
    versions: int         # every record, superseded ones and tombstones included
    tombstones: int       # calls whose newest record is a deletion
    live_bytes: int       # bytes of the newest value records
    file_bytes: int       # size of the data files on disk (every generation present)
    unreadable: int = 0   # calls whose newest record has a newer format than this version reads


def _newest_key(txn: "lmdb.Transaction", prefix: bytes) -> Optional[bytes]:
    """The key of the call's newest record (its value is not read: copying a large value out
    of the map to learn its sequence cost a whole copy of it per write)."""
    cursor = txn.cursor()
    found = cursor.set_range(keys.after_last_version(prefix)) and cursor.prev()
    if not found:
        found = cursor.last()
    if found:
        key = cursor.key()
        if key[:keys.PREFIX_SIZE] == prefix:
            return key
    return None


class Store:
    """Records of one leaf folder. Cheap to construct; the environment opens on first use."""

    def __init__(self, path: str, durability: Durability = Durability.STANDARD,
                 pool: EnvironmentPool = POOL, settings: Optional[EngineSettings] = None,
                 lock_root: Optional[str] = None, meta: Optional[dict] = None) -> None:
        self.path = os.path.abspath(path)
        #: The description written with the first record when an append passes none (records
        #: a shared tier fetches into an empty store carry no description of their own).
        self.meta = meta
        self.durability = Durability.parse(durability)
        self.settings = settings  # as opened by LocalStorage (None: built directly)
        self.lock_root = lock_root
        self._pool = pool
        self._created = False
        self._call_lock_file: Optional[str] = None  # (compute_lock)

    def exists(self) -> bool:
        """Whether the store has been created on disk (lookups never create it)."""
        if not self._created:
            try:
                self._created = store_exists(self.path)
            except OSError as err:  # out of descriptors to list the folder, say
                raise storage_io_error(self.path, err, "read") from err
        return self._created

    def compute_lock(self, bucket: int, digest: bytes, scope: LockScope,
                     timeout: Optional[float] = None) -> ComputeLock:
        """The lock a miss of the call ``(bucket, digest)`` takes while it computes, for
        ``scope`` (see ``locks.py``): ``call`` locks a byte of the store's call lock file,
        ``func`` the store, ``global`` the folder ``lock_root`` (the project; without one,
        nothing wider than the store is known here, so it locks the store as ``func`` does,
        in a file of its own). Threads of this process share it per call (``call``
        identifies the store and the digest)."""
        if scope is _CALL_SCOPE:  # the default, on every miss: the file's path joined once
            path = self._call_lock_file
            if path is None:
                path = self._call_lock_file = lock_place(scope, self.path, digest, self.path)[0]
            return ComputeLock(path, call_lock_offset(digest), timeout, (self.path, digest))
        path, offset = lock_place(scope, self.path, digest, self.lock_root or self.path)
        return compute_lock(path, offset, timeout, call=(self.path, digest))

    # --- reading --------------------------------------------------------------------------
    def latest(self, bucket: int, digest: bytes, with_value: bool = True) -> Optional[Record]:
        """The newest value record of a call, or None if absent or deleted.

        Raises :class:`DamagedRecordError` if the record fails its checksum, and
        :class:`StoreFormatError` if a newer version wrote it. With ``with_value=False`` only
        the header is read and checked (whether a result is stored, and by whom): the value is
        never copied out of the memory map, however large. (py-lmdb still touches each page of
        a value it hands out, to fault them in without the GIL: on a cold page cache that
        reads the value from disk, though it copies nothing.)
        """
        prefix = keys.record_prefix(bucket, digest)
        if with_value:
            def decode(key: bytes, view) -> Record:  # a large value: copied once, as bytes
                return decode_record(view, keys.sequence_of(key), True, prefix)
            found = self._find_newest(prefix, decode, _LARGE)
        else:
            def decode(key: bytes, view) -> Record:
                return decode_view(view, keys.sequence_of(key), prefix, with_value=False)
            found = self._find_newest(prefix, decode, -1)
        if found is None:
            return None
        key, record = found
        if record.__class__ is not Record:
            record = decode_record(record, keys.sequence_of(key), True, prefix)
        return None if record.kind is _TOMBSTONE else record

    def load_latest(self, bucket: int, digest: bytes, load: Callable[[Record], T]
                    ) -> Optional[Tuple[Record, T]]:
        """``(newest value record, load(record))`` of a call, or None if absent or deleted.

        The record's checksum is verified first (a damaged record raises
        :class:`DamagedRecordError`; ``load`` never sees its bytes). A large value is handed to
        ``load`` as a view of the store's memory map, inside the read transaction, and never
        copied (``load`` must not keep the view: ``pickle.loads`` copies what it needs); the
        returned record's ``value_blob`` is then empty.
        """
        if digest.__class__ is bytes and len(digest) == _DIGEST_SIZE and 0 <= bucket <= _MAX_BUCKET:
            prefix = _pack_bucket(bucket) + digest  # keys.record_prefix, checked inline
        else:
            prefix = keys.record_prefix(bucket, digest)  # (raises what is wrong)
        found = self._find_newest(prefix, _load_in_place, _LARGE, (prefix, load))
        if found is None:
            return None
        key, data = found
        if data.__class__ is tuple:  # a large value, loaded in place
            record, loaded = data
            return None if record.kind is _TOMBSTONE else (record, loaded)
        record = decode_record(data, _unpack_sequence(key, _PREFIX_SIZE)[0], True, prefix)
        return None if record.kind is _TOMBSTONE else (record, load(record))

    def _find_newest(self, prefix: bytes, large, large_size: int, large_args: tuple = ()):
        """``(key, value)`` of the call's newest record (see ``EnvironmentPool.newest``)."""
        if not self._created and not self.exists():
            return None
        try:
            return self._pool.newest(self.path, self.durability, prefix, prefix + _LAST,
                                     large, large_size, large_args)
        except StoreMissing:
            self._created = False
            return None
        except _LoadFailed as failed:  # the caller's own error, raised as it was
            raise failed.error from None
        except EngineError:
            raise
        except (lmdb.Error, OSError) as err:  # damage, or a failed read
            raise engine_error(self.path, err, "read") from err

    def scan(self, bucket: Optional[int] = None, with_values: bool = True
             ) -> Iterator[Tuple[int, bytes, Record]]:
        """Yield ``(bucket, digest, newest record)`` of every live call, in key order.

        Reads in batches of short transactions so that a long scan never pins old pages.
        """
        if not self.exists():
            return
        start = keys.bucket_prefix(bucket) if bucket is not None else b""
        stop = keys.bucket_prefix(bucket + 1) if bucket is not None else keys.META_KEY[:4]
        while True:
            batch, start = self._read(lambda txn: _scan_batch(txn, start, stop, with_values),
                                      ([], None))
            for bucket_id, digest, record in batch:
                yield bucket_id, digest, record
            if start is None:
                return

    def stats(self) -> StoreStats:
        tally = {}
        if self.exists():
            def count(txn):
                # Restart the tally: a read that returns None runs again in the new generation
                # when a compaction has sealed this one.
                tally.update(entries=0, versions=0, tombstones=0, live_bytes=0, unreadable=0)
                for _, newest, versions in keys.newest_of_each_call(txn.cursor()):
                    if versions:
                        tally["versions"] += versions
                        _tally(newest, tally)
            self._read(count, None)
        if not tally:
            tally.update(entries=0, versions=0, tombstones=0, live_bytes=0, unreadable=0)
        try:
            file_bytes = store_file_bytes(self.path)
        except OSError as err:
            raise storage_io_error(self.path, err, "read") from err
        return StoreStats(self.path, tally["entries"], tally["versions"], tally["tombstones"],
                          tally["live_bytes"], file_bytes, tally["unreadable"])

    def code_versions(self) -> Dict[str, CodeVersionStats]:
        """``{code: CodeVersionStats(records, last_written, last_current)}`` over every value
        record the store holds, superseded versions included (they stay until compaction, and
        a call whose code goes back to an old version finds its results again); ``""`` gathers
        the records of unknown code. Tombstones, damaged records and records of a newer format
        are not counted. Checks each record's header and never unpickles anything, but walks
        every record in one read transaction (as :meth:`stats` does): a pass over the store,
        for maintenance tools, never on a call's path.

        ``last_current`` orders code versions by what the store knows of the order records
        were appended in, not by their dates alone (clocks of machines sharing a cache differ,
        coarse or pinned clocks tie): only the newest record of known code of each call can be
        the last one of known code appended, so a code version gets the latest date among the
        calls whose newest such record it wrote, and that record counts as written no earlier
        than any record of its call before it (the records of a call are appended in sequence
        order). A code version that lost every one of its calls to another gets -inf.
        """
        found: Dict[str, list] = {}
        if self.exists():
            def count(txn):
                found.clear()  # a read that returns None runs again in a new generation
                _count_code_versions(txn, found)
            self._read(count, None)
        return {code: CodeVersionStats(records, last, current)
                for code, (records, last, current) in sorted(found.items())}

    def read_meta(self) -> dict:
        if not self.exists():
            return {}
        raw = self._read(lambda txn: txn.get(keys.META_KEY), None)
        return json.loads(raw) if raw else {}

    def _read(self, action, default):
        """Run ``action`` in a read transaction; ``default`` if the store has been deleted."""
        try:
            return self._pool.read(self.path, self.durability, action)
        except StoreMissing:
            self._created = False
            return default
        except EngineError:
            raise
        except (lmdb.Error, OSError) as err:  # damage, or a failed read
            raise engine_error(self.path, err, "read") from err

    def _write(self, action):
        """Run ``action`` in a write transaction (see ``EnvironmentPool.write``), raising only
        engine errors."""
        try:
            return self._pool.write(self.path, self.durability, action)
        except EngineError:
            raise
        except (lmdb.Error, OSError) as err:  # damage, or a failed write
            raise engine_error(self.path, err, "write to") from err

    # --- writing --------------------------------------------------------------------------
    def append(self, bucket: int, digest: bytes, record: Record,
               meta: Optional[dict] = None) -> int:
        """Append ``record`` as the newest version of (bucket, digest); return its sequence.

        ``meta`` is written once, with the store's first record, for maintenance tools.
        """
        prefix = keys.record_prefix(bucket, digest)
        return self._put(prefix, encode_record(record, prefix), meta)

    def append_value(self, bucket: int, digest: bytes, write_value: Callable[[BinaryIO], str],
                     *, created: float, compute_seconds: float, python_version: str,
                     key_blob: bytes, meta: Optional[dict] = None, origin: str = "",
                     replace: bool = False, code: str = "") -> int:
        """Append a value record whose value ``write_value(file)`` writes (returning the
        serializer's name) straight into the record's buffer; return its sequence.
        ``origin``, ``code``: see ``Record.origin`` and ``Record.code``. ``replace`` concerns a
        shared tier only (see the interface): a local append always makes the newest version.

        For results of any size: the value is held once more than the caller holds it, plus
        LMDB's own copy while it writes (see :func:`records.build_record`). Whatever
        ``write_value`` raises propagates, and nothing is written.
        """
        prefix = keys.record_prefix(bucket, digest)
        payload = build_record(prefix, RecordKind.VALUE, created, compute_seconds,
                               python_version, key_blob, write_value, origin, code)
        try:
            return self._put(prefix, payload, meta)
        finally:
            payload.release()  # frees the buffer now, not when the caller's frame goes

    def append_if_absent(self, bucket: int, digest: bytes, record: Record,
                         meta: Optional[dict] = None) -> bool:
        """Append ``record`` only if the call has no live value (no record, or a tombstone as
        its newest), deciding and appending in one write transaction: the conditional create
        that first-writer-wins rests on. Return whether it was appended. A newest record this
        version cannot read (damaged, or a newer format) counts as present: it is never
        buried under another."""
        prefix = keys.record_prefix(bucket, digest)
        payload = encode_record(record, prefix)

        def absent(txn, newest: Optional[bytes]) -> bool:
            if newest is None:
                return True
            try:
                found = decode_record(txn.get(newest), with_value=False, prefix=prefix)
            except StoreFormatError:
                return False
            return found.is_tombstone

        return self._put(prefix, payload, meta, absent) is not None

    def _put(self, prefix: bytes, payload, meta: Optional[dict], condition=None
             ) -> Optional[int]:
        """Append ``payload`` under the call's next sequence; with ``condition(txn, newest
        key or None)`` only if it holds (None is returned otherwise)."""
        if meta is None:
            meta = self.meta
        def put(txn):
            newest = _newest_key(txn, prefix)
            if condition is not None and not condition(txn, newest):
                return None
            if meta is not None and txn.get(keys.META_KEY) is None:
                document = {"store_format": STORE_FORMAT, "created": time.time(), **meta}
                txn.put(keys.META_KEY, json.dumps(document, sort_keys=True).encode("utf-8"))
            if newest is not None:
                sequence = keys.sequence_of(newest) + 1
            else:
                first = txn.get(keys.FIRST_SEQUENCE_KEY)
                sequence = keys.decode_sequence(first) if first is not None else 0
            txn.put(keys.record_key(prefix, sequence), payload)
            return sequence

        sequence = self._write(put)
        self._created = True
        return sequence

    def delete(self, bucket: int, digest: bytes) -> bool:
        """Append a tombstone if the call has a live value; return whether it had one.

        Reads the newest record's header only (a large value is never copied). A record whose
        header is damaged is not a live value: it is left as it is, for inspection.
        """
        try:
            if self.latest(bucket, digest, with_value=False) is None:
                return False
        except DamagedRecordError:
            return False
        tombstone = Record(RecordKind.TOMBSTONE, time.time(), 0.0, "", "", b"", b"")
        self.append(bucket, digest, tombstone)
        return True

    def clear(self) -> int:
        """Remove every record in one transaction; return how many calls were live.

        Safe while other processes use the store (it is an ordinary write transaction). The
        file keeps its size; the freed pages are reused, and :meth:`compact` gives space back.
        """
        if not self.exists():
            return 0
        return self._write(_drop_all)

    def compact(self, policy=None, *, dry_run: bool = False, progress=None):
        """Rebuild the store without superseded versions, tombstones and what ``policy``
        expires; see :func:`compaction.compact`."""
        return lazy_imports.load("compaction").compact(self.path, policy, dry_run=dry_run, progress=progress,
                       durability=self.durability, pool=self._pool)

    def close(self) -> None:
        self._pool.close(self.path)


class _LoadFailed(Exception):
    """Internal: the caller's ``load`` raised inside a read transaction; re-raised as it was
    (an ``OSError`` raised while unpickling is not the store failing)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _load_in_place(key: bytes, view, prefix: bytes, load: Callable[[Record], T]
                   ) -> Tuple[Record, Any]:
    """``load_latest``'s reader of a large value, run inside the read transaction: the record
    decoded over the memory map (checksum in place), loaded, and returned without its view."""
    record = decode_view(view, keys.sequence_of(key), prefix)
    if record.kind is _TOMBSTONE:
        return record, None
    try:
        loaded = load(record)
    except Exception as err:  # not the store's failure: never wrapped as one
        raise _LoadFailed(err) from None
    return record._replace(value_blob=b""), loaded


def _drop_all(txn: "lmdb.Transaction") -> int:
    """Delete every record key, keeping the metadata document; return the live calls dropped
    (counted in the same transaction, so the count is exact under concurrent writers).

    Records written later start past every sequence deleted here, so no record key is ever
    written twice with different contents.
    """
    tally = {"entries": 0, "versions": 0, "tombstones": 0, "live_bytes": 0, "unreadable": 0}
    cursor = txn.cursor()
    if not cursor.first():
        return 0
    first = txn.get(keys.FIRST_SEQUENCE_KEY)
    next_sequence = keys.decode_sequence(first) if first is not None else 0
    for key, newest, versions in keys.newest_of_each_call(cursor):
        if versions:
            next_sequence = max(next_sequence, keys.sequence_of(key) + 1)
            _tally(newest, tally)
    cursor.first()
    while True:
        if keys.is_record_key(cursor.key()):
            if not cursor.delete():  # delete moves to the next item; False at the end
                break
        elif not cursor.next():
            break
    txn.put(keys.FIRST_SEQUENCE_KEY, keys.encode_sequence(next_sequence))
    return tally["entries"]


def _count_code_versions(txn: "lmdb.Transaction", found: Dict[str, list]) -> None:
    """Add every value record of the store to ``found``: ``{code: [records, last_written,
    last_current]}`` (see :meth:`Store.code_versions`). One pass in key order: the records of
    a call are adjacent, oldest sequence first."""
    never = float("-inf")
    cursor = txn.cursor()
    is_record_key, prefix_size = keys.is_record_key, keys.PREFIX_SIZE
    call: Optional[bytes] = None
    since = never          # the latest date of the call's records so far
    current: Optional[str] = None  # the code of the call's newest value record of known code
    current_as_of = never  # the date it counts as written at (``since`` when appended)

    def end_of_call() -> None:
        if current is not None and current_as_of > found[current][2]:
            found[current][2] = current_as_of

    for key, value in cursor.iternext(keys=True, values=True):
        if not is_record_key(key):
            continue
        prefix = key[:prefix_size]
        if prefix != call:
            end_of_call()
            call, since, current, current_as_of = prefix, never, None, never
        try:
            record = decode_record(value, with_value=False, prefix=prefix)
        except StoreFormatError:
            continue  # damaged (`ptd verify` reports it), or a newer writer's
        since = max(since, record.created)
        if record.kind is _TOMBSTONE:
            continue
        tally = found.get(record.code)
        if tally is None:
            found[record.code] = [1, record.created, never]
        else:
            tally[0] += 1
            if record.created > tally[1]:
                tally[1] = record.created
        if record.code:
            current, current_as_of = record.code, since
    end_of_call()


def _tally(newest: bytes, tally: dict) -> None:
    """Count one call by its newest record."""
    try:
        record = decode_record(newest, with_value=False)
    except StoreFormatError:
        tally["unreadable"] += 1  # a newer writer's record: counted, never misread
        return
    if record.is_tombstone:
        tally["tombstones"] += 1
    else:
        tally["entries"] += 1
        tally["live_bytes"] += len(newest)


_SCAN_BATCH = 1024


def _scan_batch(txn, start: bytes, stop: bytes, with_values: bool):
    """The newest records of up to ``_SCAN_BATCH`` calls from ``start``; return them and the
    next start (None at the end)."""
    batch = []
    cursor = txn.cursor()
    if not cursor.set_range(start):
        return batch, None
    walked = 0
    for key, newest, versions in keys.newest_of_each_call(cursor, stop):
        if not versions:
            continue
        _emit(batch, key, newest, with_values)
        walked += 1
        if walked >= _SCAN_BATCH:
            return batch, keys.after_last_version(bytes(key[:keys.PREFIX_SIZE]))
    return batch, None


def _emit(batch, key: bytes, value, with_values: bool) -> None:
    bucket, digest, sequence = keys.split_key(key)
    try:
        record = decode_record(value, sequence, with_value=with_values,
                               prefix=bytes(key[:keys.PREFIX_SIZE]))
    except StoreFormatError:
        return  # a newer writer's record, or a damaged one: `ptd verify` reports those
    if not record.is_tombstone:
        batch.append((bucket, digest, record))
