"""Compaction: rebuild a store without what it no longer needs, while other processes use it.

Records are never rewritten in place, so a store accumulates superseded versions (recomputed
calls) and tombstones (deleted calls), and LMDB files never shrink. Compaction writes the newest
record of every call that is kept into a new *generation* (``generations.py``), sorted, in
append mode (a sorted rebuild packs pages fully: it was 2.8x smaller than LMDB's own
compacting copy), and then switches every process over:

1. Under the leaf's maintenance lock (one compaction at a time), open a read snapshot of the
   generation in use and copy what is kept into ``gen-N+1``. Readers and writers go on in the
   old generation meanwhile.
   The snapshot is then closed; what it held is kept as the newest record key of every call
   (28 bytes a call) and the store's own documents.
2. Begin a write transaction on the old generation. LMDB serialises writers, so from here on
   nobody else writes. Copy the difference between the snapshot and this transaction (what was
   written, or cleared, during step 1) into the new generation, flush it to disk, then put the
   seal (the new generation's number) and commit. A writer waits at most for this step.
   Another process may have grown the map meanwhile: adopting that (``set_mapsize(0)``) remaps
   the file and would invalidate a snapshot still open, which is why none is.
3. Mark the new generation switched (``SWITCHED_KEY``: how the store finds it without
   ``CURRENT``), write ``CURRENT`` and delete the old generation. Processes that still have it
   open find the seal (writes: in their own transaction; reads: when they find nothing, and in
   their periodic check) and reopen the new one. Unlinked files stay readable to whoever still
   maps them.

A crash at any point loses nothing: before the seal the old generation is complete and in use
(the partial new one is deleted by the next compaction); after it the new one is complete and
the seal sends everyone there, even if ``CURRENT`` was not written yet. A generation is deleted
only when proven superseded (sealed) or proven never used (a rebuild that was never switched
to); anything else found beside the store is left alone.

This module decides what a rebuild keeps (the plan, over ``keys.newest_of_each_call``) and
drives the steps; the mechanics of generations (creating one, the seal, the switch mark,
``CURRENT``, removing old ones) are ``generations.py``'s, shared with opening a store.

Each compaction logs INFO lines on the ``persist_to_disk`` logger (the engine never prints):
when it starts, when the store switched generation, and what it dropped (or, in a dry run,
what it would drop).
"""

import contextlib
import errno
import logging
import math
import os
import shutil
import time
from array import array
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import lmdb
from filelock import FileLock

from . import keys
from . import trust
from .durability import Durability
from .environments import begin_transaction, file_identity, write_transaction
from .errors import EngineError, StoreFormatError, engine_error, error_number
from .generations import (BUILT_FROM_KEY, GENERATION_KEY, GENERATION_KEYS,
                          MAX_GENERATION_HOPS, SEAL_KEY, create_generation, encode_seal,
                          generation_folder, highest_folder, mark_switched, read_current,
                          remove_generation, remove_other_generations, seal, sealed_to,
                          store_exists, store_file_bytes, write_current)
from .pool import POOL, EnvironmentPool
from .records import RecordKind, decode_record
from .settings import wording

MAINTENANCE_LOCK = "maintenance.lock"
#: The library's logger (the API layer uses the same name); the engine never prints.
log = logging.getLogger("persist_to_disk")
_NOT_COPIED = GENERATION_KEYS  # each generation's own bookkeeping
_RECORD_KEY_SIZE = keys.PREFIX_SIZE + keys.SEQUENCE_SIZE
_BATCH_RECORDS = 20_000
_BATCH_BYTES = 64 << 20
_PAGE = 4096


class NoStoreError(EngineError, FileNotFoundError):
    """There is no cache store where one was named."""


class CompactionFailedError(EngineError):
    """A compaction could not finish (a full disk, an I/O error); the store is unchanged."""


