"""Open LMDB environments: one per leaf folder per process, a bounded number at a time.

Facts this module is built around (see DESIGN.md):

* Opening an environment costs ~100 µs and the same one may not be opened twice in a process,
  so handles are kept open and shared by every caller in the process.
* Each open environment maps address space and holds 3 file descriptors, so at most
  ``max_open`` stay open; the least recently used idle one is closed to make room.
* An environment must not be used across ``fork()``. Before a fork we wait until no
  transaction is running (every handle's lock is taken), and the child closes what it
  inherited, then reopens lazily. Transactions are never kept open between calls.
* ``map_size`` is address space, not disk. A full map is grown and the transaction retried;
  a map grown by another process is adopted with ``set_mapsize(0)``.
"""

import glob
import itertools
import os
import threading
import time
from typing import Callable, Dict, Optional, TypeVar

import lmdb

from .durability import Durability
from .errors import CorruptStoreError, ForeignFolderError
from .filesystem import ensure_local_filesystem, make_private_dirs

T = TypeVar("T")

INITIAL_MAP_SIZE = 1 << 30  # 1 GiB of address space; grows by doubling when full
DEFAULT_MAX_OPEN = 64
MAX_READERS = 1024  # concurrent read transactions across all processes of one store
DATA_FILE = "data.mdb"
RECHECK_SECONDS = 1.0  # how often a reader checks that its store was not deleted or replaced


class StoreMissing(Exception):
    """Internal: the store was deleted (e.g. its folder removed) while this process had it open."""


class _Handle:
    """An open environment plus the lock that keeps closing, growing and forking away from
    running transactions.

    It remembers the identity (device, inode) of its data file: a folder deleted or replaced
    under an open environment would otherwise swallow every later write into an unlinked file.
    """

    __slots__ = ("path", "env", "lock", "last_used", "durability", "identity", "checked_at")

    def __init__(self, path: str, env: "lmdb.Environment", durability: Durability) -> None:
        self.path = path
        self.env: Optional[lmdb.Environment] = env
        self.lock = threading.Lock()
        self.last_used = 0
        self.durability = durability
        self.identity = _file_identity(path)
        self.checked_at = time.monotonic()

    def is_current(self) -> bool:
        """Whether the data file on disk is still the one this environment has open."""
        self.checked_at = time.monotonic()
        return _file_identity(self.path) == self.identity


def _file_identity(path: str):
    try:
        info = os.stat(os.path.join(path, DATA_FILE))
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def store_exists(path: str) -> bool:
    return os.path.isfile(os.path.join(path, DATA_FILE))


def check_folder(path: str) -> None:
    """Refuse a path that is a file, or a folder of 0.0.7 `.pkl` buckets, before using it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ForeignFolderError(
            f"{path} should be a cache folder but is a file. Move it away or choose another "
            "persist_path."
        )
    if not store_exists(path) and glob.glob(os.path.join(glob.escape(path), "*.pkl")):
        raise ForeignFolderError(
            f"{path} holds .pkl bucket files of persist-to-disk 0.0.7, not a store of this "
            "version. Nothing was changed. Move that folder aside (or import it with "
            "`ptd import-pkl` once available), or use another persist_path."
        )


def _read_only_filesystem(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _open_environment(path: str, durability: Durability) -> "lmdb.Environment":
    check_folder(path)
    ensure_local_filesystem(path)
    if os.path.isdir(path) and _read_only_filesystem(path):
        # LMDB's lock file cannot be written here, so read without it, as LMDB itself does on a
        # read-only filesystem (MDB_ROFS); every write fails and is reported. Safe as long as no
        # process writes the same store through another, writable mount at the same time.
        options = {"readonly": True, "lock": False}
    else:
        make_private_dirs(path)
        options = {"readonly": False, "lock": True, "create": True, "mode": 0o600,
                   **durability.lmdb_flags}
    try:
        env = lmdb.open(
            path,
            map_size=INITIAL_MAP_SIZE,
            subdir=True,
            readahead=False,
            meminit=False,
            max_readers=MAX_READERS,
            max_spare_txns=0,
            **options,
        )
    except (lmdb.InvalidError, lmdb.CorruptedError, lmdb.VersionMismatchError,
            lmdb.InvalidParameterError) as err:
        raise CorruptStoreError(
            f"The cache store in {path} cannot be opened ({err}). It is not a valid LMDB "
            "environment of a compatible version. Nothing was deleted: move the folder aside "
            "to start that cache afresh, or run `ptd verify` to inspect it."
        ) from err
    except lmdb.Error as err:
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise PermissionError(
                f"Cannot open the cache store in {path}: permission denied ({err}). Give your "
                "user read and write access to it, or point persist_path elsewhere."
            ) from err
        raise
    if not options["readonly"]:
        env.reader_check()  # free read slots left behind by killed processes
    _check_length(path, env)
    return env


def _check_length(path: str, env: "lmdb.Environment") -> None:
    """Refuse a data file shorter than its own meta page says: reading the missing pages
    through the memory map would kill the process with SIGBUS instead of raising."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    actual = os.path.getsize(os.path.join(path, DATA_FILE))
    if actual < needed:
        env.close()
        raise CorruptStoreError(
            f"The cache store in {path} is truncated: {DATA_FILE} has {actual} bytes but its "
            f"records need {needed}. Nothing was deleted: move the folder aside to start that "
            "cache afresh, or run `ptd verify` to inspect it.")


