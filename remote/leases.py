"""Leases: who computes a call that no machine has stored yet, kept in the bucket itself.

A miss in the shared tier takes the local lock first (one process per machine goes on), then a
*lease* on the call, so that one machine computes while the others wait for its result. A lease
is a small object beside the result (``<result name>.lease``):

* **Taken** with a conditional create (``If-None-Match: *``): of any number of machines racing,
  exactly one creates it. Waiters then only read it, and write again only when it is gone or
  stale: on SeaweedFS, writers contending for one object wait for each other in steps of about
  a second, which would hold up the holder's renewals.
* **Renewed** while its holder computes, every ``ttl / 3``, with ``If-Match: <etag>``: each
  renewal writes a new body (a counter), hence a new ETag, so that a waiter's takeover judged on
  what it read before a renewal fails. A refused renewal means another took the lease over: the
  holder stops renewing (it still finishes; the first result uploaded wins).
* **Taken over** when its holder is gone: on another machine, when the lease has not been
  renewed for longer than its time-to-live, *judged by the server's clock* (``Date`` of the
  read minus ``Last-Modified`` of the lease: both from the server, so skewed machine clocks do
  not matter; HTTP dates have a resolution of one second, so ``ttl`` is at least 2 s and a
  live holder, which renews every ``ttl / 3``, never looks older than ``ttl / 3 + 1 s``). On
  this machine, at once when the holder's process is dead. The takeover is a conditional
  replace (``If-Match`` the ETag read): of several waiters, one wins.
* **Never waited for on its own machine**: a lease held by a live process of this machine is
  not waited for (the local lock already serialises the machine's processes, so the holder is
  an ancestor of this process, a nested call, or a process that does not share our local lock);
  :meth:`S3Lease.acquire` returns the reason and the caller computes without it, as the
  engine's locks do: at worst a duplicated computation, never a hang.
* **Released** by deleting it (``If-Match`` its last ETag: never someone else's lease).

The body is JSON: ``holder``, ``machine``, ``pid``, ``taken`` (the holder's clock, informative
only), ``ttl`` (the holder's: a waiter judges expiry by the time-to-live the holder renews for,
so machines configured differently agree) and ``renewal`` (the counter). A lease of this very
process is either held by another of its threads or frames (not waited for) or left behind by
a release whose delete failed (taken over at once).

A waiter polls with backoff (0.05 s doubling to 1 s, +-20 % jitter so that waiters spread out),
asking each time whether the result has arrived. After ``timeout`` it raises the engine's
:class:`~persist_to_disk.engine.locks.Timeout`. :class:`~.client.RemoteUnavailable` propagates:
the tier then computes without the lease.

Fork: a child never renews or deletes its parent's leases (they belong to the parent's pid, and
the renewal thread does not exist in the child).
"""

import json
import os
import random
import socket
import threading
import time
from typing import Callable, Dict, Optional, Protocol, Tuple, Union, runtime_checkable

from ..engine.interface import ComputeLock
from ..engine.locks import Timeout
from .client import RemoteUnavailable, S3Client

__all__ = ["LEASE_SUFFIX", "MIN_TTL", "LockService", "S3Lease", "S3LockService",
           "default_machine"]

LEASE_SUFFIX = ".lease"
#: The shortest time-to-live: the server's clock has a resolution of one second.
MIN_TTL = 2.0
_FIRST_DELAY = 0.05
_MAX_DELAY = 1.0
_JITTER = 0.2
#: How long release() waits for a renewal under way (normally milliseconds).
_RELEASE_WAIT = 3.0

# The leases this process holds, by (endpoint, bucket, lease object): a lease found held by our
# own pid is either one of these (another thread's or frame's: not waited for) or a leftover of
# ours whose delete failed (taken over).
_HELD: Dict[Tuple[str, str, str], "S3Lease"] = {}
_HELD_LOCK = threading.Lock()


def _forget_after_fork() -> None:
    global _HELD_LOCK
    _HELD_LOCK = threading.Lock()
    _HELD.clear()  # the parent's leases are not the child's


os.register_at_fork(after_in_child=_forget_after_fork)


@runtime_checkable
class LockService(Protocol):
    """Where leases live (S3 itself, or a Redis/Valkey server)."""

    def lease(self, name: str, *, timeout: Optional[float],
              result_exists: Callable[[], bool]) -> ComputeLock:
        """The lease of the result object ``name``; ``acquire()`` returns early (None, lease
        not held) once ``result_exists()`` says the result is there."""

    def notify(self, name: str) -> None:
        """A result was uploaded under ``name`` (wakes waiters where the service can)."""


