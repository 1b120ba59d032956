"""Errors raised by the storage engine.

Each message names the folder it is about and says what the user can do, because the person
reading it is usually looking at a failed pipeline, not at this code.

:class:`PersistError` is the root of every error the library raises on purpose, the engine's and
the API layer's alike, so that users catch all of them with one ``except ptd.PersistError``. It
is defined here, not in the API layer, because the engine never imports that layer;
``persist_to_disk.errors`` re-exports it as the base of its own errors. Secondary bases
(``OSError``, ``TypeError``, ...) stay, so ``except OSError`` clauses written before keep working.
"""

import errno as _errno
import os
from typing import Optional

import lmdb

from .settings import sentence, wording


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


class StorageIOError(EngineError, OSError):
    """Reading or writing a store failed for a reason outside it: a full disk, a used-up quota,
    permissions, a read-only filesystem, too many open files. ``errno`` is the cause's
    (``ENOSPC`` for a map LMDB could not grow), ``path`` the store's folder; the message names
    both and the cause. An ``OSError``, so ``except OSError`` written before keeps working,
    and an :class:`EngineError`, so that nothing above the engine needs to know LMDB's own
    exceptions. Damage is not this: it stays :class:`CorruptStoreError`."""

    def __init__(self, message: str, *, errno=None, path: str = "") -> None:
        super().__init__(message)
        # Set as attributes, not as OSError's (errno, strerror, filename) arguments: those
        # would make ``str()`` print "[Errno 28] ..." instead of the message.
        self.errno = errno
        self.path = path


class StoragePermissionError(StorageIOError, PermissionError):
    """:class:`StorageIOError` for a store this user may not read or write (``EACCES``,
    ``EPERM``): still a ``PermissionError``, as the failure it wraps was."""


#: System errors py-lmdb reports only as text (``"<path>: No space left on device"``).
_TEXT_ERRNOS = (_errno.EMFILE, _errno.ENFILE, _errno.ENOSPC, _errno.EDQUOT, _errno.EACCES,
                _errno.EPERM, _errno.EROFS, _errno.EIO, _errno.ENOMEM)


def error_number(err: BaseException) -> Optional[int]:
    """The ``errno`` behind an ``OSError``, or behind an ``lmdb.Error`` (py-lmdb puts only the
    system's message in it: ``"<path>: Too many open files"``); ``ENOSPC`` for a map LMDB
    could not grow (``MapFullError``: only a full disk stops it growing)."""
    if isinstance(err, OSError):
        return err.errno
    if isinstance(err, lmdb.MapFullError):
        return _errno.ENOSPC
    if isinstance(err, lmdb.Error):
        text = str(err)
        for code in _TEXT_ERRNOS:
            if text.endswith(os.strerror(code)):
                return code
    return None


def storage_io_error(path: str, err: BaseException, doing: str) -> StorageIOError:
    """The :class:`StorageIOError` for ``err`` (an ``lmdb.Error`` or ``OSError`` that is not
    already an engine error) raised while ``doing`` (``"read"``, ``"write to"``) the store in
    ``path``: one wording for every method of the store."""
    code = error_number(err)
    cause = f"{type(err).__name__}: {err}" if isinstance(err, lmdb.Error) else str(err)
    what = f"the disk is full ({cause})" if isinstance(err, lmdb.MapFullError) else cause
    kind = (StoragePermissionError if code in (_errno.EACCES, _errno.EPERM)
            or isinstance(err, PermissionError) else StorageIOError)
    return kind(f"Could not {doing} the cache store in {path}: {what.rstrip('.')}.", errno=code,
                path=path)


#: What LMDB raises when the pages it walks are not what it wrote: a damaged data file. (On
#: some garbage LMDB reads out of bounds instead and the process dies: ``ptd verify`` checks a
#: store's structure without LMDB for that reason.)
_LMDB_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadValsizeError,
                lmdb.PanicError, lmdb.IncompatibleError, lmdb.CursorFullError,
                lmdb.PageFullError, lmdb.ProblemError, lmdb.BadChecksumError)


def damaged_store_error(path: str, err: BaseException) -> CorruptStoreError:
    """The error for a store whose pages LMDB cannot read."""
    return CorruptStoreError(
        f"The cache store in {path} is damaged: LMDB reports {type(err).__name__} ({err}). "
        f"Nothing was deleted. {sentence(wording().verify_command(path))} to see what is "
        "damaged, then move that folder aside to start the cache afresh (the decorator "
        "recreates it), or restore it from a backup.")


def engine_error(path: str, err: BaseException, doing: str) -> EngineError:
    """The engine error for an ``lmdb.Error`` or ``OSError`` (not already an engine error)
    that escaped while ``doing`` something to the store in ``path``: damage is
    :class:`CorruptStoreError`, anything else :class:`StorageIOError`."""
    if isinstance(err, _LMDB_DAMAGE):
        return damaged_store_error(path, err)
    return storage_io_error(path, err, doing)
