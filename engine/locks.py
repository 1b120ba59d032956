"""Compute locks: who may compute a missing result while others wait for it.

Scopes and where their locks live
---------------------------------
* ``call`` (the default): one lock per *call*, a byte of ``<leaf>/locks/calls.lock`` at an
  offset taken from the call's digest (62 bits: two different calls share a lock with a
  probability of about 2**-62). Only processes computing the very same call wait for each
  other. Earlier versions locked a hash *bucket*, and unrelated calls sharing a bucket formed
  lock cycles when cached functions call cached functions (issue 9).
* ``func``: byte 0 of ``<leaf>/func.lock``: one process at a time computes calls of the
  function (leaf).
* ``global``: byte 0 of ``<project>/global.lock``: one process at a time computes calls of the
  project.

A kernel lock belongs to a process, and so does the byte: the threads of the process that holds
it share it, each computing its own call, and threads wait for each other only to compute the
*same* call (compute-once within the process) or while one of them takes the byte from the
kernel. A thread never waits for another thread's *different* call: the holder may be waiting,
in ways no library can see (a future, a queue, an event loop, a polling loop), for the very
thread that would wait (a thread pool inside a ``func``-scoped call).

The first miss of a leaf creates its one lock file; later misses create nothing (a lock file
per bucket cost 100-300 µs per first miss of each bucket).

Why these locks cannot hang nested cached calls
-----------------------------------------------
A compute lock is held while the function runs, and cached functions call cached functions,
from threads and from process pools. The rules, each enforced here:

1. A deterministic call graph has no cycles, and a lock per call orders the locks as the calls
   are ordered, so ``call`` locks alone never deadlock (two jobs recursing through overlapping
   calls wait for each other's results, never in a circle).
2. **A process never waits for a lock held by one of its ancestors** (the holder is found with
   ``F_GETLK``, its ancestry in ``/proc``): that ancestor may be waiting for this very process
   (a pool child of the computing call). It computes without the lock instead.
3. **Threads of one process never wait for each other's different calls** (above); a thread
   waiting for the *same* call waits: a child computing its own ancestor call would recurse
   forever anyway.
4. **A thread that already holds compute locks never waits in a cycle.** Between threads of one
   process the cycle is seen in this module's own table of holders and waiters; between
   processes the kernel sees it: while its process holds other locks, a waiter blocks in
   ``F_SETLKW``, which fails with ``EDEADLK`` when the wait would close a cycle of processes
   (POSIX record locks have deadlock detection, ``flock`` does not). The kernel counts a
   process as one owner, so a report is taken for a cycle only when it persists (two seconds
   where a ``func`` or ``global`` lock is involved, a minute where only ``call`` locks are,
   which cannot cycle in a deterministic call graph), and the waiter then computes without the
   lock. A process that holds no other lock cannot
   close a cycle; its waiter polls instead, asking every ``ANCESTOR_RECHECK_SECONDS`` who holds
   the lock (rule 2).

Whenever a rule lets a call compute without its lock, :meth:`ComputeLock.acquire` returns the
reason, which the caller logs: the cost is at most a duplicated computation, never a wrong
result (results are immutable and keyed by the call), and never a hang.

How a lock is held, and why it is cheap
---------------------------------------
POSIX record locks (``lockf``) belong to the process, so threads are excluded by this module's
table first (reentrantly: a thread may take a lock it holds again), and the owner thread then
takes the byte from the kernel. The kernel drops the locks of a dead process, however it died:
a crash never leaves a stale lock. A POSIX lock is released when the process closes *any*
descriptor of the file, so each lock file is opened once per process and a descriptor is never
closed while a lock of its file is held (an idle one may be, to bound descriptors).

* **The file still being the lock file**: a descriptor kept open outlives a deletion or a
  replacement of the file (a cache folder removed, or moved aside, while the process runs), and
  a lock on an inode nobody else opens excludes nobody. After each lock the descriptor must
  still be linked (``fstat``), and at most every second the path is ``lstat``-ed to see that it
  still names our inode. If not, the lock is dropped and the path opened again.
* **Creating and opening the file safely**: a missing lock file is created as filelock creates
  it (``O_CREAT | O_EXCL | O_NOFOLLOW``, then ``fchmod`` to the sharing level's mode); ``O_EXCL``
  never goes through a symbolic link, even a dangling one (the attacks fixed in filelock 3.20.3,
  CVE-2025-68146 and CVE-2026-22701, relied on following one). An existing file is opened
  ``O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK``, must be a regular file, and one owned by
  another user is refused in a sticky folder.
* **Fork**: POSIX locks are not inherited, so a child holds none of its parent's locks and
  cannot release them. The child closes the inherited descriptors and forgets the table (its
  entries may name parent threads that do not exist in the child).
* **Timeouts**: ``timeout=None`` waits for as long as the holder computes; a number polls and
  raises :class:`Timeout` when it runs out.
"""

