"""Lock scopes for the miss path: ``call`` (one bucket), ``func`` (one leaf), ``global`` (one
project).

A miss holds its scope's lock from the second lookup until the result is stored, so processes
that share a lock never compute the same result twice. Hits never take a lock.

How a lock is held, and why it is cheap
---------------------------------------
One ``filelock.FileLock`` acquire and release costs ~60-100 µs (filelock 4: Python bookkeeping,
an ``open`` and a ``close`` per acquire), against ~1 µs for the ``flock`` system call under
it; that was most of a miss. So each process keeps one :class:`ScopeLock` per lock file, and
the ScopeLock keeps its file open between misses:

* **Between processes**: ``flock(LOCK_EX)`` on that descriptor, the same primitive filelock
  uses on Unix (so it also excludes any ``FileLock`` on the same file). The kernel drops it
  when the process dies, however it dies: a crash never leaves a stale lock.
* **Between threads, and reentrant per thread**: a ``threading.RLock`` taken before the
  ``flock``; only the outermost acquisition of a thread locks the file, only the outermost
  release unlocks it. A cached function calling another under the ``global`` scope (one lock
  for the project) therefore takes it again without deadlocking, while other threads wait.
* **The file still being the lock file**: a descriptor kept open outlives a deletion or a
  replacement of the file (a cache folder removed, or moved aside, while the process runs), and
  a lock on an inode nobody else opens excludes nobody. After each ``flock`` the descriptor
  must still be linked (``fstat``: a deleted or replaced file is caught at once), and at most
  every second the path is ``lstat``-ed to see that it still names our inode (a folder moved
  aside: walking the path costs more than the rest of the lock). If not, the descriptor is
  dropped and the path opened again. (filelock gets this by opening the path afresh on every
  acquire.)
* **Creating and opening the file safely**: a missing lock file is created as filelock
  creates it (``O_CREAT | O_EXCL | O_NOFOLLOW``, then ``fchmod`` to the sharing level's mode,
  owner-only ``0o600`` in ``0o700`` folders by default; see ``trust.py``). ``O_EXCL`` never
  goes through a symbolic link, even a dangling one: the symlink attacks on lock files that
  filelock 3.20.3 fixed (CVE-2025-68146, CVE-2026-22701) relied on following one. Creating it
  through a ``FileLock`` instead cost ~100 µs more per new lock file, paid by the first miss
  of every bucket. An existing file is opened ``O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK``:
  never through a symbolic link planted at the path (the open fails, and the miss computes
  without the lock, with a warning), never blocking on a FIFO, never leaking into programs
  started with ``exec``. What is opened must be a regular file; one owned by another user is
  refused in a sticky folder (as filelock does: its owner could swap it while we hold it).
  Where a filesystem has no ``flock`` (never a local one; network filesystems are refused
  before any lock is taken), the lock falls back to a ``filelock.FileLock`` per acquisition.
* **Fork**: a forked child must not use the parent's descriptors: they share the parent's open
  file description, so the child's ``flock(LOCK_UN)`` would release the parent's lock. After a
  fork the child closes them without unlocking (the parent's own descriptor keeps its lock)
  and starts with no ScopeLocks; its RLocks (possibly held by parent threads that do not exist
  in the child) are dropped with them.
* **Bounded descriptors**: at most :data:`MAX_OPEN_LOCK_FILES` lock files stay open (fewer
  under a low ``RLIMIT_NOFILE``); beyond that the least recently opened idle one is closed
  (closing an unlocked descriptor releases nothing) and reopened when next needed (~5 µs).
  Locks that are held are never closed.
* **Timeouts**: ``timeout=None`` waits in a blocking ``flock`` for as long as the holder
  computes; a number polls and raises :class:`filelock.Timeout` when it runs out.
"""

import enum
import errno
import fcntl
import os
import stat
import threading
import time
from typing import Dict, Optional

from filelock import FileLock, Timeout

from .filesystem import make_dirs
from .trust import current_policy

__all__ = ["LockScope", "ScopeLock", "Timeout", "lock_path", "scope_lock"]

LOCKS_FOLDER = "locks"


class LockScope(str, enum.Enum):
    CALL = "call"
    FUNC = "func"
    GLOBAL = "global"

    @classmethod
    def parse(cls, value) -> "LockScope":
        if isinstance(value, cls):
            return value
        aliases = {"function": cls.FUNC, "bucket": cls.CALL, "project": cls.GLOBAL}
        text = str(value).strip().lower()
        if text in aliases:
            return aliases[text]
        try:
            return cls(text)
        except ValueError:
            raise ValueError(
                f"lock_granularity must be 'call', 'func' or 'global', got {value!r}"
            ) from None