@dataclass(frozen=True)
class CompactionPolicy:
    """What compaction drops besides superseded versions and deleted calls.

    ``older_than``: seconds; calls whose newest record was written longer ago are dropped.
    ``max_size``: bytes; the oldest calls are dropped until the records kept fit.
    ``keep_fingerprint``: a code fingerprint; calls whose newest record is a value written
    by code with another, known, fingerprint are dropped. A record's fingerprint is the part
    of its code (``Record.code``, the decorator's ``<fingerprint>|<version label>``) before
    the first ``|``: results of one code under several ``version=`` values (a version used
    to select a model, a dataset) are all kept, since a version label says which results a
    call wants, not which are stale. The tag is split here with ``str.partition`` rather than
    by the API layer's ``parse_code_tag``: the engine never imports the layer above, and the
    one character is the whole of the format it needs. Records of unknown code (``""``:
    written before code versions, under ``code_changes='ignore'``, or imported) are kept:
    nothing says they are stale.
    ``keep_fingerprint_as_of``: with ``keep_fingerprint``, the date of the newest record the
    caller saw when it decided: a record dated after that, by any code, is kept. Code that
    changed while the caller decided (a job started with new code meanwhile) thus never loses
    its results.
    """

    older_than: Optional[float] = None
    max_size: Optional[int] = None
    keep_fingerprint: Optional[str] = None
    keep_fingerprint_as_of: Optional[float] = None

    def __post_init__(self) -> None:
        if self.older_than is not None and not self.older_than >= 0:
            raise ValueError(f"older_than must be a number of seconds >= 0, got "
                             f"{self.older_than!r}")
        if self.max_size is not None and not self.max_size >= 0:
            raise ValueError(f"max_size must be a number of bytes >= 0, got {self.max_size!r}")
        if self.keep_fingerprint is not None and (
                not isinstance(self.keep_fingerprint, str) or not self.keep_fingerprint
                or "|" in self.keep_fingerprint):
            raise ValueError(
                f"keep_fingerprint must be a code fingerprint (the non-empty part of a "
                f"Record.code before '|'), got {self.keep_fingerprint!r}; records of unknown "
                f"code are always kept")
        if self.keep_fingerprint_as_of is not None and (
                self.keep_fingerprint is None or not self.keep_fingerprint_as_of >= 0):
            raise ValueError(
                f"keep_fingerprint_as_of must be a time >= 0 (seconds since the epoch) given "
                f"with keep_fingerprint, got {self.keep_fingerprint_as_of!r}")


@dataclass(frozen=True)
class CompactionReport:
    path: str
    dry_run: bool
    bytes_before: int       # data files of every generation present before
    bytes_after: int        # after the rebuild (an estimate when dry_run)
    kept: int               # calls kept (their newest record)
    kept_bytes: int         # bytes of the records kept (as StoreStats.live_bytes)
    superseded: int         # older versions of kept calls, dropped
    tombstones: int         # deleted calls, dropped with their versions
    expired: int            # calls dropped by ``older_than``
    evicted: int            # calls dropped by ``max_size``
    unreadable: int         # calls whose newest record has a newer format: kept untouched
    carried_over: int       # records written or cleared by others during the rebuild
    generation_before: int
    generation_after: int
    old_code: int = 0       # calls dropped by ``keep_fingerprint`` (written by other code)


# --- the decisions ------------------------------------------------------------------------
_KEEP, _UNREADABLE, _TOMBSTONE, _EXPIRED, _OLD_CODE = range(5)
_DROPPED = (_TOMBSTONE, _EXPIRED, _OLD_CODE)


def _calls(txn: "lmdb.Transaction") -> Iterator[Tuple[bytes, bytes, int]]:
    """Yield ``(newest key, newest value, versions)`` of every call, in key order, and
    ``(key, value, 0)`` for every other key (the store's own documents, or keys of a newer
    version: kept as they are). The seal and generation marker are not yielded."""
    for key, value, versions in keys.newest_of_each_call(txn.cursor()):
        if versions or key not in _NOT_COPIED:
            yield key, value, versions


