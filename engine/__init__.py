"""The storage engine: records of cached calls in LMDB environments, one per leaf folder.

It knows leaf folders, buckets, digests, records, durability and lock scopes, and nothing about
Python functions; it never imports the API layer. Its surface is deliberately small so that
another backend can stand behind it later.
"""

from .compaction import (CompactionFailedError, CompactionPolicy, CompactionReport, NoStoreError,
                         compact)
from .durability import Durability
from .environments import POOL, EnvironmentPool, check_folder
from .errors import (
    CorruptStoreError,
    EngineError,
    ForeignFolderError,
    StoreFormatError,
    UnsafeFilesystemError,
    UntrustedFolderError,
)
from .filesystem import ensure_local_filesystem, make_private_dirs
from .generations import find_stores, is_store_folder, store_exists, store_file_bytes
from .keys import DIGEST_SIZE, MAX_BUCKET
from .locks import LockScope, Timeout, compute_lock, lock_place, scope_lock
from .records import Record, RecordKind
from .store import Store, StoreStats
from .trust import Sharing, TrustPolicy, check_trusted

__all__ = [
    "CompactionFailedError", "CompactionPolicy", "CompactionReport", "NoStoreError", "compact", "find_stores",
    "is_store_folder", "store_file_bytes",
    "DIGEST_SIZE", "MAX_BUCKET", "POOL", "CorruptStoreError", "Durability", "EngineError",
    "EnvironmentPool", "ForeignFolderError", "LockScope", "Record", "RecordKind", "Store",
    "Sharing", "StoreFormatError", "StoreStats", "Timeout", "TrustPolicy",
    "UnsafeFilesystemError", "UntrustedFolderError", "check_folder", "check_trusted",
    "compute_lock", "ensure_local_filesystem", "lock_place", "make_private_dirs", "scope_lock",
    "store_exists",
]