import enum
import errno
import fcntl
import os
import stat
import struct
import sys
import threading
import time
from typing import Dict, Hashable, Optional, Set, Tuple

from . import settings as _settings
from .errors import EngineError
from .filesystem import make_dirs
from .trust import current_policy

__all__ = ["ComputeLock", "LockScope", "Timeout", "call_lock_offset", "compute_lock", "lock_place",
           "scope_lock"]

LOCKS_FOLDER = "locks"
CALL_LOCK_FILE = "calls.lock"
FUNC_LOCK_FILE = "func.lock"
GLOBAL_LOCK_FILE = "global.lock"
_CALL_OFFSET_BITS = 62  # off_t is 63 bits; byte 0 is the whole-file (func/global) lock


class Timeout(EngineError, TimeoutError):
    """The lock was not had within the timeout (``lock_timeout``)."""

    def __init__(self, lock_file: str) -> None:
        super().__init__(f"The lock {lock_file} could not be acquired in time.")
        self.lock_file = lock_file


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


def lock_place(scope: LockScope, leaf_path: str, digest: bytes, project_root: str
               ) -> Tuple[str, int]:
    """``(lock file, byte offset)`` of the compute lock of a call under ``scope``."""
    if scope is LockScope.CALL:
        return (f"{leaf_path}{os.sep}{LOCKS_FOLDER}{os.sep}{CALL_LOCK_FILE}",
                call_lock_offset(digest))
    if scope is LockScope.FUNC:
        return os.path.join(leaf_path, FUNC_LOCK_FILE), 0
    return os.path.join(project_root, GLOBAL_LOCK_FILE), 0


def call_lock_offset(digest: bytes) -> int:
    """The byte of the ``call`` lock file that locks the call ``digest`` (never byte 0)."""
    return 1 + (int.from_bytes(digest[:8], "big") & _CALL_OFFSET_MASK)


_CALL_OFFSET_MASK = (1 << _CALL_OFFSET_BITS) - 1


