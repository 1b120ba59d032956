"""Leases and wake-ups in Redis/Valkey: the optional lock service of the shared tier.

Why a second lock service
-------------------------
Leases kept as objects in the bucket (:mod:`.leases`) need nothing but S3, but a waiter can
only poll them (a round trip of several milliseconds, with a backoff up to a second), and a
holder that died is judged by object timestamps. A team that already runs Redis or Valkey can
name it (``redis://...``): a lease is then one key that Redis expires by itself, and a waiter
is woken by a message the moment the holder is done. Redis keeps everything in RAM and refuses
values over 512 MiB, so it is never a value store: results stay in S3.

How a lease works
-----------------
* Take: ``SET ptd:lease:<name> <value> NX PX <ttl ms>``. The value is JSON naming the holder,
  its machine and process, and a random token, so that only the very acquisition that set it
  can renew or delete it.
* Keep: every third of the time-to-live a Lua script extends the key *only if it still holds
  our value* (a script runs atomically and touches one key, so it works in a cluster too). One
  renewal thread per process serves every lease the process holds. A holder that dies stops
  renewing and Redis drops the key after the time-to-live: expiry is judged by Redis's clock
  alone, never by the machines' clocks.
* Give back: a Lua compare-and-delete (a lease that expired and was taken over is left to its
  new holder), then ``PUBLISH ptd:done:<name>``: waiters wake at once. :meth:`RedisLockService.
  notify` publishes the same way when a result has been uploaded.
* Wait: a waiter subscribes to the lease's channel *before* trying again (so a release between
  its attempt and its wait is not missed), then loops: try ``SET NX``; if the result already
  exists, return (the caller looks again and finds it); if the holder is a process of this
  machine, decide at once (below); else wait for a message for at most the current backoff
  interval (50 ms doubling to 1 s, +-20 % jitter: a lost message, or a holder that died, costs
  at most that much), and go round again.
* Same machine: the holder's value names its machine. A dead process of this machine (no such
  pid) cannot renew, so its lease is deleted (compare-and-delete) and taken over now, without
  waiting for the time-to-live. A live process of this machine holding it is never waited for:
  the local lock already lets one process per machine compute a call, so that holder is an
  ancestor of a nested call (a pool child of the computing call), and waiting could hang.
  ``acquire`` returns the reason instead and the call computes without the lease.

Faults
------
Every Redis error (refused, timed out, authentication, cluster down) becomes
:class:`~.client.RemoteUnavailable` naming the server (password hidden) and the cause. Sockets
have connect and read timeouts and redis-py retries once without backoff, so a dead server
costs seconds, never a hang. Renewals that fail are retried at the next interval (if the server
stays away, the lease expires: the cost is at most a duplicated computation, never a wrong
result, since first-writer-wins in S3 decides which result is kept).

Fork: connections are per process (a child opens its own and never touches the parent's
sockets), and a child never renews or deletes a lease its parent took.

redis-py is imported when a service is made, so the core install does not need it
(``pip install "persist_to_disk[redis]"``).
"""

import json
import os
import random
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..engine.locks import Timeout
from .client import RemoteUnavailable
from .leases import _pid_alive, default_machine

__all__ = ["RedisLockService", "RedisLease", "LEASE_KEY_PREFIX", "DONE_CHANNEL_PREFIX",
           "parse_lock_url"]

LEASE_KEY_PREFIX = "ptd:lease:"
DONE_CHANNEL_PREFIX = "ptd:done:"
BACKOFF_FIRST = 0.05  # seconds a waiter waits for a message before looking again
BACKOFF_MAX = 1.0
BACKOFF_JITTER = 0.2  # +-20 %: waiters that started together do not retry together

_RENEW = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
          "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end")
_DELETE = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
           "return redis.call('DEL', KEYS[1]) else return 0 end")
_TRUE_WORDS = ("1", "true", "yes", "on")
_INSTALL_HINT = 'pip install "persist_to_disk[redis]"'


