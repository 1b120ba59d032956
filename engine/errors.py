"""Errors raised by the storage engine.

Each message names the folder it is about and says what the user can do, because the person
reading it is usually looking at a failed pipeline, not at this code.

:class:`PersistError` is the root of every error the library raises on purpose, the engine's and
the API layer's alike, so that users catch all of them with one ``except ptd.PersistError``. It
is defined here, not in the API layer, because the engine never imports that layer;
``persist_to_disk.errors`` re-exports it as the base of its own errors. Secondary bases
(``OSError``, ``TypeError``, ...) stay, so ``except OSError`` clauses written before keep working.
"""


class PersistError(Exception):
    """Base class of every error persist_to_disk raises on purpose (engine and API layer)."""


class EngineError(PersistError):
    """Base class for every error the engine raises on purpose."""


class UnsafeFilesystemError(EngineError, OSError):
    """The cache folder is on a filesystem where LMDB cannot lock safely (NFS, Lustre, SMB, ...)."""


class CorruptStoreError(EngineError):
    """An LMDB environment exists but cannot be read. Nothing is deleted: the user decides."""


class ForeignFolderError(EngineError):
    """A folder where a store should be holds something else (for example 0.0.7 `.pkl` buckets)."""


class StoreFormatError(EngineError):
    """A store or record was written by a newer format version than this engine understands."""


class UntrustedFolderError(EngineError, OSError):
    """A cache folder or file that other users can write (or that another user owns) was not
    loaded: unpickling a cached result runs code, so whoever can write a cache can run code in
    the processes that read it. Not a ``PermissionError``: the API layer turns those into a
    warning and a recomputation without the cache, while a folder that may hold planted
    pickles must be reported and fixed, not silently worked around."""
