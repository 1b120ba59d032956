"""The storage engine: records of cached calls in LMDB environments, one per leaf folder.

It knows leaf folders, buckets, digests, records, durability and lock scopes, and nothing about
Python functions; it never imports the API layer. Its surface for that layer is the storage
interface (``interface.py``: :class:`StorageTier`, :class:`CallStore`), implemented here by
:class:`LocalStorage` and :class:`Store`, configured by one :class:`EngineSettings`.
"""

from . import lazy_imports, trust
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

# Compaction and verification load when first used (PEP 562; see ``lazy_imports.py``: a call
# never needs them, and compaction brings filelock, ~17 ms of import).
_LAZY = {
    "compaction": ("compaction", None),
    "CompactionFailedError": ("compaction", "CompactionFailedError"),
    "CompactionPolicy": ("compaction", "CompactionPolicy"),
    "CompactionReport": ("compaction", "CompactionReport"),
    "NoStoreError": ("compaction", "NoStoreError"),
    "compact": ("compaction", "compact"),
    "verification": ("verification", None),
    "StoreVerification": ("verification", "StoreVerification"),
    "verify_store": ("verification", "verify_store"),
}


def __getattr__(name: str):
    """The lazily loaded names of :data:`_LAZY` (PEP 562)."""
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module = lazy_imports.load(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


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