def parse_lock_url(url: str) -> Tuple[str, bool, str]:
    """``(url for redis-py, cluster, url to show)`` of a lock service URL.

    Accepted: ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS), and a Redis
    Cluster as ``redis+cluster://host:port`` (``rediss+cluster://``) or ``...?cluster=1``: one
    reachable node is enough, the client discovers the others. The URL to show hides the
    password. ValueError naming the URL for anything else.
    """
    text = str(url).strip()
    try:
        parts = urlsplit(text)
        _port = parts.port  # reading it raises ValueError on a bad port
    except ValueError as err:
        raise ValueError(f"lock service URL {_hide_password(text)!r} is not a URL: {err}") \
            from None
    scheme = parts.scheme.lower()
    cluster = False
    if scheme in ("redis+cluster", "rediss+cluster"):
        cluster, scheme = True, scheme.split("+", 1)[0]
    elif scheme not in ("redis", "rediss"):
        raise ValueError(
            f"lock service URL {_hide_password(text)!r} must start with redis:// or rediss:// "
            "(redis://host:port/db; a Redis Cluster: redis+cluster://host:port)")
    if not parts.hostname:
        raise ValueError(f"lock service URL {_hide_password(text)!r} names no host "
                         "(redis://host:port/db)")
    query: List[Tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() == "cluster":
            cluster = value.strip().lower() in _TRUE_WORDS
        else:
            query.append((name, value))
    path = parts.path
    if cluster:
        database = path.strip("/")
        if database not in ("", "0") or any(name == "db" and value not in ("", "0")
                                            for name, value in query):
            raise ValueError(f"lock service URL {_hide_password(text)!r}: a Redis Cluster has "
                             "only database 0; drop the database from the URL")
        path = ""
        query = [(name, value) for name, value in query if name != "db"]
    redis_url = urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))
    shown_scheme = f"{scheme}+cluster" if cluster else scheme
    shown = urlunsplit((shown_scheme, _safe_netloc(parts), path, "", ""))
    return redis_url, cluster, shown


def _safe_netloc(parts) -> str:
    netloc = parts.netloc
    if parts.password is None:
        return netloc
    host = netloc.rpartition("@")[2]
    return f"{parts.username or ''}:***@{host}"


def _hide_password(text: str) -> str:
    try:
        return urlunsplit(urlsplit(text)._replace(netloc=_safe_netloc(urlsplit(text))))
    except ValueError:
        return "<a URL that cannot be read>"


class RedisLockService:
    """Leases and wake-ups on a Redis/Valkey server or Redis Cluster (module docstring).

    ``holder`` names who takes the leases (shown to others, e.g. "user@host"), ``machine``
    this machine ("<hostname>/<id>"; leases of dead processes of the same machine are taken
    over at once; empty: :func:`~.leases.default_machine`, as for leases in S3), ``ttl`` how
    many seconds a lease lives unrenewed. ``namespace_prefix`` goes in front of every key and
    channel, so that several teams (or test runs) can share one server. No connection is made
    until the first lease. ``connect_timeout`` and ``read_timeout`` (seconds) bound every
    command, so a dead server costs seconds, never a hang.
    """

    def __init__(self, url: str, *, holder: str, machine: str, ttl: float,
                 namespace_prefix: str = "", connect_timeout: float = 3.0,
                 read_timeout: float = 10.0) -> None:
        try:
            import redis  # noqa: F401  (lazily: the core install does not need it)
            import redis.backoff
            import redis.cluster
            import redis.exceptions
            import redis.retry
        except ImportError as err:
            raise ImportError(f"the Redis lock service ({url.split('://', 1)[0]}://...) needs "
                              f"the redis package: {_INSTALL_HINT}") from err
        if not ttl > 0:
            raise ValueError(f"the lease time-to-live must be positive, not {ttl!r}")
        self._redis = redis
        self._errors = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)
        self.url, self.cluster, self.shown_url = parse_lock_url(url)
        self.holder = str(holder)
        self.machine = str(machine) or default_machine()
        self.ttl = float(ttl)
        self.ttl_ms = max(1, int(round(self.ttl * 1000)))
        self.renew_interval = self.ttl / 3
        self.namespace_prefix = namespace_prefix
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._client_pid = 0
        self._client_obj: Any = None
        self._client_lock = threading.Lock()
        self._renewer_obj: Optional[_Renewer] = None

    def __repr__(self) -> str:
        return f"RedisLockService({self.shown_url!r}, ttl={self.ttl})"

    # --- names ---------------------------------------------------------------------------
    def key(self, name: str) -> str:
        """The Redis key of the lease of the result ``name``."""
        return f"{self.namespace_prefix}{LEASE_KEY_PREFIX}{name}"

    def channel(self, name: str) -> str:
        """The channel on which the lease of ``name`` is announced released or done."""
        return f"{self.namespace_prefix}{DONE_CHANNEL_PREFIX}{name}"

    # --- the LockService protocol --------------------------------------------------------
    def lease(self, name: str, *, timeout: Optional[float],
              result_exists: Callable[[], bool]) -> "RedisLease":
        """The lease of computing the result ``name`` (a ComputeLock: ``acquire``/``release``).
        ``result_exists`` tells a waiter that the result arrived meanwhile."""
        return RedisLease(self, name, timeout, result_exists)

    def notify(self, name: str) -> None:
        """Wake the waiters for ``name``: its result has just been uploaded."""
        client = self.client()
        try:
            client.publish(self.channel(name), b"done")
        except self._errors as err:
            raise self.unavailable("publishing that a result is done", err) from err

    # --- connections -----------------------------------------------------------------------
    def client(self) -> Any:
        """This process's redis-py client (made after a fork anew: a child never uses the
        sockets of its parent, whose replies would interleave with its own)."""
        pid = os.getpid()
        client = self._client_obj
        if client is not None and self._client_pid == pid:
            return client
        if self._client_pid != pid:
            # a lock held by a parent thread at fork time would stay held in the child forever
            self._client_lock = threading.Lock()
        with self._client_lock:
            if self._client_obj is not None and self._client_pid == pid:
                return self._client_obj
            redis = self._redis
            options = dict(socket_connect_timeout=self.connect_timeout,
                           socket_timeout=self.read_timeout,
                           # one quick retry covers a pooled connection the server closed
                           # (a restart); redis-py's default (10, backing off) takes minutes
                           retry=redis.retry.Retry(redis.backoff.NoBackoff(), 1))
            try:
                if self.cluster:  # connects now: reads the cluster's map of slots
                    client = redis.cluster.RedisCluster.from_url(self.url, **options)
                else:
                    client = redis.Redis.from_url(self.url, **options)
            except self._errors as err:
                raise self.unavailable("connecting", err) from err
            # the parent's client (if any) is dropped, not closed: closing would shut down
            # sockets the parent still uses (redis-py's own pid checks skip that too)
            self._client_obj, self._client_pid = client, pid
            return client

    def unavailable(self, doing: str, err: BaseException) -> RemoteUnavailable:
        """The error for a Redis failure while ``doing`` something."""
        detail = str(err).strip() or type(err).__name__
        return RemoteUnavailable(
            f"the lock service {self.shown_url} failed while {doing}: {detail}. Check that the "
            "server runs and that this machine can reach it (host, port, password, TLS).")

    def renewer(self) -> "_Renewer":
        renewer = self._renewer_obj
        if renewer is None or renewer.pid != os.getpid():
            # a child starts empty: it never renews its parent's leases
            renewer = self._renewer_obj = _Renewer(self)
        return renewer

    def lease_value(self) -> str:
        """A new lease value: who holds it, and a token only this acquisition knows."""
        return json.dumps({"holder": self.holder, "machine": self.machine, "pid": os.getpid(),
                           "taken": time.time(), "token": uuid.uuid4().hex},
                          separators=(",", ":"))


