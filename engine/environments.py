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
* A store may be rebuilt by compaction into a new generation (see ``generations.py``). Handles
  are registered by leaf folder and follow the switch: a write that finds the seal in its own
  transaction, and a read that finds nothing where a seal is, reopen the store at the
  generation in use and run again.
"""

import contextlib
import errno
import glob
import itertools
import os
import stat
import threading
import time
from typing import Callable, Dict, Iterator, Optional, Tuple, TypeVar

import lmdb

from .durability import Durability
from .errors import CorruptStoreError, ForeignFolderError
from . import trust
from .filesystem import ensure_local_filesystem, make_dirs
from .generations import (DATA_FILE, GENERATION_KEY, LOCK_FILE, SEAL_KEY, generation_folder,
                          parse_seal, read_current, store_exists)

T = TypeVar("T")

INITIAL_MAP_SIZE = 1 << 30  # 1 GiB of address space; grows by doubling when full
DEFAULT_MAX_OPEN = 64
MAX_READERS = 1024  # concurrent read transactions across all processes of one store
RECHECK_SECONDS = 1.0  # how often a reader checks that its store was not deleted or replaced


class StoreMissing(Exception):
    """Internal: the store was deleted (e.g. its folder removed) while this process had it open."""


class _Superseded(Exception):
    """Internal: the open generation was sealed by a compaction; reopen and run again."""


MAX_GENERATION_HOPS = 64  # following CURRENT and seals; more means something rewrites them


class _Handle:
    """An open environment plus the lock that keeps closing, growing and forking away from
    running transactions.

    It remembers the identity (device, inode) of its data file: a folder deleted or replaced
    under an open environment would otherwise swallow every later write into an unlinked file.
    """

    __slots__ = ("path", "folder", "generation", "env", "lock", "last_used", "durability",
                 "identity", "checked_at")

    def __init__(self, path: str, generation: int, env: "lmdb.Environment",
                 durability: Durability) -> None:
        self.path = path  # the leaf folder: what callers name
        self.generation = generation
        self.folder = generation_folder(path, generation)  # where the LMDB files are
        self.env: Optional[lmdb.Environment] = env
        self.lock = threading.Lock()
        self.last_used = 0
        self.durability = durability
        self.identity = _file_identity(self.folder)
        self.checked_at = time.monotonic()

    def is_current(self, generation_too: bool = True) -> bool:
        """Whether the files on disk are still the ones this environment has open, and (with
        ``generation_too``) no compaction has named a newer generation since.

        Writes check the files before every transaction (a write into a deleted data file would
        be lost; one beside a new lock file would not be serialised with other processes), but
        not the generation: they find a compaction's seal inside their own transaction.
        """
        self.checked_at = time.monotonic()
        if _file_identity(self.folder) != self.identity:
            return False
        if not generation_too:
            return True
        try:
            if read_current(self.path) > self.generation:
                return False
        except CorruptStoreError:
            return True  # reported when the store is next opened; this handle still works
        # Sealed by a compaction that has not (yet) named the new generation in CURRENT.
        with self.env.begin() as txn:
            return txn.get(SEAL_KEY) is None


def _identity_of(path: str):
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def _file_identity(folder: str):
    """(device, inode) of the data file and of the lock file. A lock file deleted under an
    open store would let the next process make a new one and write beside us unserialised,
    so a changed lock file makes the handle stale like a changed data file."""
    return (_identity_of(os.path.join(folder, DATA_FILE)),
            _identity_of(os.path.join(folder, LOCK_FILE)))


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


def open_generation(leaf: str, durability: Durability
                    ) -> Tuple["lmdb.Environment", int]:
    """Open the generation of ``leaf`` in use: ``(environment, generation)``.

    ``CURRENT`` names a generation; its environment is opened, then ``CURRENT`` is read again
    (a compaction may have switched and deleted the files meanwhile: generation numbers are
    never reused, so still being named means the real files were opened), and the environment
    is checked for a seal (a compactor that died before writing ``CURRENT``).
    """
    check_folder(leaf)
    ensure_local_filesystem(leaf)
    generation = read_current(leaf)
    for _ in range(MAX_GENERATION_HOPS):
        folder = generation_folder(leaf, generation)
        if generation and not os.path.isfile(os.path.join(folder, DATA_FILE)):
            newer = read_current(leaf)
            if newer > generation:
                generation = newer
                continue
            raise CorruptStoreError(
                f"The cache store in {leaf} names generation {generation}, but {folder} has no "
                f"{DATA_FILE}. Nothing was deleted: run `ptd verify {leaf}`, or move the folder "
                "aside to start that cache afresh.")
        try:
            env = _open_environment(folder, durability, create=not generation)
        except (lmdb.Error, OSError, CorruptStoreError):
            newer = read_current(leaf)
            if newer > generation:
                generation = newer  # deleted by a compaction between our look and the open
                continue
            raise
        newer = read_current(leaf)
        if newer > generation:
            env.close()
            generation = newer
            continue
        with env.begin() as txn:
            sealed = parse_seal(txn.get(SEAL_KEY))
            made_by_compaction = generation == 0 or txn.get(GENERATION_KEY) is not None
        if sealed is not None:
            env.close()
            generation = sealed
            continue
        if not made_by_compaction:
            env.close()
            raise CorruptStoreError(
                f"The cache store in {leaf} names generation {generation}, but {folder} holds "
                "an empty environment that compaction did not make (its files were deleted "
                f"by hand?). Nothing was deleted: run `ptd verify {leaf}`, or move the folder "
                "aside to start that cache afresh.")
        return env, generation
    raise CorruptStoreError(
        f"The cache store in {leaf} keeps changing generation ({generation} after "
        f"{MAX_GENERATION_HOPS} switches). Is a compaction looping? Stop it and run "
        f"`ptd verify {leaf}`.")


def _open_environment(path: str, durability: Durability, create: bool = True
                      ) -> "lmdb.Environment":
    """Open the LMDB environment in the folder ``path`` (one generation of a store).

    ``create=False`` for generations made by compaction: only the compactor creates those,
    and a folder it has deleted must not be brought back empty.
    """
    policy = trust.current_policy()
    trust.check_trusted(path, policy)  # a cache is code: refuse folders others can write
    if os.path.isdir(path) and _read_only_filesystem(path):
        # LMDB's lock file cannot be written here, so read without it, as LMDB itself does on a
        # read-only filesystem (MDB_ROFS); every write fails and is reported. Safe as long as no
        # process writes the same store through another, writable mount at the same time.
        options = {"readonly": True, "lock": False}
    else:
        if create:
            make_dirs(path, policy.sharing.folder_mode)
        if os.path.isdir(path):
            reserve_lock_file(path)
        options = {"readonly": False, "lock": True, "create": create,
                   "mode": policy.sharing.file_mode,
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
    try:
        if not options["readonly"]:
            env.reader_check()  # free read slots left behind by killed processes
            trust.share_store_files(path, policy)  # group modes despite the umask
        _check_length(path, env)
    except BaseException:
        env.close()
        raise
    return env


# LMDB's lock file: a header and 64 bytes per reader slot, rounded up to whole pages.
LOCK_FILE_BYTES = ((MAX_READERS * 64 + 4096) + 4095) // 4096 * 4096


def reserve_lock_file(path: str) -> None:
    """Give ``lock.mdb`` real disk blocks before LMDB maps it.

    LMDB makes the lock file with ``ftruncate`` (a sparse file) and writes it through a memory
    map; on a full disk, the first write to a page with no block behind it kills the process
    with SIGBUS instead of raising. Allocating the blocks first turns that into an ``OSError``
    (ENOSPC), which the caller reports. ``posix_fallocate`` never changes bytes already
    written, so it is safe on a lock file another process is using.
    """
    lock_file = os.path.join(path, LOCK_FILE)
    mode = trust.current_policy().sharing.file_mode
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, mode)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"No space left on the disk of {path} to create the "
                          "cache store's lock file; free some space") from err
        return  # read-only, permissions: LMDB reports it with its own message
    try:
        info = os.fstat(fd)
        if info.st_size >= LOCK_FILE_BYTES:
            return
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)  # open() applied the umask; teammates must open it too
        try:
            os.posix_fallocate(fd, 0, LOCK_FILE_BYTES)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"No space left on the disk of {path} for the "
                              "cache store's lock file; free some space") from err
            # EOPNOTSUPP and the like: no preallocation on this filesystem; LMDB goes on as
            # it always does.
    finally:
        os.close(fd)


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
        while True:
            handle = self._checkout(path, durability, write=False)
            try:
                env = handle.env
                try:
                    txn = env.begin(write=False)
                except lmdb.MapResizedError:
                    env.set_mapsize(0)  # another process grew the map: adopt its size
                    txn = env.begin(write=False)
                try:
                    result = action(txn)
                    # Found nothing: make sure it is because there is nothing, not because a
                    # compaction moved the store on (a hit in a sealed generation is still
                    # right; the periodic recheck moves this process over within a second).
                    if result is None and txn.get(SEAL_KEY) is not None:
                        raise _Superseded
                    return result
                finally:
                    txn.abort()
            except _Superseded:
                self._retire(handle)
            finally:
                handle.lock.release()

    def newest(self, path: str, durability: Durability, prefix: bytes, after: bytes,
               large: Optional[Callable[[bytes, memoryview], T]] = None,
               large_size: int = 64 * 1024):
        """``(key, value)`` of the last key starting with ``prefix`` (``after`` sorts after all
        of them), or None: the hit path's one lookup, without a callback.

        With ``large``, a value over ``large_size`` bytes is not copied out of the memory map:
        ``(key, large(key, view))`` is returned, ``large`` having run inside the transaction,
        while the view is valid. Copying a large result and then unpickling it holds two
        copies at once, which made glibc return and re-fault the memory on every hit (1 MB
        results loaded 6x slower than LMDB reads them).
        """
        while True:
            handle = self._handles.get(path)
            if handle is not None and handle.durability is durability:
                handle.lock.acquire()  # the common case of _checkout, inline
                handle.last_used = next(self._clock)
                if handle.env is None or time.monotonic() - handle.checked_at > RECHECK_SECONDS:
                    handle.lock.release()
                    handle = self._checkout(path, durability, write=False)
            else:
                handle = self._checkout(path, durability, write=False)
            try:
                env = handle.env
                views = large is not None
                try:
                    txn = env.begin(buffers=views)
                except lmdb.MapResizedError:
                    env.set_mapsize(0)
                    txn = env.begin(buffers=views)
                try:
                    cursor = txn.cursor()
                    if (cursor.set_range(after) and cursor.prev()) or cursor.last():
                        if not views:
                            key, value = cursor.item()
                            if key[:len(prefix)] == prefix:
                                return key, value
                        else:
                            key = bytes(cursor.key())
                            if key[:len(prefix)] == prefix:
                                value = cursor.value()
                                if len(value) > large_size:
                                    return key, large(key, value)
                                return key, bytes(value)
                    if txn.get(SEAL_KEY) is None:
                        return None
                finally:
                    txn.abort()
                self._retire(handle)
            finally:
                handle.lock.release()

    def write(self, path: str, durability: Durability,
              action: Callable[["lmdb.Transaction"], T]) -> T:
        """Run ``action`` in one write transaction, growing the map and retrying when full."""
        while True:
            handle = self._checkout(path, durability, write=True)
            try:
                env = handle.env
                while True:
                    try:
                        with env.begin(write=True) as txn:
                            if txn.get(SEAL_KEY) is not None:
                                raise _Superseded  # compacted: write to the new generation
                            return action(txn)
                    except lmdb.MapResizedError:
                        env.set_mapsize(0)
                    except lmdb.MapFullError:
                        env.set_mapsize(env.info()["map_size"] * 2)
            except _Superseded:
                self._retire(handle)
            finally:
                handle.lock.release()

    @contextlib.contextmanager
    def exclusive(self, path: str, durability: Durability) -> Iterator[_Handle]:
        """Hold the open handle of ``path`` for a long operation (compaction).

        No other thread of this process runs a transaction on the store meanwhile; other
        processes are not affected. The handle's ``env`` and ``generation`` may be used freely
        inside; ``retire`` it when the generation it has open has been superseded.
        """
        handle = self._checkout(path, durability, write=True)
        try:
            yield handle
        finally:
            handle.lock.release()

    def retire(self, handle: _Handle) -> None:
        """Close a handle held through :meth:`exclusive` (its generation was superseded)."""
        if handle.env is not None:
            self._retire(handle)

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
                if handle.durability is not durability:
                    stale = True
                elif write:
                    stale = not handle.is_current(generation_too=False)
                else:
                    stale = (time.monotonic() - handle.checked_at > RECHECK_SECONDS
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
            env, generation = open_generation(path, durability)
            handle = _Handle(path, generation, env, durability)
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