class EnvironmentPool:
    """The process-wide registry of open environments."""

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN) -> None:
        self.max_open = max_open
        self._handles: Dict[str, _Handle] = {}
        self._lock = threading.Lock()
        self._clock = itertools.count(1)
        self._held_for_fork: list = []

    # --- using an environment -------------------------------------------------------------
    def read(self, path: str, durability: Durability,
             action: Callable[["lmdb.Transaction"], T]) -> T:
        """Run ``action`` in one short read transaction (no file lock, never blocks writers)."""
        handle = self._checkout(path, durability, write=False)
        try:
            env = handle.env
            try:
                txn = env.begin(write=False)
            except lmdb.MapResizedError:
                env.set_mapsize(0)  # another process grew the map: adopt its size
                txn = env.begin(write=False)
            try:
                return action(txn)
            finally:
                txn.abort()
        finally:
            handle.lock.release()

    def write(self, path: str, durability: Durability,
              action: Callable[["lmdb.Transaction"], T]) -> T:
        """Run ``action`` in one write transaction, growing the map and retrying when full."""
        handle = self._checkout(path, durability, write=True)
        try:
            env = handle.env
            while True:
                try:
                    with env.begin(write=True) as txn:
                        return action(txn)
                except lmdb.MapResizedError:
                    env.set_mapsize(0)
                except lmdb.MapFullError:
                    env.set_mapsize(env.info()["map_size"] * 2)
        finally:
            handle.lock.release()

    def _checkout(self, path: str, durability: Durability, write: bool) -> _Handle:
        """Return the open handle of ``path`` with its lock held.

        A handle whose data file was deleted or replaced, or that was opened with another
        durability, is closed and the store reopened (writes check every time, reads at most
        every ``RECHECK_SECONDS``). A read of a store that no longer exists raises
        :class:`StoreMissing`; a write creates it again.
        """
        while True:
            handle = self._handles.get(path)
            if handle is None:
                if not write and not store_exists(path):
                    raise StoreMissing(path)
                handle = self._open(path, durability)
            handle.lock.acquire()
            if handle.env is not None:
                stale = handle.durability is not durability or (
                    (write or time.monotonic() - handle.checked_at > RECHECK_SECONDS)
                    and not handle.is_current())
                if not stale:
                    handle.last_used = next(self._clock)
                    return handle
                self._retire(handle)
            handle.lock.release()  # closed (evicted, stale) since lookup: look again

    def _retire(self, handle: _Handle) -> None:
        """Close a handle whose lock the caller holds, then unregister it.

        Takes no pool lock (the pool lock is always taken before handle locks, never after).
        Popping is safe without it: ``_open`` only adds a handle for a path that has none, and
        this one stays registered until popped here.
        """
        handle.env.close()
        handle.env = None
        if self._handles.get(handle.path) is handle:
            self._handles.pop(handle.path, None)

    def _open(self, path: str, durability: Durability) -> _Handle:
        with self._lock:
            handle = self._handles.get(path)
            if handle is not None:
                return handle
            if len(self._handles) >= self.max_open:
                self._evict_idle()
            handle = _Handle(path, _open_environment(path, durability), durability)
            self._handles[path] = handle
            return handle

    def _evict_idle(self) -> None:
        """Close the least recently used handles that no transaction is using."""
        excess = len(self._handles) - self.max_open + 1
        for handle in sorted(self._handles.values(), key=lambda h: h.last_used):
            if excess <= 0:
                break
            if handle.lock.acquire(blocking=False):
                try:
                    self._close_handle(handle)
                finally:
                    handle.lock.release()
                excess -= 1

    def _close_handle(self, handle: _Handle) -> None:
        self._handles.pop(handle.path, None)
        if handle.env is not None:
            handle.env.close()
            handle.env = None

    # --- lifecycle ------------------------------------------------------------------------
    def close(self, path: str) -> None:
        with self._lock:
            handle = self._handles.get(path)
            if handle is None:
                return
            with handle.lock:
                self._close_handle(handle)

    def close_all(self) -> None:
        with self._lock:
            for handle in list(self._handles.values()):
                with handle.lock:
                    self._close_handle(handle)

    def open_paths(self):
        return list(self._handles)

    def _before_fork(self) -> None:
        """Wait until no transaction runs: take the pool lock, then every handle's lock.

        The handles are snapshotted first: a handle retired meanwhile (``_retire`` pops it
        without the pool lock) must neither break the iteration nor be released twice.
        """
        self._lock.acquire()
        held = []
        try:
            for handle in list(self._handles.values()):
                handle.lock.acquire()
                held.append(handle)
        finally:
            self._held_for_fork = held

    def _after_fork_in_parent(self) -> None:
        try:
            for handle in self._held_for_fork:
                handle.lock.release()
        finally:
            self._held_for_fork = []
            self._lock.release()

    def _after_fork_in_child(self) -> None:
        """The child must not use what it inherited: close it (no transaction is running,
        _before_fork made sure) and start with an empty registry."""
        for handle in self._handles.values():
            try:
                if handle.env is not None:
                    handle.env.close()
            except lmdb.Error:
                pass
            handle.env = None
        self._handles = {}
        self._held_for_fork = []
        self._lock = threading.Lock()


POOL = EnvironmentPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=POOL._before_fork,
        after_in_parent=POOL._after_fork_in_parent,
        after_in_child=POOL._after_fork_in_child,
    )