def _decide(value: bytes, cutoff: Optional[float], keep_fingerprint: Optional[str],
            code_as_of: float) -> Tuple[int, float]:
    """``(decision, created)`` for a call by its newest record."""
    try:
        record = decode_record(value, with_value=False)
    except StoreFormatError:
        return _UNREADABLE, math.inf  # a newer writer's record: never ours to drop
    if record.kind is RecordKind.TOMBSTONE:
        return _TOMBSTONE, record.created
    if cutoff is not None and record.created < cutoff:
        return _EXPIRED, record.created
    if keep_fingerprint is not None and record.code and record.created <= code_as_of:
        fingerprint = record.code.partition("|")[0]  # see CompactionPolicy.keep_fingerprint
        if fingerprint and fingerprint != keep_fingerprint:
            return _OLD_CODE, record.created
    return _KEEP, record.created


def _stored_size(key: bytes, value: bytes) -> int:
    """Bytes a record takes in a packed rebuild (leaf node, or overflow pages when large)."""
    size = len(key) + len(value) + 10
    if size > _PAGE // 2:
        return math.ceil((len(value) + 16) / _PAGE) * _PAGE
    return size


class _Plan:
    """The first pass over the snapshot: what becomes of each call, and the counts.

    The second pass (the copy) walks the same snapshot in the same order and asks
    :meth:`keeps` per call; the per-call arrays cost ~30 bytes a call.
    """

    def __init__(self, txn: "lmdb.Transaction", policy: CompactionPolicy, now: float) -> None:
        self.cutoff = now - policy.older_than if policy.older_than is not None else None
        self.keep_fingerprint = policy.keep_fingerprint
        self.code_as_of = (policy.keep_fingerprint_as_of
                           if policy.keep_fingerprint_as_of is not None else math.inf)
        self.kept = self.kept_bytes = self.superseded = self.tombstones = 0
        self.expired = self.evicted = self.unreadable = self.old_code = 0
        self.estimate = 2 * _PAGE  # LMDB's two meta pages
        created, sizes, stored, versions_of = array("d"), array("Q"), array("Q"), array("Q")
        unreadable = bytearray()
        for key, value, versions in _calls(txn):
            if not versions:
                continue  # not a record: copied as it is
            decision, when = _decide(value, self.cutoff, self.keep_fingerprint, self.code_as_of)
            if decision == _TOMBSTONE:
                self.tombstones += 1
            elif decision == _EXPIRED:
                self.expired += 1
            elif decision == _OLD_CODE:
                self.old_code += 1
            else:
                created.append(when)
                sizes.append(len(value))  # as StoreStats.live_bytes counts them
                stored.append(_stored_size(key, value))
                versions_of.append(versions)
                unreadable.append(decision == _UNREADABLE)
        self._evicted = _evict(created, sizes, unreadable, policy.max_size)
        for index, gone in enumerate(self._evicted):
            if gone:
                self.evicted += 1
                continue
            if unreadable[index]:
                self.unreadable += 1
            else:
                self.kept += 1
            self.superseded += versions_of[index] - 1
            self.kept_bytes += sizes[index]
            self.estimate += stored[index]
        self.estimate = math.ceil(self.estimate * 1.02 / _PAGE) * _PAGE  # branch pages

    def kept_records(self, txn: "lmdb.Transaction"
                     ) -> Iterator[Tuple[bytes, bytes, int, bool]]:
        """Yield ``(key, value, versions examined, kept)`` of the newest record of each call
        (and ``(key, value, 0, True)`` of each of the store's own documents)."""
        candidate = 0
        for key, value, versions in _calls(txn):
            if not versions:
                yield key, value, 0, True
                continue
            decision, _ = _decide(value, self.cutoff, self.keep_fingerprint, self.code_as_of)
            if decision in _DROPPED:
                yield key, value, versions, False
                continue
            gone = self._evicted[candidate]
            candidate += 1
            yield key, value, versions, not gone


