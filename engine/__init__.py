"""The storage engine: records of cached calls in LMDB environments, one per leaf folder.

It knows leaf folders, buckets, digests, records, durability and lock scopes, and nothing about
Python functions; it never imports the API layer. Its surface for that layer is the storage
interface (``interface.py``: :class:`StorageTier`, :class:`CallStore`), implemented here by
:class:`LocalStorage` and :class:`Store`, configured by one :class:`EngineSettings`.
"""

from . import trust, verification
from .compaction import (CompactionFailedError, CompactionPolicy, CompactionReport, NoStoreError,
                         compact)
from .durability import Durability
from .errors import (
    CorruptStoreError,
    EngineError,
    ForeignFolderError,
    PersistError,
    StorageIOError,
    StoragePermissionError,
    StoreFormatError,
    UnsafeFilesystemError,
    UntrustedFolderError,
)
from .filesystem import ensure_local_filesystem, make_private_dirs
from .generations import (FREE_NAME_MARK, check_folder, find_stores, is_internal_name,
                          is_store_folder, store_exists, store_file_bytes)
from .interface import CallStore, ComputeLock, StorageTier
from .keys import DIGEST_SIZE, MAX_BUCKET
from .local import LocalStorage
from .locks import LockScope, Timeout, compute_lock, lock_place, scope_lock
from .pool import POOL, EnvironmentPool
from .records import CodeVersionStats, DamagedRecordError, Record, RecordKind
from .settings import EngineSettings, Wording
from .sharing import Sharing
from .store import Store, StoreStats
from .trust import TrustPolicy, check_trusted
from .verification import StoreVerification, verify_store

__all__ = [
    "CallStore", "CodeVersionStats", "CompactionFailedError", "CompactionPolicy",
    "CompactionReport", "ComputeLock",
    "CorruptStoreError", "DIGEST_SIZE", "DamagedRecordError", "Durability", "EngineError",
    "EngineSettings", "EnvironmentPool", "FREE_NAME_MARK", "ForeignFolderError", "LocalStorage",
    "LockScope", "MAX_BUCKET", "NoStoreError", "POOL", "PersistError", "Record", "RecordKind",
    "Sharing", "StorageIOError", "StoragePermissionError", "StorageTier", "Store",
    "StoreFormatError", "StoreStats", "StoreVerification", "Timeout", "TrustPolicy",
    "UnsafeFilesystemError", "UntrustedFolderError", "Wording", "check_folder", "check_trusted",
    "compact", "compute_lock", "ensure_local_filesystem", "find_stores", "is_internal_name",
    "is_store_folder", "lock_place", "make_private_dirs", "scope_lock", "store_exists",
    "store_file_bytes", "trust", "verification", "verify_store",
]