def lock_path(scope: LockScope, leaf_path: str, bucket: int, project_root: str) -> str:
    """Where the lock file of a scope lives."""
    if scope is LockScope.CALL:
        if leaf_path.endswith(os.sep):
            return os.path.join(leaf_path, LOCKS_FOLDER, f"{bucket}.lock")
        return f"{leaf_path}{os.sep}{LOCKS_FOLDER}{os.sep}{bucket}.lock"  # join, on every miss
    if scope is LockScope.FUNC:
        return os.path.join(leaf_path, "func.lock")
    return os.path.join(project_root, "global.lock")


def _descriptor_budget() -> int:
    """An eighth of the soft descriptor limit, at most 512: 128 under the common limit of
    1024, which leaves most of it to the pool's LMDB environments (3 descriptors each, 64 at
    most) and to the user's own files; where the limit is higher, every bucket lock of a
    function (``hashsize`` 500 by default, ``call`` scope) can stay open."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 64
    if soft == getattr(resource, "RLIM_INFINITY", -1) or soft <= 0:
        return 512
    return max(8, min(512, soft // 8))


MAX_OPEN_LOCK_FILES = _descriptor_budget()
_OPEN_FLAGS = (os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NONBLOCK", 0))
_NO_FLOCK = {errno.ENOSYS, errno.ENOLCK, getattr(errno, "EOPNOTSUPP", errno.ENOSYS)}
_POLL_FIRST, _POLL_MAX = 0.001, 0.05  # seconds between attempts while a timeout runs
RECHECK_SECONDS = 1.0  # how often a kept descriptor's path is looked up again


class ScopeLock:
    """This process's lock on one lock file (see the module docstring).

    Use :func:`scope_lock` to get it: there must be one object per path per process, which is
    what makes it reentrant and what lets threads wait for each other on it.
    """

    __slots__ = ("path", "_thread_lock", "_depth", "_fd", "_identity", "_checked_at",
                 "_fallback")

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.RLock()
        self._depth = 0  # acquisitions by the thread holding _thread_lock, not yet released
        self._fd: Optional[int] = None  # the open lock file, kept between acquisitions
        self._identity = None  # (st_dev, st_ino) of what _fd has open
        self._checked_at = 0.0  # when the path was last seen to name it
        self._fallback: Optional[FileLock] = None  # where the filesystem has no flock

    @property
    def is_locked(self) -> bool:
        return self._depth > 0

    def acquire(self, timeout: Optional[float] = None) -> "ScopeLock":
        """Wait for the lock (``timeout`` seconds at most, if given) and take it.

        Raises :class:`filelock.Timeout` when the time runs out, ``OSError`` when the lock file
        cannot be opened or created (a symbolic link at its path, permissions); nothing is held
        after either.
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        if not self._thread_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise Timeout(self.path)
        try:
            if self._depth == 0:
                self._lock_file(deadline)
            self._depth += 1
        except BaseException:
            if self._depth == 0 and self._fd is not None:  # interrupted after the flock
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                except OSError:
                    pass
            self._thread_lock.release()
            raise
        return self

    def release(self) -> None:
        """Undo one :meth:`acquire` of the calling thread; the outermost one unlocks the file."""
        if self._depth <= 0:
            raise RuntimeError(f"release of the lock {self.path}, which is not held")
        try:
            if self._depth == 1:
                self._unlock_file()
        finally:
            self._depth -= 1
            self._thread_lock.release()

    def __enter__(self) -> "ScopeLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    # --- the file -------------------------------------------------------------------------
    def _lock_file(self, deadline: Optional[float]) -> None:
        while True:
            if self._fallback is not None:
                self._fallback.acquire(timeout=-1 if deadline is None
                                       else max(deadline - time.monotonic(), 0.0))
                return
            fd = self._fd
            fresh = fd is None
            if fresh:
                fd = self._open()
            try:
                self._flock(fd, deadline)
            except OSError as err:
                if err.errno not in _NO_FLOCK:
                    raise
                self._close()  # no flock here (never on a local filesystem): filelock copes
                self._fallback = FileLock(self.path, mode=current_policy().sharing.file_mode)
                continue
            if self._still_named(fd, fresh):
                return
            # Deleted or replaced while we waited or while the descriptor was idle: our lock
            # is on an inode nobody else will open. Drop it and lock what the path names now.
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._close()

    def _still_named(self, fd: int, fresh: bool) -> bool:
        """Whether the path still names the file we locked: the file must still be linked
        (checked every time, as filelock does: a cache folder deleted while we run), and a
        descriptor kept open must not have been moved away with its folder (the path is looked
        up again at most every ``RECHECK_SECONDS``, which costs a walk of the whole path)."""
        if os.fstat(fd).st_nlink == 0:
            return False
        now = time.monotonic()
        if fresh or now - self._checked_at < RECHECK_SECONDS:
            if fresh:
                self._checked_at = now
            return True
        try:
            current = os.lstat(self.path)
        except FileNotFoundError:
            return False
        self._checked_at = now
        return (current.st_dev, current.st_ino) == self._identity

    def _flock(self, fd: int, deadline: Optional[float]) -> None:
        if deadline is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        pause = _POLL_FIRST
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except (BlockingIOError, PermissionError):  # EWOULDBLOCK; EACCES on some systems
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(self.path)
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX)

    def _unlock_file(self) -> None:
        if self._fallback is not None:
            self._fallback.release()
        elif self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _open(self) -> int:
        """Open the lock file, creating it if it does not exist yet."""
        try:
            fd = os.open(self.path, _OPEN_FLAGS)
        except FileNotFoundError:
            fd = self._create()
        try:
            info = os.fstat(fd)
            _check_lock_file(self.path, info)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._identity = fd, (info.st_dev, info.st_ino)
        _opened(self)
        return fd

    def _create(self) -> int:
        """Create the lock file the way filelock does: ``O_CREAT | O_EXCL`` (which never goes
        through a symbolic link, even a dangling one), then the sharing level's mode set again
        with ``fchmod``, since ``open`` applies the umask."""
        sharing = current_policy().sharing
        make_dirs(os.path.dirname(self.path), sharing.folder_mode)
        try:
            fd = os.open(self.path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, sharing.file_mode)
        except FileExistsError:  # another process made it meanwhile (or a link is there:
            return os.open(self.path, _OPEN_FLAGS)  # O_NOFOLLOW refuses that one)
        try:
            os.fchmod(fd, sharing.file_mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _close(self) -> None:
        fd, self._fd, self._identity = self._fd, None, None
        if fd is not None:
            _closed(self)
            _close_quietly(fd)


def _check_lock_file(path: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise PermissionError(errno.EACCES, "the lock file is not a regular file; remove it",
                              path)
    if info.st_uid != os.geteuid():  # as filelock: under a sticky folder its owner could
        folder = os.stat(os.path.dirname(path))  # replace it while we hold it
        if folder.st_mode & stat.S_ISVTX and info.st_uid != folder.st_uid:
            raise PermissionError(
                errno.EACCES, f"the lock file belongs to user {info.st_uid} in a sticky folder "
                "(like /tmp); remove it, or keep the cache in a folder of your own", path)


# --- the registry: one ScopeLock per path per process ---------------------------------------
_locks: Dict[str, ScopeLock] = {}
_open_locks: Dict[str, ScopeLock] = {}  # those with an open descriptor, oldest first
_registry_lock = threading.Lock()


def scope_lock(path: str, timeout: Optional[float] = None) -> "_Hold":
    """The process's lock on ``path``, to take with ``acquire()``/``release()`` or ``with``.

    ``timeout=None`` waits for as long as the holder computes; a number raises
    :class:`filelock.Timeout` after that many seconds.
    """
    lock = _locks.get(path)
    if lock is None:
        with _registry_lock:
            lock = _locks.get(path)
            if lock is None:
                lock = _locks[path] = ScopeLock(path)
    return _Hold(lock, timeout)


class _Hold:
    """One use of a :class:`ScopeLock` with its own timeout (threads may pass different ones)."""

    __slots__ = ("lock", "timeout")

    def __init__(self, lock: ScopeLock, timeout: Optional[float]) -> None:
        self.lock = lock
        self.timeout = timeout

    def acquire(self) -> ScopeLock:
        return self.lock.acquire(self.timeout)

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> ScopeLock:
        return self.lock.acquire(self.timeout)

    def __exit__(self, *exc_info) -> None:
        self.lock.release()


def _opened(lock: ScopeLock) -> None:
    """Count a newly opened descriptor; close the oldest idle ones beyond the budget.

    Lock order: a thread may wait for the registry lock while it holds a ScopeLock's thread
    lock (it is opening that lock's file), so under the registry lock other ScopeLocks are only
    *tried* (never waited for), and a busy one is simply skipped.
    """
    with _registry_lock:
        _open_locks[lock.path] = lock
        excess = len(_open_locks) - MAX_OPEN_LOCK_FILES
        if excess <= 0:
            return
        closed = []
        for other in _open_locks.values():  # oldest first; usually the first one will do
            if other is lock or not other._thread_lock.acquire(blocking=False):
                continue
            try:
                if other._depth == 0 and other._fd is not None:
                    _close_quietly(other._fd)
                    other._fd = other._identity = None
                    closed.append(other.path)
            finally:
                other._thread_lock.release()
            if len(closed) >= excess:
                break
        for path in closed:
            del _open_locks[path]


def _closed(lock: ScopeLock) -> None:
    with _registry_lock:
        if _open_locks.get(lock.path) is lock:
            del _open_locks[lock.path]


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _forget_after_fork() -> None:
    """In a forked child: close the inherited descriptors without unlocking (they share the
    parent's open file descriptions; the parent's locks must stay), forget every ScopeLock."""
    global _registry_lock
    for lock in list(_locks.values()):
        if lock._fd is not None:
            _close_quietly(lock._fd)
        # A hold the child still releases (it forked inside a cached call and returns from
        # it) then unlocks nothing: not the parent's lock, nor whatever reuses the number.
        lock._fd = lock._identity = lock._fallback = None
    _locks.clear()
    _open_locks.clear()
    _registry_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