def _descriptor_budget() -> int:
    """An eighth of the soft descriptor limit, at most 512 and at least 2: lock files are one
    per leaf now, so this rarely binds. With LMDB environments (``environments.
    environment_budget``: three eighths) the library keeps at most half of the limit, and the
    other half is the user's; a minimum of 8 took a quarter of ``ulimit -n 32`` alone."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 64
    if soft == getattr(resource, "RLIM_INFINITY", -1) or soft <= 0:
        return 512
    return max(2, min(512, soft // 8))


MAX_OPEN_LOCK_FILES = _descriptor_budget()
_OPEN_FLAGS = (os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NONBLOCK", 0))
_BUSY = {errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK}
_POLL_FIRST, _POLL_MAX = 0.001, 0.02  # seconds between attempts while polling
RECHECK_SECONDS = 1.0  # how often a kept descriptor's path is looked up again
ANCESTOR_RECHECK_SECONDS = 0.25  # how often a polling waiter asks who holds its lock
#: How long a waiter keeps retrying after the kernel reported a cycle of processes before it
#: takes the report for real. The kernel counts a whole process as one lock owner, so with
#: several threads per process EDEADLK can be a false alarm that lasts as long as another
#: thread's computation. Where only ``call`` locks are involved a deterministic call graph has
#: no real cycle (rule 1), so the wait is long; ``func`` and ``global`` locks cycle for real
#: in mutual recursion.
CYCLE_CONFIRM_SECONDS = 2.0
CALL_CYCLE_CONFIRM_SECONDS = 60.0
_IN_PROCESS_SLICE = 0.05


class _LockFile:
    """This process's one open descriptor of one lock file."""

    __slots__ = ("path", "fd", "identity", "checked_at", "held")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: Optional[int] = None
        self.identity = None  # (st_dev, st_ino) of what fd has open
        self.checked_at = 0.0
        self.held = 0  # bytes of this file the process holds in the kernel

    def descriptor(self) -> Tuple[int, bool]:
        """``(fd, freshly opened)``."""
        if self.fd is not None:
            return self.fd, False
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
        self.fd, self.identity = fd, (info.st_dev, info.st_ino)
        self.checked_at = time.monotonic()
        _opened(self)
        return fd, True

    def _create(self) -> int:
        sharing = current_policy().sharing
        make_dirs(os.path.dirname(self.path), sharing.folder_mode)
        try:
            fd = os.open(self.path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, sharing.file_mode)
        except FileExistsError:  # another process made it meanwhile (or a link is there:
            return os.open(self.path, _OPEN_FLAGS)  # O_NOFOLLOW refuses that one)
        try:
            os.fchmod(fd, sharing.file_mode)  # open() applied the umask
        except BaseException:
            os.close(fd)
            raise
        return fd

    def still_named(self, fresh: bool) -> bool:
        """Whether the path still names the file we locked (see the module docstring)."""
        if os.fstat(self.fd).st_nlink == 0:
            return False
        now = time.monotonic()
        if fresh or now - self.checked_at < RECHECK_SECONDS:
            return True
        try:
            current = os.lstat(self.path)
        except FileNotFoundError:
            return False
        self.checked_at = now
        return (current.st_dev, current.st_ino) == self.identity

    def close_if_idle(self) -> bool:
        """Close the descriptor unless a lock of this file is held (closing any descriptor of
        a file drops every POSIX lock the process has on it)."""
        if self.held or self.fd is None:
            return False
        fd, self.fd, self.identity = self.fd, None, None
        _close_quietly(fd)
        return True


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


_IDLE, _ACQUIRING, _HELD = 0, 1, 2


class _Call:
    """A call computing under a byte, in this process: its thread and nested depth."""

    __slots__ = ("thread", "depth")

    def __init__(self, thread: int) -> None:
        self.thread = thread
        self.depth = 1


class _Range:
    """One lockable byte of a lock file, as this process sees it.

    The kernel lock belongs to the process, and so does this byte: the calls computing under it
    in this process (one for ``call`` locks; several different calls of one function or
    project under ``func`` and ``global``) share it, and it is released when the last of them
    is done. Threads only wait for each other to compute the *same* call (or for the thread
    taking the byte from the kernel), never for a different call: a thread holding a coarse
    lock may be waiting, in ways no library can see, for the very thread that would wait.
    """

    __slots__ = ("file", "offset", "state", "acquirer", "calls", "users", "waiters")

    def __init__(self, file: _LockFile, offset: int) -> None:
        self.file = file
        self.offset = offset
        self.state = _IDLE
        self.acquirer: Optional[int] = None  # the thread taking it from the kernel
        self.calls: Dict[Hashable, _Call] = {}
        self.users = 0  # calls sharing the kernel lock
        self.waiters = 0

    def awaited_thread(self, call: Hashable) -> Optional[int]:
        """The thread a waiter for ``call`` waits for (``_state`` held)."""
        computing = self.calls.get(call)
        if computing is not None:
            return computing.thread
        return self.acquirer if self.state == _ACQUIRING else None