def default_machine() -> str:
    """``"<hostname>/<machine id>"`` of this machine (``/etc/machine-id``, else the boot id,
    else the hostname alone): what tells this machine's processes from other machines'."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id",
                 "/proc/sys/kernel/random/boot_id"):
        try:
            with open(path, encoding="ascii") as file:
                ident = file.read().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if ident:
            return f"{socket.gethostname()}/{ident}"
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is alive (a zombie is not: it holds nothing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
        return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] != b"Z"
    except (OSError, ValueError):
        return True


class S3LockService:
    """Leases kept as objects of the bucket of ``client``.

    ``holder`` names this process's user (informative), ``machine`` this machine
    (``"<hostname>/<machine id>"``; empty: :func:`default_machine`), ``ttl`` how long a lease
    lives without renewal (seconds, at least :data:`MIN_TTL`).
    """

    def __init__(self, client: S3Client, *, holder: str, machine: str, ttl: float) -> None:
        if not ttl >= MIN_TTL:
            raise ValueError(f"the lease time-to-live must be at least {MIN_TTL} seconds (the "
                             f"server's clock counts whole seconds), not {ttl!r}")
        self.client = client
        self.holder = holder
        self.machine = machine or default_machine()
        self.ttl = float(ttl)

    def lease(self, name: str, *, timeout: Optional[float],
              result_exists: Callable[[], bool]) -> "S3Lease":
        return S3Lease(self, name, timeout, result_exists)

    def notify(self, name: str) -> None:
        """Nothing to do: waiters on S3 poll for the result."""


class S3Lease:
    """The lease of one call (a :class:`~persist_to_disk.engine.interface.ComputeLock`).
    ``path`` is ``s3://<bucket>/<result name>.lease``. Take it once, release it once (release
    is idempotent)."""

    def __init__(self, service: S3LockService, name: str, timeout: Optional[float],
                 result_exists: Callable[[], bool]) -> None:
        self._service = service
        self._client = service.client
        self._object = name + LEASE_SUFFIX
        self.path = f"s3://{self._client.bucket}/{self._object}"
        self._timeout = timeout
        self._result_exists = result_exists
        self._key = (self._client.endpoint, self._client.bucket, self._object)
        self._pid: Optional[int] = None  # the process holding it (None: not held)
        self._etag = ""
        self._lost = False  # a renewal was refused: someone else holds it now
        self._away = False  # the last renewal could not reach the server
        self._taken = 0.0
        self._state = threading.Lock()  # guards _etag/_lost between renewal and release
        self._stop: Optional[threading.Event] = None
        self._thread: Optional[threading.Thread] = None

    def __repr__(self) -> str:
        return f"S3Lease({self.path!r}, held={self._pid == os.getpid()})"

    def _body(self, renewal: int) -> bytes:
        return json.dumps({"holder": self._service.holder, "machine": self._service.machine,
                           "pid": os.getpid(), "taken": self._taken, "ttl": self._service.ttl,
                           "renewal": renewal}, sort_keys=True).encode("utf-8")

    # -- acquire ----------------------------------------------------------------------------

    def acquire(self) -> Optional[str]:
        """Take the lease: None once taken, or once the result exists (then it is not held);
        a reason (str) when the lease is held by a live process of this machine and the
        caller should compute without it. Raises :class:`Timeout` after the timeout and
        :class:`RemoteUnavailable` if the server cannot be used."""
        if self._pid == os.getpid():
            raise RuntimeError(f"the lease {self.path} is already held by this process")
        client = self._client
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        delay = _FIRST_DELAY
        create = True  # the lease may be absent: try to create it
        looked_again = False
        watched: Optional[Tuple[str, float]] = None  # (etag, when first seen) without a Date
        while True:
            self._taken = time.time()
            body = self._body(0)
            if create:
                created = client.put(self._object, body, if_none_match=True)
                if created is not None:
                    self._hold(created.etag)
                    return None
            if self._result_exists():
                return None
            # Waiters read the lease and write only when it is gone or stale: a conditional
            # write waits for the server's lock on the object, and SeaweedFS makes writers
            # that contend for it wait in steps of 1 s, which would delay the holder's renewals.
            found = client.get_bytes(self._object)
            if found is None:
                create = True
                if not looked_again:  # released between our two requests: try again now
                    looked_again = True
                    continue
            else:
                create = looked_again = False
                data, info = found
                verdict, watched = self._judge(data, info, watched)
                if isinstance(verdict, str):
                    return verdict
                if verdict:
                    taken = client.put(self._object, body, if_match=info.etag)
                    if taken is not None:
                        self._hold(taken.etag)
                        return None
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise Timeout(self.path)
            pause = delay * random.uniform(1.0 - _JITTER, 1.0 + _JITTER)
            if deadline is not None:
                pause = min(pause, deadline - now)
            time.sleep(pause)
            delay = min(delay * 2, _MAX_DELAY)

    def _judge(self, data: bytes, info, watched: Optional[Tuple[str, float]]
               ) -> Tuple[Union[bool, str], Optional[Tuple[str, float]]]:
        """Whether to take the lease read as ``data``/``info`` over (True), wait (False), or
        compute without it (a reason)."""
        try:
            holder = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            holder = None
        if not isinstance(holder, dict):
            holder = {}  # not a lease we can read: judged by its age alone
        pid = holder.get("pid")
        if holder.get("machine") == self._service.machine and isinstance(pid, int):
            if pid == os.getpid():
                with _HELD_LOCK:
                    mine = _HELD.get(self._key)
                if mine is not None and mine is not self:
                    return ("the call's remote lease is held by this process (another thread, "
                            "or an outer call of the same call)"), watched
                return True, watched  # a leftover of ours (its delete failed)
            if not _pid_alive(pid):
                return True, watched
            return f"the call's remote lease is held by process {pid} of this machine", watched
        ttl = holder.get("ttl")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            ttl = self._service.ttl
        if info.server_now:
            return info.server_now - info.last_modified > ttl, watched
        # No Date header: the lease is stale once its ETag has not changed for ttl seconds of
        # our own (monotonic) clock.
        now = time.monotonic()
        if watched is None or watched[0] != info.etag:
            watched = (info.etag, now)
        return now - watched[1] > ttl, watched

    # -- holding ----------------------------------------------------------------------------

    def _hold(self, etag: str) -> None:
        self._pid = os.getpid()
        self._etag = etag
        self._lost = self._away = False
        with _HELD_LOCK:
            _HELD[self._key] = self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, args=(self._stop, etag),
                                        name=f"ptd-lease {self._object}", daemon=True)
        self._thread.start()

    def _renew(self, stop: threading.Event, etag: str) -> None:
        """Renew every ttl/3 until stopped, or until a renewal is refused (taken over)."""
        interval = self._service.ttl / 3.0
        renewal = 0
        while not stop.wait(interval):
            renewal += 1
            try:
                info = self._client.put(self._object, self._body(renewal), if_match=etag)
            except Exception:  # noqa: BLE001 -- the server is away: try again next time
                self._away = True
                continue
            with self._state:
                self._away = False
                if info is None:
                    self._lost = True  # another took it over (or it was deleted)
                    return
                etag = self._etag = info.etag  # release deletes the newest version

    def release(self) -> None:
        """Stop renewing and delete the lease if this process still holds it (errors are
        ignored: an undeleted lease expires). Idempotent; in a forked child, does nothing to
        the parent's lease. Never waits on a server that is away: if the last renewal failed,
        or one is still under way after a few seconds, the lease is left to expire (waiters
        look for the result before the lease anyway)."""
        if self._pid != os.getpid():
            self._pid = None  # not held, or the parent's (fork): never touched
            return
        stop, thread = self._stop, self._thread
        if stop is not None:
            stop.set()
        stuck = False
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=min(self._service.ttl, _RELEASE_WAIT))
            stuck = thread.is_alive()
        with self._state:
            etag, leave = self._etag, self._lost or self._away or stuck
            self._pid = None
            self._stop = self._thread = None
        with _HELD_LOCK:
            if _HELD.get(self._key) is self:
                del _HELD[self._key]
        if leave:
            return
        try:
            self._client.delete(self._object, if_match=etag)
        except RemoteUnavailable as err:
            if err.status in (400, 501):  # conditional deletes not supported here
                try:
                    self._client.delete(self._object)
                except Exception:  # noqa: BLE001
                    pass
        except Exception:  # noqa: BLE001 -- it expires
            pass
