"""The process's pool of open environments: one per leaf folder, a bounded number at a time.

Facts this module is built around (see DESIGN.md):

* Opening an environment costs ~100 µs and the same one may not be opened twice in a process,
  so handles are kept open and shared by every caller in the process.
* Each open environment maps address space and holds 3 file descriptors, so at most
  ``max_open`` stay open; the least recently used idle one is closed to make room.
* An environment must not be used across ``fork()``. Before a fork we wait until no
  transaction is running (every handle's lock is taken), and the child closes what it
  inherited, then reopens lazily. Transactions are never kept open between calls.
* The pool's size follows the descriptor limit (``environment_budget``), or
  ``EngineSettings.max_open_environments``; running out of descriptors while opening one
  closes idle environments and tries again instead of failing.
* A store may be rebuilt by compaction into a new generation (see ``generations.py``). Handles
  are registered by leaf folder and follow the switch: a write that finds the seal in its own
  transaction, and a read that finds nothing where a seal is, reopen the store at the
  generation in use and run again.
* A handle's lock keeps closing, growing the map (``environments.begin_transaction``,
  ``write_transaction``) and forking away from running transactions. No lock is held past an
  exception: every path that takes a handle's lock releases it in a ``finally`` or on the way
  out of the exception.
"""

import contextlib
import errno
import itertools
import os
import threading
import time
from typing import Callable, Dict, Iterator, Optional, TypeVar

import lmdb

from . import settings as _settings
from .durability import Durability
from .environments import (DATA_FILE, LOCK_FILE, begin_transaction, file_identity,
                           write_transaction)
from .errors import CorruptStoreError, error_number
from .generations import (SEAL_KEY, generation_folder, open_generation, read_current,
                          register_descriptor_reliever, store_exists)

T = TypeVar("T")

DEFAULT_MAX_OPEN = 64  # environments kept open when descriptors are plentiful
DESCRIPTORS_PER_ENVIRONMENT = 3  # data file, its synchronous twin for meta pages, lock file
#: How often a reader checks that its store was not deleted or replaced: copied from the
#: installed ``EngineSettings.handle_recheck_seconds`` (read on every hit, as a plain global).
RECHECK_SECONDS = 1.0
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