# --- the process's table: every lock file, every held or awaited byte ------------------------
_state = threading.Lock()
_changed = threading.Condition(_state)
_files: Dict[str, _LockFile] = {}
_ranges: Dict[Tuple[str, int], _Range] = {}
_owned: Dict[int, int] = {}  # thread ident -> calls it computes under a lock (or is taking)
_waiting: Dict[int, Tuple[_Range, Hashable]] = {}  # thread ident -> what it waits for
_get_ident = threading.get_ident


class ComputeLock:
    """One use of a compute lock (see :func:`compute_lock`): ``acquire()`` then ``release()``.

    ``acquire`` returns None when the lock is held, or the reason it computes without it (a
    rule of the module docstring avoided a hang); ``release`` undoes either.
    """

    __slots__ = ("path", "offset", "timeout", "call", "nested_safe", "_range", "_outermost")

    def __init__(self, path: str, offset: int = 0, timeout: Optional[float] = None,
                 call: Hashable = None, nested_safe: bool = True) -> None:
        self.path = path
        self.offset = offset
        self.timeout = timeout
        self.call = call
        self.nested_safe = nested_safe
        self._range: Optional[_Range] = None
        self._outermost = False

    def acquire(self) -> Optional[str]:
        """Wait for the lock and take it; return None, or why the call goes on without it.

        Raises :class:`Timeout` when ``timeout`` runs out and ``OSError`` when the lock file
        cannot be opened or created (a symbolic link at its path, permissions); nothing is held
        after either.
        """
        if self._range is not None:
            raise RuntimeError(f"the lock {self.path} is already acquired by this object")
        timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        me = _get_ident()
        call = self.call
        with _state:
            key = (self.path, self.offset)
            rng = _ranges.get(key)
            if rng is None:  # the common case of a miss: nobody here uses the byte
                lock_file = _files.get(self.path)
                if lock_file is None:
                    lock_file = _files[self.path] = _LockFile(self.path)
                rng = _ranges[key] = _Range(lock_file, self.offset)
            else:
                computing = rng.calls.get(call)
                if computing is not None and computing.thread == me:
                    computing.depth += 1  # reentrant: a nested call under the same lock
                    self._range, self._outermost = rng, False
                    return None
                if computing is not None or rng.state == _ACQUIRING:
                    reason = self._wait_in_process(rng, me, deadline)
                    if reason is not None:
                        _forget_if_idle(rng)
                        return reason
            rng.calls[call] = _Call(me)
            _owned[me] = _owned.get(me, 0) + 1
            if rng.state == _HELD:  # another call of this process holds it: share it
                rng.users += 1
                self._range, self._outermost = rng, True
                return None
            rng.state, rng.acquirer = _ACQUIRING, me
        try:
            reason = self._lock_kernel(rng, deadline)
        except BaseException:
            with _state:
                self._leave(rng, me, taken=False)
            raise
        with _state:
            if reason is not None:
                self._leave(rng, me, taken=False)
                return reason
            rng.state, rng.acquirer, rng.users = _HELD, None, 1
            if _waiting:  # (only a thread in _wait_in_process waits on _changed)
                _changed.notify_all()
        self._range, self._outermost = rng, True
        return None

    def release(self) -> None:
        """Undo :meth:`acquire` (nothing, if it returned a reason)."""
        rng, self._range = self._range, None
        if rng is None:
            return
        with _state:
            if not self._outermost:
                computing = rng.calls.get(self.call)
                if computing is not None:
                    computing.depth -= 1
                return
            self._leave(rng, threading.get_ident(), taken=True)

    def __enter__(self) -> "ComputeLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    # --- between threads of this process --------------------------------------------------
    def _wait_in_process(self, rng: _Range, me: int, deadline: Optional[float]
                         ) -> Optional[str]:
        """Wait (``_state`` held) while another thread of this process computes the same call
        or takes the byte from the kernel."""
        rng.waiters += 1
        try:
            while True:
                awaited = rng.awaited_thread(self.call)
                if awaited is None:
                    return None
                if self.nested_safe and _cycle_through(me, awaited):
                    return (f"waiting for the lock {self.path} would close a cycle of threads "
                            "of this process that wait for each other's locks")
                wait = _IN_PROCESS_SLICE if self.nested_safe else None
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise Timeout(self.path)
                    wait = remaining if wait is None else min(wait, remaining)
                _waiting[me] = (rng, self.call)
                try:
                    _changed.wait(wait)
                finally:
                    _waiting.pop(me, None)
        finally:
            rng.waiters -= 1

    def _leave(self, rng: _Range, me: int, taken: bool) -> None:
        """This call is done with ``rng`` (``_state`` held): it stops computing under it, and
        the last user of a held byte gives it back to the kernel. ``taken``: the call held it
        (joined, or acquired), rather than failed to take it."""
        computing = rng.calls.get(self.call)
        if computing is not None and computing.thread == me:
            del rng.calls[self.call]
        left = _owned.get(me, 1) - 1
        if left:
            _owned[me] = left
        else:
            _owned.pop(me, None)
        if taken:
            rng.users -= 1
            if rng.users <= 0 and rng.state == _HELD:
                try:
                    if rng.file.fd is not None:
                        _unlock(rng.file.fd, rng.offset)
                finally:
                    rng.file.held -= 1
                    rng.state, rng.users = _IDLE, 0
        elif rng.state == _ACQUIRING and rng.acquirer == me:
            rng.state, rng.acquirer = _IDLE, None
        _forget_if_idle(rng)
        if _waiting:  # every thread waiting on _changed is in _waiting (_wait_in_process)
            _changed.notify_all()

    # --- between processes ----------------------------------------------------------------
    def _lock_kernel(self, rng: _Range, deadline: Optional[float]) -> Optional[str]:
        """Take the byte from the kernel (this thread owns ``rng`` in the process)."""
        lock_file = rng.file
        pause = _POLL_FIRST
        asked_at = None
        cycle_since = None
        while True:
            with _state:
                fd, fresh = lock_file.descriptor()
                lock_file.held += 1  # from now on the descriptor stays open
            taken = False
            try:
                _lock(fd, rng.offset, wait=False)
                taken = True
            except OSError as err:
                if err.errno not in _BUSY:
                    raise
            finally:
                if not taken:
                    with _state:
                        lock_file.held -= 1
            if taken:
                if lock_file.still_named(fresh):
                    return None
                self._drop_stale(lock_file, rng.offset)
                continue
            now = time.monotonic()
            if self.nested_safe and (asked_at is None
                                     or now - asked_at >= ANCESTOR_RECHECK_SECONDS):
                asked_at = now
                holder = _holder_pid(fd, rng.offset)
                if holder is not None and holder in _ancestors():
                    return (f"the lock {self.path} is held by process {holder}, an ancestor "
                            "of this one (it may be waiting for this process: a pool child of "
                            "the computing call)")
            if deadline is not None:
                if now >= deadline:
                    raise Timeout(self.path)
                time.sleep(min(pause, deadline - now))
                pause = min(pause * 2, _POLL_MAX)
                continue
            if self.nested_safe and not _process_owns_others():
                # While this process holds nothing else it cannot be part of a cycle of
                # processes; polling lets it see an ancestor that takes the lock later (rule
                # 2). Asked again every round: another thread may take a lock meanwhile and
                # then wait, in this process, behind this one.
                time.sleep(pause)
                pause = min(pause * 2, _POLL_MAX)
                continue
            # Block in the kernel, which reports a wait that would close a cycle (rule 4).
            with _state:
                fd, fresh = lock_file.descriptor()
                lock_file.held += 1
            taken = False
            try:
                _lock(fd, rng.offset, wait=True)
                taken = True
            except OSError as err:
                if err.errno != errno.EDEADLK:
                    raise
            finally:
                if not taken:
                    with _state:
                        lock_file.held -= 1
            if not taken:  # EDEADLK
                now = time.monotonic()
                cycle_since = cycle_since or now
                bound = (CALL_CYCLE_CONFIRM_SECONDS if rng.offset > 0 and _only_call_locks_held()
                         else CYCLE_CONFIRM_SECONDS)
                if now - cycle_since >= bound:
                    return (f"waiting for the lock {self.path} would close a cycle of "
                            "processes that wait for each other's locks")
                time.sleep(_POLL_FIRST * 10)
                continue
            if lock_file.still_named(False):
                return None
            self._drop_stale(lock_file, rng.offset)

    def _drop_stale(self, lock_file: _LockFile, offset: int) -> None:
        """The lock file was deleted or replaced: our lock is on an inode nobody else opens.
        Drop it, and open what the path names now on the next attempt."""
        with _state:
            _unlock(lock_file.fd, offset)
            lock_file.held -= 1
            closed = lock_file.close_if_idle()
            if closed:
                _closed(lock_file)
        if not closed:  # other threads hold bytes of the stale file: wait for them to finish
            time.sleep(_POLL_MAX)