def _evict(created: array, sizes: array, unreadable: bytearray,
           max_size: Optional[int]) -> bytearray:
    """A flag per candidate call: 1 if it does not fit in ``max_size`` bytes, newest first.

    Unreadable records (a newer format) are never evicted: we cannot tell what they are.
    """
    evicted = bytearray(len(created))
    if max_size is None or sum(sizes) <= max_size:
        return evicted
    total = sum(size for size, other in zip(sizes, unreadable) if other)
    for index in sorted(range(len(created)), key=created.__getitem__, reverse=True):
        if unreadable[index]:
            continue
        total += sizes[index]
        if total > max_size:
            evicted[index] = 1
    return evicted


# --- the rebuild --------------------------------------------------------------------------
def compact(leaf: str, policy: Optional[CompactionPolicy] = None, *, dry_run: bool = False,
            progress: Optional[Callable[[int], None]] = None,
            durability: Durability = Durability.STANDARD,
            pool: EnvironmentPool = POOL) -> CompactionReport:
    """Rebuild the store in ``leaf`` into a new generation; see the module docstring.

    Safe while other processes read and write the store (and grow its map). ``progress`` is
    called with the number of records examined since its last call. ``dry_run`` only reports
    what would go. Raises only engine errors (a failed read or write that escapes the rebuild
    is :class:`~.errors.StorageIOError`, damage :class:`~.errors.CorruptStoreError`).
    """
    leaf = os.path.abspath(leaf)
    try:
        return _compact(leaf, policy, dry_run, progress, durability, pool)
    except EngineError:
        raise
    except (lmdb.Error, OSError) as err:
        raise engine_error(leaf, err, "compact") from err


def _compact(leaf: str, policy: Optional[CompactionPolicy], dry_run: bool,
             progress: Optional[Callable[[int], None]], durability: Durability,
             pool: EnvironmentPool) -> CompactionReport:
    policy = policy or CompactionPolicy()
    durability = Durability.parse(durability)
    if not store_exists(leaf):
        raise NoStoreError(f"There is no cache store in {leaf}. {wording().list_stores}.")
    if dry_run:
        with _current_handle(pool, leaf, durability) as handle:
            log.info("compaction of %s: dry run started (generation %d)", leaf,
                     handle.generation)
            bytes_before = store_file_bytes(leaf)
            with begin_transaction(handle.env) as snapshot:
                plan = _Plan(snapshot, policy, time.time())
            report = _report(leaf, True, bytes_before, plan.estimate, plan, 0,
                             handle.generation, handle.generation)
        _log_outcome(report)
        return report
    sharing = trust.current_policy().sharing
    with FileLock(os.path.join(leaf, MAINTENANCE_LOCK), mode=sharing.file_mode):
        with _current_handle(pool, leaf, durability) as handle:
            old = handle.generation
            new = max(old, highest_folder(leaf)) + 1  # numbers are never reused
            log.info("compaction of %s started: generation %d into %d%s", leaf, old, new,
                     _policy_text(policy))
            if read_current(leaf) < old:
                write_current(leaf, old, sharing.file_mode)  # a compactor died after sealing,
                # or CURRENT was deleted: name the generation in use before deleting any other
            remove_other_generations(leaf, old, durability)
            bytes_before = store_file_bytes(leaf)
            sealed = switched = False
            try:
                plan, carried, switched = _rebuild(handle, leaf, policy, old, new, progress)
                sealed = True
                handle.env.sync(True)  # the seal is on disk before CURRENT names the new one
                write_current(leaf, new, sharing.file_mode)
                log.info("compaction of %s: switched from generation %d to %d (%d records "
                         "written meanwhile carried over)", leaf, old, new, carried)
            finally:
                if sealed:
                    pool.retire(handle)  # this process, too, reopens at the new generation
        # Without the switch mark the old generation's seal is the proof of where the store
        # went, besides CURRENT: it is kept (the next compaction deletes it).
        if switched and _unchanged(leaf, handle):
            remove_generation(leaf, old)
    report = _report(leaf, False, bytes_before, store_file_bytes(leaf), plan, carried, old, new)
    _log_outcome(report)
    return report


