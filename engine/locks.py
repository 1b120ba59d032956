"""Lock scopes for the miss path: ``call`` (one bucket), ``func`` (one leaf), ``global`` (one
project).

A miss holds its scope's lock from the second lookup until the result is stored, so processes
that share a lock never compute the same result twice. Hits never take a lock.

The locks are ``filelock`` locks (``flock`` underneath): the kernel releases them when a process
dies, so a crash never leaves a stale lock behind. One ``FileLock`` object is kept per path per
process, which makes nested acquisition by the same thread reentrant (a cached function calling
another one under the ``global`` scope) while other threads and processes wait.
"""

import enum
import os
import threading
from typing import Dict, Optional

from filelock import FileLock, Timeout

from .filesystem import make_private_dirs

__all__ = ["LockScope", "Timeout", "lock_path", "scope_lock"]

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
        return os.path.join(leaf_path, LOCKS_FOLDER, f"{bucket}.lock")
    if scope is LockScope.FUNC:
        return os.path.join(leaf_path, "func.lock")
    return os.path.join(project_root, "global.lock")


_locks: Dict[str, FileLock] = {}
_registry_lock = threading.Lock()


def scope_lock(path: str, timeout: Optional[float] = None) -> FileLock:
    """The process's lock object for ``path``; use it as a context manager.

    ``timeout=None`` waits for as long as the holder computes; a number raises
    :class:`filelock.Timeout` after that many seconds.
    """
    lock = _locks.get(path)
    if lock is None:
        with _registry_lock:
            lock = _locks.get(path)
            if lock is None:
                make_private_dirs(os.path.dirname(path))
                lock = FileLock(path, mode=0o600)
                _locks[path] = lock
    lock.timeout = -1 if timeout is None else timeout
    return lock


def _forget_after_fork() -> None:
    """A child starts with no lock objects: the parent's descriptors and counters are not its."""
    global _registry_lock
    _locks.clear()
    _registry_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