def _lock(fd: int, offset: int, wait: bool) -> None:
    fcntl.lockf(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset,
                os.SEEK_SET)


def _unlock(fd: int, offset: int) -> None:
    try:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)
    except OSError:
        pass


def _process_owns_others() -> bool:
    """Whether threads of this process compute more than the one call being locked."""
    with _state:
        return sum(_owned.values()) > 1


def _only_call_locks_held() -> bool:
    """Whether every byte this process holds in the kernel is a ``call`` lock (offset > 0)."""
    with _state:
        return all(rng.offset > 0 for rng in _ranges.values() if rng.state == _HELD)


def _forget_if_idle(rng: _Range) -> None:
    """Bound the table: a byte nobody uses or waits for is forgotten (one per call)."""
    if rng.state == _IDLE and not rng.calls and not rng.waiters:
        key = (rng.file.path, rng.offset)
        if _ranges.get(key) is rng:
            del _ranges[key]


def _cycle_through(me: int, thread: Optional[int]) -> bool:
    """Whether ``thread`` waits, through threads of this process, for ``me`` (``_state``
    held)."""
    seen: Set[int] = set()
    while thread is not None and thread not in seen:
        if thread == me:
            return True
        seen.add(thread)
        awaited = _waiting.get(thread)
        thread = awaited[0].awaited_thread(awaited[1]) if awaited is not None else None
    return False