def _policy_text(policy: CompactionPolicy) -> str:
    """What the policy drops besides superseded versions and tombstones, for the log."""
    parts = []
    if policy.older_than is not None:
        parts.append(f"older than {policy.older_than:g} s")
    if policy.max_size is not None:
        parts.append(f"over {policy.max_size} bytes")
    if policy.keep_fingerprint is not None:
        parts.append(f"of code other than fingerprint {policy.keep_fingerprint!r}")
    return f" (also dropping results {', '.join(parts)})" if parts else ""


def _log_outcome(report: CompactionReport) -> None:
    """One INFO line: what the compaction dropped (would drop, in a dry run) and kept."""
    dropped = ", ".join(f"{count} {label}" for count, label in (
        (report.superseded, "superseded versions"), (report.tombstones, "deleted calls"),
        (report.expired, "expired calls"), (report.evicted, "calls over the size budget"),
        (report.old_code, "calls of other code versions")) if count) or "nothing"
    log.info("compaction of %s%s: %s %s; kept %d calls (%d bytes of records)%s; files %d -> "
             "%s%d bytes", report.path, " (dry run)" if report.dry_run else "",
             "would drop" if report.dry_run else "dropped", dropped, report.kept,
             report.kept_bytes, f", {report.unreadable} of a newer format untouched"
             if report.unreadable else "", report.bytes_before,
             "~" if report.dry_run else "", report.bytes_after)


def _rebuild(handle, leaf: str, policy: CompactionPolicy, old: int, new: int,
             progress: Optional[Callable[[int], None]]) -> Tuple[_Plan, int, bool]:
    """Copy the store into generation ``new``, carry over what changed meanwhile and seal the
    old one: ``(plan, records carried over, marked switched)``.

    Raises only while the old generation is unsealed (complete and still in use), having
    removed the new one.
    """
    folder = generation_folder(leaf, new)
    plan: Optional[_Plan] = None
    target: Optional[lmdb.Environment] = None
    try:
        snapshot = begin_transaction(handle.env)
        try:
            plan = _Plan(snapshot, policy, time.time())
            target = create_generation(folder, handle.env.info()["map_size"])
            before = _copy(snapshot, target, plan, new, old, progress)
        finally:
            # Closed before anything writes to the store it read: a map grown by another
            # process meanwhile is adopted with set_mapsize(0), which would invalidate it.
            snapshot.abort()
        carried = _seal(handle.env, before, target, new, lambda: _unchanged(leaf, handle))
    except BaseException as err:
        if target is not None:
            target.close()
        if not sealed_to(handle.env, new):  # if it is, the new generation is the store now
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(err, (lmdb.Error, OSError)) and not isinstance(err, EngineError):
            raise CompactionFailedError(_failure_message(leaf, err, plan)) from err
        raise
    try:
        switched = mark_switched(target, new)
    finally:
        target.close()
    return plan, carried, switched


def _failure_message(leaf: str, err: BaseException, plan: Optional[_Plan]) -> str:
    """Why a compaction failed, naming its real cause (a full disk is one of several)."""
    code = error_number(err)
    unchanged = "Nothing was changed; the store is as it was."
    if code in (errno.ENOSPC, errno.EDQUOT):
        needed = f" (about {plan.estimate:,} bytes)" if plan is not None else ""
        return (f"Could not compact {leaf}: the disk is full ({err}). {unchanged} Compaction "
                f"needs free space beside the store for a copy of the records it keeps{needed}.")
    if code in (errno.EMFILE, errno.ENFILE):
        return (f"Could not compact {leaf}: too many open files ({err}). {unchanged} Raise the "
                "limit (`ulimit -n`) and run it again.")
    return f"Could not compact {leaf}: {type(err).__name__}: {err}. {unchanged}"


