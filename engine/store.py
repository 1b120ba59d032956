"""A store: the records of one leaf folder, in one LMDB environment.

This is the engine's whole surface for the layer above: look up the newest record of a call,
append a record, append a tombstone, scan, clear, stats and a small metadata document. Records
are never rewritten in place; the newest sequence of a (bucket, digest) wins.
"""

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Tuple, TypeVar

import lmdb

from . import keys
from .durability import Durability
from .environments import POOL, EnvironmentPool, StoreMissing
from .errors import StoreFormatError
from .generations import store_exists, store_file_bytes
from .records import Record, RecordKind, decode_record, decode_view, encode_record

STORE_FORMAT = 1
T = TypeVar("T")
_TOMBSTONE = RecordKind.TOMBSTONE
_LAST = b'\xff' * keys.SEQUENCE_SIZE


@dataclass(frozen=True)
class StoreStats:
    path: str
    entries: int          # calls whose newest record holds a value
    versions: int         # every record, superseded ones and tombstones included
    tombstones: int       # calls whose newest record is a deletion
    live_bytes: int       # bytes of the newest value records
    file_bytes: int       # size of the data files on disk (every generation present)
    unreadable: int = 0   # calls whose newest record has a newer format than this version reads


def _newest(txn: "lmdb.Transaction", prefix: bytes) -> Optional[Tuple[bytes, bytes]]:
    cursor = txn.cursor()
    found = cursor.set_range(keys.after_last_version(prefix)) and cursor.prev()
    if not found:
        found = cursor.last()
    if found:
        key = cursor.key()
        if key[:keys.PREFIX_SIZE] == prefix:
            return key, cursor.value()
    return None