class RedisLease:
    """The lease of one computation (a ComputeLock); see the module docstring.

    ``acquire()`` returns None when the lease is held, or when the result appeared meanwhile
    (nothing held then: the caller looks again and finds it), or the reason the call computes
    without it (its holder is a live process of this machine). It raises
    :class:`~persist_to_disk.engine.locks.Timeout` after ``timeout`` seconds (None: waits as
    long as the holder computes) and :class:`~.client.RemoteUnavailable` on Redis failures.
    ``lost`` turns True if a renewal found the lease taken by someone else.
    """

    def __init__(self, service: RedisLockService, name: str, timeout: Optional[float],
                 result_exists: Callable[[], bool]) -> None:
        self.service = service
        self.name = name
        self.key = service.key(name)
        self.channel = service.channel(name)
        self.path = f"{service.shown_url} key {self.key}"
        self.timeout = timeout
        self.result_exists = result_exists
        self.lost = False
        self._value: Optional[str] = None
        self._pid = 0

    def __repr__(self) -> str:
        return f"RedisLease({self.path!r}, held={self._value is not None})"

    def acquire(self) -> Optional[str]:
        """Take the lease (see the class docstring)."""
        if self._value is not None and self._pid == os.getpid():
            raise RuntimeError(f"the lease {self.path} is already acquired by this object")
        self._value = None
        service = self.service
        deadline = None if self.timeout is None else time.monotonic() + max(self.timeout, 0.0)
        value = service.lease_value()
        client = service.client()
        if self._take(client, value):
            return None
        pubsub = None
        backoff = BACKOFF_FIRST
        try:
            try:
                pubsub = client.pubsub()
                pubsub.subscribe(self.channel)
                self._await_subscribed(pubsub)
            except service._errors as err:
                raise service.unavailable(f"subscribing to {self.channel}", err) from err
            while True:
                if self._take(client, value):
                    return None
                if self.result_exists():
                    return None
                try:
                    current = client.get(self.key)
                except service._errors as err:
                    raise service.unavailable(f"reading {self.key}", err) from err
                if current is None:
                    continue  # released or expired between the two commands: try again now
                verdict = self._judge(client, current)
                if verdict is _TAKEN_OVER:
                    continue
                if verdict is not None:
                    return verdict
                wait = backoff * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise Timeout(self.path)
                    wait = min(wait, left)
                try:
                    self._wait(pubsub, wait)
                except service._errors as err:
                    raise service.unavailable(f"waiting on {self.channel}", err) from err
                backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            if pubsub is not None:
                try:
                    pubsub.close()
                except Exception:  # a broken connection is dropped anyway
                    pass

    def release(self) -> None:
        """Give the lease back and wake the waiters (idempotent; errors are ignored: a lease
        not deleted expires after its time-to-live). In a forked child, a lease its parent
        took is only forgotten."""
        value, self._value = self._value, None
        if value is None or self._pid != os.getpid():
            return
        service = self.service
        service.renewer().remove(self)
        try:
            client = service.client()
            client.eval(_DELETE, 1, self.key, value)
            client.publish(self.channel, b"released")
        except (RemoteUnavailable, *service._errors):
            pass

    def __enter__(self) -> "RedisLease":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    # --- steps ------------------------------------------------------------------------------
    def _take(self, client: Any, value: str) -> bool:
        service = self.service
        try:
            taken = client.set(self.key, value, nx=True, px=service.ttl_ms)
        except service._errors as err:
            raise service.unavailable(f"taking {self.key}", err) from err
        if not taken:
            return False
        self._value, self._pid, self.lost = value, os.getpid(), False
        service.renewer().add(self)
        return True

    def _judge(self, client: Any, current: bytes) -> Any:
        """What to do about the holder's value ``current``: None (wait), ``_TAKEN_OVER`` (a dead
        process of this machine held it: deleted, try again now), or the reason not to wait."""
        service = self.service
        try:
            info = json.loads(current)
            machine, pid = info["machine"], int(info["pid"])
        except (ValueError, TypeError, KeyError):
            return None  # not a lease of ours: it expires (or is deleted) in its time
        if machine != service.machine:
            return None
        if pid == os.getpid():
            return (f"the call's remote lease ({self.path}) is held by this process: a "
                    "nested call of the same computation")
        if _pid_alive(pid):
            return (f"the call's remote lease ({self.path}) is held by process {pid} of this "
                    "machine")
        try:
            client.eval(_DELETE, 1, self.key, current)
        except service._errors as err:
            raise service.unavailable(f"taking over {self.key} from dead process {pid}",
                                      err) from err
        return _TAKEN_OVER

    def _await_subscribed(self, pubsub: Any) -> None:
        """Read until the server confirms the subscription: a release published after this
        point reaches us. A message that arrives first is fine (the loop looks again anyway)."""
        end = time.monotonic() + self.service.read_timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise self.service._redis.exceptions.TimeoutError(
                    "no confirmation of the subscription")
            message = pubsub.get_message(timeout=left)
            if message is not None and message.get("type") in ("subscribe", "message"):
                return

    @staticmethod
    def _wait(pubsub: Any, seconds: float) -> None:
        """Wait up to ``seconds`` for a message on the lease's channel."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is not None:
                return


_TAKEN_OVER = object()


class _Renewer:
    """The thread that renews every lease one process holds from one service, every third of
    the time-to-live. It runs only while leases are held, and exists in the process that made
    it (a forked child makes its own, empty)."""

    def __init__(self, service: RedisLockService) -> None:
        self.service = service
        self.pid = os.getpid()
        self._changed = threading.Condition(threading.Lock())
        self._held: Dict[int, Tuple[RedisLease, str, float]] = {}  # id -> lease, value, due
        self._thread: Optional[threading.Thread] = None

    def add(self, lease: RedisLease) -> None:
        due = time.monotonic() + self.service.renew_interval
        with self._changed:
            self._held[id(lease)] = (lease, lease._value or "", due)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="persist_to_disk lease renewal")
                self._thread.start()
            self._changed.notify()

    def remove(self, lease: RedisLease) -> None:
        """Stop renewing ``lease``. A renewal already on its way is harmless: the caller
        deletes the key next, and a renewal of a key that no longer holds our value does
        nothing."""
        with self._changed:
            self._held.pop(id(lease), None)

    def _run(self) -> None:
        service = self.service
        while True:
            with self._changed:
                while True:
                    if not self._held:
                        self._thread = None
                        return
                    now = time.monotonic()
                    first_due = min(due for _, _, due in self._held.values())
                    if first_due <= now:
                        break
                    self._changed.wait(first_due - now)
                now = time.monotonic()
                due_now = [(ident, lease, value) for ident, (lease, value, due)
                           in self._held.items() if due <= now]
                for ident, lease, value in due_now:
                    self._held[ident] = (lease, value, now + service.renew_interval)
            for ident, lease, value in due_now:
                try:
                    kept = service.client().eval(_RENEW, 1, lease.key, value, service.ttl_ms)
                except (RemoteUnavailable, *service._errors):
                    continue  # tried again next interval; if the server stays away, it expires
                if not kept:  # expired and taken by someone else: not ours to renew any more
                    lease.lost = True
                    with self._changed:
                        held = self._held.get(ident)
                        if held is not None and held[1] == value:
                            del self._held[ident]