@contextlib.contextmanager
def _current_handle(pool: EnvironmentPool, leaf: str, durability: Durability):
    """The pool's handle of the generation in use, held exclusively.

    A handle this process opened before another compaction sealed it (and whose files that
    compaction did not delete yet, say because it was interrupted) must not be compacted: the
    records written since are in the newer generation. So a sealed handle, or one older than
    ``CURRENT``, is retired and the store opened again.
    """
    for _ in range(MAX_GENERATION_HOPS):
        with pool.exclusive(leaf, durability) as handle:
            with begin_transaction(handle.env) as txn:
                sealed = txn.get(SEAL_KEY) is not None
            if not sealed and read_current(leaf) <= handle.generation:
                yield handle
                return
            pool.retire(handle)
    raise EngineError(f"{leaf}: the store keeps changing generation; is another compaction "
                      f"looping? Stop it and {wording().verify_command(leaf)}.")


def _unchanged(leaf: str, handle) -> bool:
    """Whether the generation's files are still the ones ``handle`` opened (not deleted or
    replaced by hand while it was compacted)."""
    return file_identity(generation_folder(leaf, handle.generation)) == handle.identity


def _report(leaf: str, dry_run: bool, before: int, after: int, plan: _Plan, carried: int,
            old: int, new: int) -> CompactionReport:
    return CompactionReport(leaf, dry_run, before, after, plan.kept, plan.kept_bytes,
                            plan.superseded, plan.tombstones, plan.expired, plan.evicted,
                            plan.unreadable, carried, old, new, old_code=plan.old_code)


class _Snapshot:
    """What the copy read, kept once its read transaction is closed: the snapshot's
    transaction id, the newest record key of every call (packed, 28 bytes a call, in key
    order) and the store's own documents with their values."""

    __slots__ = ("txnid", "newest", "documents")

    def __init__(self, txnid: int) -> None:
        self.txnid = txnid
        self.newest = bytearray()
        self.documents: Dict[bytes, bytes] = {}

    def add(self, key: bytes, value: bytes, versions: int) -> None:
        if versions:
            self.newest += key
        else:
            self.documents[bytes(key)] = bytes(value)


def _copy(snapshot: "lmdb.Transaction", target: "lmdb.Environment", plan: _Plan,
          generation: int, source: int, progress: Optional[Callable[[int], None]]
          ) -> _Snapshot:
    """Append the kept records and the store's own documents, in key order; return what the
    snapshot held (for :func:`_differences`)."""
    before = _Snapshot(snapshot.id())
    batch: List[Tuple[bytes, bytes]] = []
    batch_bytes = examined = 0

    def flush() -> None:
        nonlocal batch, batch_bytes, examined
        if batch:
            items = batch
            write_transaction(target, lambda txn: txn.cursor().putmulti(items, append=True))
        if progress is not None and examined:
            progress(examined)
        batch, batch_bytes, examined = [], 0, 0

    for key, value, versions, kept in plan.kept_records(snapshot):
        before.add(key, value, versions)
        examined += versions
        if kept:
            batch.append((key, value))
            batch_bytes += len(value)
        if len(batch) >= _BATCH_RECORDS or batch_bytes >= _BATCH_BYTES:
            flush()
    flush()

    # Marks the environment as made by compaction: an empty one re-created at this path (by
    # LMDB opening a deleted generation) never has it, and is never used. Where it was built
    # from tells the next compaction whether an unswitched rebuild is an abandoned one.
    def mark(txn: "lmdb.Transaction") -> None:
        txn.put(GENERATION_KEY, encode_seal(generation))
        txn.put(BUILT_FROM_KEY, str(source).encode("ascii"))
    write_transaction(target, mark)
    return before