def environment_budget() -> int:
    """How many environments the pool keeps open: three eighths of the soft descriptor limit,
    at 3 descriptors each, at most ``DEFAULT_MAX_OPEN`` and at least 2.

    With compute-lock files (``locks._descriptor_budget``: an eighth, at least 2) the library
    keeps at most half of the limit, from ``ulimit -n 16`` up; the other half is the user's
    (the two took five eighths and more before, 29 of 32). With ``ulimit -n 64`` that is 8
    environments, with 128 it is 16, from 512 on it is 64. Read at each open, so a limit
    changed at run time is followed.
    """
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return DEFAULT_MAX_OPEN
    if soft == getattr(resource, "RLIM_INFINITY", -1) or soft <= 0:
        return DEFAULT_MAX_OPEN
    return max(2, min(DEFAULT_MAX_OPEN, soft * 3 // 8 // DESCRIPTORS_PER_ENVIRONMENT))


class StoreMissing(Exception):
    """Internal: the store was deleted (e.g. its folder removed) while this process had it open."""


class _Superseded(Exception):
    """Internal: the open generation was sealed by a compaction; reopen and run again."""


_FILE_PATHS: Dict[str, tuple] = {}  # generation folder -> (data file, lock file) paths


def _files_unchanged(handle: "_Handle") -> bool:
    """``file_identity(handle.folder) == handle.identity``, with the two paths joined once per
    folder: whether the data and lock files at the folder's paths are still the ones the
    environment has open (checked before every write)."""
    paths = _FILE_PATHS.get(handle.folder)
    if paths is None:
        if len(_FILE_PATHS) > 4096:
            _FILE_PATHS.clear()
        paths = _FILE_PATHS[handle.folder] = (os.path.join(handle.folder, DATA_FILE),
                                              os.path.join(handle.folder, LOCK_FILE))
    try:
        data, lock = os.stat(paths[0]), os.stat(paths[1])
    except FileNotFoundError:
        return file_identity(handle.folder) == handle.identity  # (None for a missing file)
    return ((data.st_dev, data.st_ino), (lock.st_dev, lock.st_ino)) == handle.identity


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
        self.identity = file_identity(self.folder)
        self.checked_at = time.monotonic()

    def is_current(self, generation_too: bool = True) -> bool:
        """Whether the files on disk are still the ones this environment has open, and (with
        ``generation_too``) no compaction has named a newer generation since.

        Writes check the files before every transaction (a write into a deleted data file would
        be lost; one beside a new lock file would not be serialised with other processes), but
        not the generation: they find a compaction's seal inside their own transaction.
        """
        self.checked_at = time.monotonic()
        if not _files_unchanged(self):
            return False
        if not generation_too:
            return True
        try:
            if read_current(self.path) > self.generation:
                return False
        except (CorruptStoreError, OSError):
            # Reported when the store is next opened (damage), or checked again next time (out
            # of descriptors, say): this handle still works.
            return True
        # Sealed by a compaction that has not (yet) named the new generation in CURRENT.
        with begin_transaction(self.env) as txn:
            return txn.get(SEAL_KEY) is None


class EnvironmentPool:
    """The process-wide registry of open environments."""

    def __init__(self, max_open: Optional[int] = None) -> None:
        self._max_open = max_open
        self._handles: Dict[str, _Handle] = {}
        self._lock = threading.Lock()
        self._clock = itertools.count(1)
        self._held_for_fork: list = []

    @property
    def max_open(self) -> int:
        """How many environments stay open: as given, or :func:`environment_budget`."""
        return self._max_open if self._max_open is not None else environment_budget()

    # --- using an environment -------------------------------------------------------------
    def read(self, path: str, durability: Durability,
             action: Callable[["lmdb.Transaction"], T]) -> T:
        """Run ``action`` in one short read transaction (no file lock, never blocks writers)."""
        while True:
            handle = self._checkout(path, durability, write=False)
            try:
                txn = begin_transaction(handle.env)
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
               large: Optional[Callable[..., T]] = None,
               large_size: int = 64 * 1024, large_args: tuple = ()):
        """``(key, value)`` of the last key starting with ``prefix`` (``after`` sorts after all
        of them), or None: the hit path's one lookup, without a callback.

        With ``large``, a value over ``large_size`` bytes is not copied out of the memory map:
        ``(key, large(key, view, *large_args))`` is returned, ``large`` having run inside the
        transaction, while the view is valid (``large_args`` spare the hit path a closure per
        call). Copying a large result and then unpickling it holds two copies at once, which
        made glibc return and re-fault the memory on every hit (1 MB results loaded 6x slower
        than LMDB reads them).
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
                except lmdb.MapResizedError:  # kept off the hit path's common case
                    txn = begin_transaction(env, buffers=views)
                try:
                    cursor = txn.cursor()
                    if (cursor.set_range(after) and cursor.prev()) or cursor.last():
                        if not views:
                            key, value = cursor.item()
                            if key[:len(prefix)] == prefix:
                                return key, value
                        else:
                            # the key first: py-lmdb touches every page of a value it hands
                            # out, and on a miss the cursor stands on the previous call's
                            # newest record (a 400 MB neighbour read from disk: 3.4-4.2 s)
                            key = bytes(cursor.key())
                            if key[:len(prefix)] == prefix:
                                value = cursor.value()
                                if len(value) > large_size:
                                    return key, large(key, value, *large_args)
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
        def guarded(txn: "lmdb.Transaction") -> T:
            if txn.get(SEAL_KEY) is not None:
                raise _Superseded  # compacted: write to the new generation
            return action(txn)

        while True:
            handle = self._handles.get(path)
            if handle is not None and handle.durability is durability:
                # _checkout's common case for a write, inline: the files are checked before
                # every write transaction, as there (going through _checkout and
                # file_identity cost ~6 µs of a ~50 µs miss; the two stats ~2 of them).
                handle.lock.acquire()
                try:
                    current = handle.env is not None and handle.is_current(generation_too=False)
                except BaseException:
                    handle.lock.release()
                    raise
                if current:
                    handle.last_used = next(self._clock)
                else:
                    handle.lock.release()
                    handle = self._checkout(path, durability, write=True)  # reopens
            else:
                handle = self._checkout(path, durability, write=True)
            try:
                return write_transaction(handle.env, guarded)
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

        Whatever the checks raise, the handle's lock is released on the way out: a lock kept
        would block every later call of this process on the store for good.
        """
        while True:
            handle = self._handles.get(path)
            if handle is None:
                if not write and not store_exists(path):
                    raise StoreMissing(path)
                handle = self._open(path, durability)
            handle.lock.acquire()
            try:
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
            except BaseException:
                handle.lock.release()
                raise
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
        """Open and register the store of ``path``, closing idle ones to stay within
        ``max_open``, and more of them when the process runs out of file descriptors anyway
        (other files of the process count too): only when none is left to close is that an
        error."""
        with self._lock:
            handle = self._handles.get(path)
            if handle is not None:
                return handle
            if len(self._handles) >= self.max_open:
                self._evict_idle(len(self._handles) - self.max_open + 1)
            while True:
                try:
                    env, generation = open_generation(path, durability)
                    break
                except (lmdb.Error, OSError) as err:
                    if error_number(err) not in _OUT_OF_DESCRIPTORS:
                        raise
                    if not self._evict_idle(max(1, len(self._handles) // 2)):
                        raise OSError(err.errno if isinstance(err, OSError) else errno.EMFILE,
                                      f"Too many open files to open the cache store in {path} "
                                      f"({err}), and no idle cache store is left to close. "
                                      "Raise the limit (`ulimit -n`), or close files the "
                                      "program keeps open.") from err
            handle = _Handle(path, generation, env, durability)
            self._handles[path] = handle
            return handle

    def relieve_descriptors(self) -> bool:
        """Close half of the idle environments (at least one), because the process ran out of
        file descriptors somewhere else in the engine (listing a leaf); whether any closed.

        Registered with ``generations.register_descriptor_reliever`` for ``POOL``: a process
        whose descriptors are all held by idle environments lists a new leaf instead of
        failing with ``Too many open files``, as ``_open`` does when opening one.

        Takes no pool lock: listings run inside ``_open`` (which holds it) and under a handle
        lock (compaction), and the pool lock is never taken after a handle lock. Handles are
        only taken without blocking, so one in use (or held by this thread) is skipped.
        """
        return self._evict_idle(max(1, len(self._handles) // 2)) > 0

    def _evict_idle(self, count: int) -> int:
        """Close up to ``count`` of the least recently used handles that no transaction is
        using; return how many were closed."""
        closed = 0
        for handle in sorted(self._handles.values(), key=lambda h: h.last_used):
            if closed >= count:
                break
            if handle.lock.acquire(blocking=False):
                try:
                    if handle.env is not None:  # not closed already by another thread
                        closed += 1
                    self._close_handle(handle)
                finally:
                    handle.lock.release()
        return closed

    def _close_handle(self, handle: _Handle) -> None:
        # Only this handle: retired meanwhile, its path may already have a new one.
        if self._handles.get(handle.path) is handle:
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

register_descriptor_reliever(POOL.relieve_descriptors)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=POOL._before_fork,
        after_in_parent=POOL._after_fork_in_parent,
        after_in_child=POOL._after_fork_in_child,
    )


def _apply_settings(settings: "_settings.EngineSettings") -> None:
    """Copy what the pool needs of newly installed settings: the recheck interval (read on
    every hit) and the size of ``POOL`` (None: from the descriptor limit, at each open)."""
    global RECHECK_SECONDS
    RECHECK_SECONDS = settings.handle_recheck_seconds
    POOL._max_open = settings.max_open_environments


_settings.on_install(_apply_settings)