class Store:
    """Records of one leaf folder. Cheap to construct; the environment opens on first use."""

    def __init__(self, path: str, durability: Durability = Durability.STANDARD,
                 pool: EnvironmentPool = POOL) -> None:
        self.path = os.path.abspath(path)
        self.durability = Durability.parse(durability)
        self._pool = pool
        self._created = False

    def exists(self) -> bool:
        """Whether the store has been created on disk (lookups never create it)."""
        if not self._created:
            self._created = store_exists(self.path)
        return self._created

    # --- reading --------------------------------------------------------------------------
    def latest(self, bucket: int, digest: bytes) -> Optional[Record]:
        """The newest value record of a call, or None if absent or deleted."""
        found = self._find_newest(bucket, digest)
        if found is None:
            return None
        key, data = found
        record = decode_record(data, keys.sequence_of(key))
        return None if record.kind is _TOMBSTONE else record

    def load_latest(self, bucket: int, digest: bytes, load: Callable[[Record], T]
                    ) -> Optional[Tuple[Record, T]]:
        """``(newest value record, load(record))`` of a call, or None if absent or deleted.

        A large value is handed to ``load`` as a view of the store's memory map, inside the
        read transaction, and never copied (``load`` must not keep the view: ``pickle.loads``
        copies what it needs); the returned record's ``value_blob`` is then empty.
        """
        def in_place(key: bytes, view) -> Tuple[Record, Any]:
            record = decode_view(view, keys.sequence_of(key))
            if record.kind is _TOMBSTONE:
                return record, None
            return record._replace(value_blob=b""), load(record)

        found = self._find_newest(bucket, digest, in_place)
        if found is None:
            return None
        key, data = found
        if isinstance(data, tuple):  # a large value, loaded in place
            record, loaded = data
            return None if record.kind is _TOMBSTONE else (record, loaded)
        record = decode_record(data, keys.sequence_of(key))
        return None if record.kind is _TOMBSTONE else (record, load(record))

    def _find_newest(self, bucket: int, digest: bytes, large=None):
        """``(key, value)`` of the call's newest record (see ``EnvironmentPool.newest``)."""
        if not self.exists():
            return None
        prefix = keys.record_prefix(bucket, digest)
        try:
            return self._pool.newest(self.path, self.durability, prefix, prefix + _LAST,
                                     large=large)
        except StoreMissing:
            self._created = False
            return None

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
                cursor = txn.cursor()
                previous_prefix, previous = None, None
                for key, value in cursor.iternext(keys=True, values=True):
                    if not keys.is_record_key(key):
                        continue
                    tally["versions"] += 1
                    prefix = key[:keys.PREFIX_SIZE]
                    if prefix != previous_prefix and previous is not None:
                        _tally(previous, tally)
                    previous_prefix, previous = prefix, value
                if previous is not None:
                    _tally(previous, tally)
            self._read(count, None)
        if not tally:
            tally.update(entries=0, versions=0, tombstones=0, live_bytes=0, unreadable=0)
        return StoreStats(self.path, tally["entries"], tally["versions"], tally["tombstones"],
                          tally["live_bytes"], store_file_bytes(self.path), tally["unreadable"])

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

    # --- writing --------------------------------------------------------------------------
    def append(self, bucket: int, digest: bytes, record: Record,
               meta: Optional[dict] = None) -> int:
        """Append ``record`` as the newest version of (bucket, digest); return its sequence.

        ``meta`` is written once, with the store's first record, for maintenance tools.
        """
        prefix = keys.record_prefix(bucket, digest)
        payload = encode_record(record)

        def put(txn):
            if meta is not None and txn.get(keys.META_KEY) is None:
                document = {"store_format": STORE_FORMAT, "created": time.time(), **meta}
                txn.put(keys.META_KEY, json.dumps(document, sort_keys=True).encode("utf-8"))
            newest = _newest(txn, prefix)
            if newest is not None:
                sequence = keys.sequence_of(newest[0]) + 1
            else:
                first = txn.get(keys.FIRST_SEQUENCE_KEY)
                sequence = keys.decode_sequence(first) if first is not None else 0
            txn.put(keys.record_key(prefix, sequence), payload)
            return sequence

        sequence = self._pool.write(self.path, self.durability, put)
        self._created = True
        return sequence

    def delete(self, bucket: int, digest: bytes) -> bool:
        """Append a tombstone if the call has a live value; return whether it had one."""
        if self.latest(bucket, digest) is None:
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
        return self._pool.write(self.path, self.durability, _drop_all)

    def compact(self, policy=None, *, dry_run: bool = False, progress=None):
        """Rebuild the store without superseded versions, tombstones and what ``policy``
        expires; see :func:`compaction.compact`."""
        from .compaction import compact
        return compact(self.path, policy, dry_run=dry_run, progress=progress,
                       durability=self.durability, pool=self._pool)

    def close(self) -> None:
        self._pool.close(self.path)


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
    previous_prefix, previous = None, None
    while True:
        key = cursor.key()
        if keys.is_record_key(key):
            next_sequence = max(next_sequence, keys.sequence_of(key) + 1)
            prefix = key[:keys.PREFIX_SIZE]
            if prefix != previous_prefix and previous is not None:
                _tally(previous, tally)
            previous_prefix, previous = prefix, cursor.value()
            if not cursor.delete():  # delete moves to the next item; False at the end
                break
        elif not cursor.next():
            break
    if previous is not None:
        _tally(previous, tally)
    txn.put(keys.FIRST_SEQUENCE_KEY, keys.encode_sequence(next_sequence))
    return tally["entries"]


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
    """Up to ``_SCAN_BATCH`` newest records from ``start``; return them and the next start."""
    batch = []
    cursor = txn.cursor()
    if not cursor.set_range(start):
        return batch, None
    pending = None  # (prefix, key, value) of the newest version seen so far
    while True:
        key = cursor.key()
        if key >= stop:
            break
        if keys.is_record_key(key):
            prefix = key[:keys.PREFIX_SIZE]
            if pending is not None and pending[0] != prefix:
                _emit(batch, pending, with_values)
                if len(batch) >= _SCAN_BATCH:
                    return batch, prefix
            pending = (prefix, key, cursor.value())
        if not cursor.next():
            break
    if pending is not None:
        _emit(batch, pending, with_values)
    return batch, None


def _emit(batch, pending, with_values: bool) -> None:
    _, key, value = pending
    bucket, digest, sequence = keys.split_key(key)
    try:
        record = decode_record(value, sequence, with_value=with_values)
    except StoreFormatError:
        return  # a newer writer's record: not ours to interpret; maintenance tools report it
    if not record.is_tombstone:
        batch.append((bucket, digest, record))