def _differences(before: _Snapshot, txn: "lmdb.Transaction"
                 ) -> Iterator[Tuple[bytes, Optional[bytes]]]:
    """``(key, new value or None if deleted)`` for every change since the snapshot ``before``
    that the new generation needs, in one walk of the keys of ``txn``.

    A record key is never written twice with different contents: records are appended under
    the call's newest sequence + 1, and ``Store.clear`` moves the first sequence past
    everything it deleted. So a call's records written since the snapshot are exactly its keys
    after its newest key then, and a call whose newest key then is gone was cleared (the new
    generation holds at most that key of it). Records are compared by key alone: the values of
    the whole store are never read while writers wait. The store's own documents are compared
    by value.
    """
    newest, size, prefix_size = before.newest, _RECORD_KEY_SIZE, keys.PREFIX_SIZE
    count = len(newest) // size
    index = 0
    prefix: Optional[bytes] = None  # the call being walked
    known: Optional[bytes] = None   # its newest key in the snapshot
    known_seen = False
    documents_seen = set()
    cursor = txn.cursor()
    for key in cursor.iternext(keys=True, values=False):
        if not keys.is_record_key(key):
            if key not in _NOT_COPIED:
                documents_seen.add(key)
                value = cursor.value()
                if before.documents.get(key) != value:
                    yield key, value
            continue
        if key[:prefix_size] != prefix:
            if known is not None and not known_seen:
                yield known, None
            prefix, known, known_seen = key[:prefix_size], None, False
            while index < count:
                candidate = bytes(newest[index * size:(index + 1) * size])
                if candidate[:prefix_size] > prefix:
                    break
                index += 1
                if candidate[:prefix_size] == prefix:
                    known = candidate
                    break
                yield candidate, None  # a call cleared since, nothing written after
        if known is None or key > known:
            yield key, cursor.value()
        elif key == known:
            known_seen = True
    if known is not None and not known_seen:
        yield known, None
    for position in range(index, count):
        yield bytes(newest[position * size:(position + 1) * size]), None
    for key in before.documents:
        if key not in documents_seen:
            yield key, None


def _seal(source: "lmdb.Environment", before: _Snapshot, target: "lmdb.Environment",
          generation: int, still_ours: Callable[[], bool]) -> int:
    """Carry over what changed since the snapshot ``before`` and seal ``source``; return the
    number of changes. No transaction of ``source`` is open here, so a map grown by another
    process is adopted (``begin_transaction``) and a full one grown, without harm (the whole
    step then runs again: ``write_transaction``)."""
    def carry_over_and_seal(txn: "lmdb.Transaction") -> int:  # from here on, writers wait
        if not still_ours():
            raise CompactionFailedError(
                f"{os.path.dirname(target.path())}: the store was deleted or replaced "
                "while it was being compacted. Nothing was switched; the new store "
                "there is left as it is.")
        if txn.get(SEAL_KEY) is not None:
            raise EngineError(
                f"{generation_folder(os.path.dirname(source.path()), generation)}: "
                "the store was sealed by another compaction running without the "
                "maintenance lock. Nothing was lost; run the compaction again.")
        changes = []
        if source.info()["last_txnid"] != before.txnid:
            changes = list(_differences(before, txn))
        if changes:
            write_transaction(target, lambda t: _apply(t, changes))
        target.sync(True)  # the new generation is on disk before anyone is sent there
        seal(txn, generation)
        return len(changes)

    return write_transaction(source, carry_over_and_seal)

def _apply(txn: "lmdb.Transaction", changes: List[Tuple[bytes, Optional[bytes]]]) -> None:
    for key, value in changes:
        if value is None:
            txn.delete(key)
        else:
            txn.put(key, value)
