"""The storage interface: everything the API layer asks of a storage tier, and nothing more.

A *tier* (:class:`StorageTier`) opens a *store* (:class:`CallStore`) per leaf folder and
walks the stores under a folder. A store keeps versioned records of calls, each addressed by
``(bucket, digest)``: the API layer turns a call into those bytes (and a result into a value
written by a callback), the store never sees a Python function. The LMDB store of this
package (``engine/store.py``, opened by ``engine/local.py``) implements it; a tier shared
between machines implements the same methods.

Contract. A store is safe to use from several threads and processes at once; a process
forked while it used one reopens it in the child. Records are never rewritten: an append
makes the newest version of a call, a delete appends a tombstone, readers see the newest
version and never a partial one. ``open_store`` checks the folder before anything is done
in it (a local filesystem, trusted permissions, no foreign files), so a bad folder fails
before the function computes. Methods raise only :class:`~.errors.EngineError` subclasses
(``DamagedRecordError`` for a record that fails its checksum, ``StoreFormatError`` for one a
newer version wrote, ``StorageIOError`` for a failed read or write, naming its cause), and
reading never creates anything on disk. ``compute_lock`` hands out the store's own lock for
computing one call (a lease, on a shared tier): calls that share it never compute twice, and
a nested call never waits for a lock its own process or an ancestor holds.
"""

from typing import (Any, BinaryIO, Callable, Dict, Iterator, Optional, Protocol, Tuple, TypeVar,
                    runtime_checkable)

from .durability import Durability
from .locks import LockScope
from .records import CodeVersionStats, Record

T = TypeVar("T")


@runtime_checkable
class ComputeLock(Protocol):
    """The lock of one call's computation (see :func:`~.locks.compute_lock`)."""

    path: str

    def acquire(self) -> Optional[str]:
        """Take the lock; None, or why the caller may compute without it (a nested call that
        must not wait). Raises :class:`~.locks.Timeout` after the lock's timeout."""

    def release(self) -> None:
        """Give the lock back (a no-op if it was not taken)."""


@runtime_checkable
class CallStore(Protocol):
    """The records of one leaf. Cheap to hold; nothing is opened until first used."""

    path: str

    def exists(self) -> bool:
        """Whether the store has been created (lookups never create it)."""

    def latest(self, bucket: int, digest: bytes, with_value: bool = True) -> Optional[Record]:
        """The newest value record of a call, or None if absent or deleted; with
        ``with_value=False`` only its header is read and checked."""

    def load_latest(self, bucket: int, digest: bytes, load: Callable[[Record], T]
                    ) -> Optional[Tuple[Record, T]]:
        """``(record, load(record))`` of the call's newest value record, checksum verified
        first; a large value is handed to ``load`` in place and never copied."""

    def append_value(self, bucket: int, digest: bytes, write_value: Callable[[BinaryIO], str],
                     *, created: float, compute_seconds: float, python_version: str,
                     key_blob: bytes, meta: Optional[dict] = None, origin: str = "",
                     replace: bool = False, code: str = "") -> int:
        """Append a value record whose value ``write_value(file)`` writes (returning the
        serializer's name); return its sequence. ``meta`` is written with the first record.
        ``replace``: the result replaces the one a shared tier holds for the call (RECACHE)
        instead of yielding to it (first writer wins); a local store has nothing to replace.
        ``code``: the code version that computed the result (``Record.code``: ASCII, opaque to
        the storage; "" when unknown), kept with the record and by a shared tier's copy, so
        that ``code_versions`` and ``CompactionPolicy.keep_fingerprint`` tell them apart."""

    def append(self, bucket: int, digest: bytes, record: Record,
               meta: Optional[dict] = None) -> int:
        """Append a whole record (imports, tombstones); return its sequence."""

    def append_if_absent(self, bucket: int, digest: bytes, record: Record,
                         meta: Optional[dict] = None) -> bool:
        """Append ``record`` only if the call has no live value: the conditional create a
        shared tier's first-writer-wins rests on. Return whether it was appended."""

    def delete(self, bucket: int, digest: bytes) -> bool:
        """Append a tombstone if the call has a live value; return whether it had one."""

    def scan(self, bucket: Optional[int] = None, with_values: bool = True
             ) -> Iterator[Tuple[int, bytes, Record]]:
        """``(bucket, digest, newest record)`` of every live call, in key order."""

    def stats(self) -> Any:
        """Entries, versions, tombstones and bytes (:class:`~.store.StoreStats`)."""

    def code_versions(self) -> Dict[str, CodeVersionStats]:
        """Per code version (``Record.code``; ``""``: unknown code), how many value records
        the store holds, superseded versions included, and when the newest was written. On a
        tiered storage, this machine's records only."""

    def clear(self) -> int:
        """Remove every record; return how many calls were live."""

    def read_meta(self) -> dict:
        """The store's description, written with its first record ({} before)."""

    def compute_lock(self, bucket: int, digest: bytes, scope: LockScope,
                     timeout: Optional[float] = None) -> ComputeLock:
        """The lock a miss of this call takes while it computes, for ``scope``."""


@runtime_checkable
class StorageTier(Protocol):
    """Where stores live: opens them, and walks them."""

    def open_store(self, leaf: str, durability: Durability = Durability.STANDARD, *,
                   lock_root: Optional[str] = None, meta: Optional[dict] = None) -> CallStore:
        """The store of the leaf folder ``leaf``, checked (see the module docstring) but not
        created; ``lock_root`` is the folder whose lock serialises the ``global`` scope (and,
        on a shared tier, the folder the leaf's remote name is relative to); ``meta`` is the
        store's description, written with its first record when an append brings none."""

    def find_stores(self, root: str) -> Iterator[str]:
        """Every leaf under ``root`` (itself included) that holds a store, in sorted order,
        including leaves below a folder that is itself a store."""

    def clear_tree(self, root: str, *, lock_root: Optional[str] = None) -> int:
        """Remove every result under ``root`` (itself included), on every tier the storage
        has (a shared tier's leaves this machine never opened included); return how many
        calls were live."""