if sys.platform.startswith("linux"):
    _FLOCK = struct.Struct("hhqqi4x")  # l_type, l_whence, l_start, l_len, l_pid
    _FIELDS = ("type", "whence", "start", "len", "pid")
elif sys.platform == "darwin" or "bsd" in sys.platform:
    _FLOCK = struct.Struct("qqihh")  # l_start, l_len, l_pid, l_type, l_whence
    _FIELDS = ("start", "len", "pid", "type", "whence")
else:
    _FLOCK = None


def conflicting_lock(fd: int, offset: int) -> Optional[Tuple[int, int]]:
    """``(lock type, pid)`` of a POSIX record lock another process holds on the byte at
    ``offset`` of ``fd``'s file (``F_GETLK``), or None: none, or this platform's ``struct
    flock`` is not known here."""
    if _FLOCK is None:
        return None
    values = {"type": fcntl.F_WRLCK, "whence": os.SEEK_SET, "start": offset, "len": 1,
              "pid": 0}
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, _FLOCK.pack(*(values[f] for f in _FIELDS)))
    except OSError:
        return None
    found = dict(zip(_FIELDS, _FLOCK.unpack(answer)))
    if found["type"] == fcntl.F_UNLCK:
        return None
    return found["type"], found["pid"]


def _holder_pid(fd: int, offset: int) -> Optional[int]:
    """The process holding the byte, or None where that cannot be told."""
    found = conflicting_lock(fd, offset)
    return found[1] if found is not None and found[1] > 0 else None


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:  # no /proc (macOS): ask ps; only ever on the contended path
        import subprocess
        out = subprocess.run(["ps", "-o", "ppid=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5)
        return int(out.stdout.strip() or 0)
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


def _ancestors() -> Set[int]:
    """This process's parent, its parent, ... (not init)."""
    found: Set[int] = set()
    pid = os.getppid()
    while pid > 1 and pid not in found and len(found) < 128:
        found.add(pid)
        pid = _parent_of(pid)
    return found


# --- a plain lock on a whole lock file ------------------------------------------------------
class ScopeLock:
    """A whole-file lock (byte 0) that simply waits: for maintenance and tests. Reentrant in
    its thread; ``acquire`` returns the lock itself."""

    __slots__ = ("path", "timeout", "_holds")

    def __init__(self, path: str, timeout: Optional[float] = None) -> None:
        self.path = path
        self.timeout = timeout
        self._holds = []

    @property
    def _fd(self) -> Optional[int]:
        """The process's descriptor of the lock file (tests check its flags)."""
        lock_file = _files.get(self.path)
        return lock_file.fd if lock_file is not None else None

    def acquire(self) -> "ScopeLock":
        hold = ComputeLock(self.path, 0, self.timeout, nested_safe=False)
        hold.acquire()
        self._holds.append(hold)
        return self

    def release(self) -> None:
        if not self._holds:
            raise RuntimeError(f"release of the lock {self.path}, which is not held")
        self._holds.pop().release()

    def __enter__(self) -> "ScopeLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def scope_lock(path: str, timeout: Optional[float] = None) -> ScopeLock:
    """A plain, waiting lock on the whole of ``path`` (see :class:`ScopeLock`)."""
    return ScopeLock(path, timeout)


def compute_lock(path: str, offset: int = 0, timeout: Optional[float] = None,
                 call: Hashable = None) -> ComputeLock:
    """The compute lock of a miss: ``acquire()`` returns None once held, or the reason the call
    computes without it (see the rules in the module docstring); ``timeout`` as
    ``lock_timeout``; ``call`` identifies the call (its store and digest): threads of this
    process wait for each other only to compute the same call."""
    return ComputeLock(path, offset, timeout, call)


# --- bounded descriptors ------------------------------------------------------------------------
_open_files: Dict[str, _LockFile] = {}  # those with an open descriptor, oldest first


def _opened(lock_file: _LockFile) -> None:
    """Count a newly opened descriptor; close the oldest idle ones beyond the budget
    (``_state`` held). Held ones are never closed."""
    _open_files.pop(lock_file.path, None)
    _open_files[lock_file.path] = lock_file
    excess = len(_open_files) - MAX_OPEN_LOCK_FILES
    if excess <= 0:
        return
    for other in list(_open_files.values()):
        if other is not lock_file and other.close_if_idle():
            del _open_files[other.path]
            excess -= 1
            if excess <= 0:
                break


def _closed(lock_file: _LockFile) -> None:
    if _open_files.get(lock_file.path) is lock_file:
        del _open_files[lock_file.path]


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _forget_after_fork() -> None:
    """In a forked child: no POSIX lock was inherited; close the inherited descriptors and
    forget the table (it may name parent threads that do not exist here)."""
    global _state, _changed
    for lock_file in list(_files.values()):
        if lock_file.fd is not None:
            _close_quietly(lock_file.fd)
        lock_file.fd = lock_file.identity = None
        lock_file.held = 0
    for rng in _ranges.values():  # holds the child still releases unlock nothing
        rng.calls.clear()
        rng.state, rng.acquirer, rng.users = _IDLE, None, 0
    _files.clear()
    _ranges.clear()
    _owned.clear()
    _waiting.clear()
    _open_files.clear()
    _state = threading.Lock()
    _changed = threading.Condition(_state)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _apply_settings(settings: "_settings.EngineSettings") -> None:
    """Copy what this module needs of newly installed settings into its own names."""
    global MAX_OPEN_LOCK_FILES, RECHECK_SECONDS
    MAX_OPEN_LOCK_FILES = (settings.max_open_lock_files if settings.max_open_lock_files
                           is not None else _descriptor_budget())
    RECHECK_SECONDS = settings.lock_recheck_seconds


_settings.on_install(_apply_settings)
