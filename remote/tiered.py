"""The shared tier: S3-compatible object storage behind the local LMDB tier.

:class:`SharedStorage` is a :class:`~..engine.interface.StorageTier` that wraps the local one;
the stores it opens (:class:`TieredStore`) are the local stores with the remote behind them:

* **a local hit never leaves the machine**: every read asks the local store first, and only a
  local miss asks the remote (a round trip to a local S3 server costs 6-9 ms, a local hit
  microseconds);
* **a remote hit is written locally** (streamed from the response into the record's buffer
  while its signature is checked, then appended), so the next call on this machine is local;
* **a miss computes once across machines**: the compute lock is the local lock (one process
  per machine goes on), then a remote lease (see ``leases.py``/``redis_leases.py``);
* **first writer wins**: a computed result is appended locally, then uploaded with
  ``If-None-Match: *``; if another machine's result got there first, the winner's is fetched
  and appended as this machine's newest version, so that both machines return the same result
  from then on (the call that lost returns its own, equal-by-construction for a deterministic
  function). RECACHE (``replace=True``) replaces the remote object instead.

Results are immutable and named by the call digest, so correctness rests on first-writer-wins
and on signatures (``objects.py``: an object that does not verify is never unpickled); the
lease only saves duplicate work. A remote that fails never fails a call: the failure is
reported once (``health.py``), the call goes on locally, and owed uploads are queued
(``pending.py``).

Names in the bucket: ``PREFIX/NAMESPACE/<leaf relative to the project folder>/<digest>.ptd``,
so two checkouts of a project at different absolute paths (or on different machines, whose
project ids differ) share results, and two namespaces never see each other's.
"""

import atexit
import os
import socket
import threading
import time
import weakref
from typing import (Any, BinaryIO, Callable, Dict, Iterator, List, NamedTuple, Optional,
                    Tuple, TypeVar)

from ..engine.durability import Durability
from ..engine.errors import EngineError
from ..engine.interface import CallStore, ComputeLock, StorageTier
from ..engine.locks import LockScope, Timeout
from ..engine.records import CodeVersionStats, Record
from .health import RemoteHealth
from .pending import PendingUpload, PendingUploads
from .settings import RemoteSettings

T = TypeVar("T")

RESULT_SUFFIX = ".ptd"
_RETRY_PENDING_EVERY = 60.0  # seconds between two background retries of owed uploads
_EXIT_WAIT = 10.0  # seconds interpreter exit waits for a retry of owed uploads under way
_RETRIES: List[threading.Thread] = []


@atexit.register
def _finish_retries() -> None:
    deadline = time.monotonic() + _EXIT_WAIT
    for thread in _RETRIES:
        thread.join(max(0.0, deadline - time.monotonic()))


class RemoteStatus(NamedTuple):
    """What ``status()`` found (``ptd remote status``)."""

    url: str
    endpoint: str
    namespace: str
    reachable: bool
    error: str
    conditional_writes: Optional[bool]
    signed: bool
    objects: int
    bytes: int
    pending: int
    lock_service: str


class RemoteEntry(NamedTuple):
    """One result object on the remote: its leaf (relative to the project folder, with ``/``
    separators), call digest, size and server time of its upload."""

    relative_leaf: str
    digest_hex: str
    size: int
    last_modified: float
    name: str


class TransferReport(NamedTuple):
    """What a push or pull did: objects ``copied``, already ``present`` at the destination,
    ``rejected`` (a signature that does not verify: never loaded), ``failed`` (with
    ``errors``)."""

    copied: int = 0
    present: int = 0
    rejected: int = 0
    failed: int = 0
    errors: Tuple[str, ...] = ()


class SharedStorage:
    """The local tier with a remote behind it (see the module docstring). One per process
    and configuration; safe from several threads. The boto3 client, the lock service and
    the conditional-write probe are made on first use (a process that only hits locally
    never imports boto3)."""

    def __init__(self, local: StorageTier, settings: RemoteSettings) -> None:
        self.local = local
        self.settings = settings
        self.health = RemoteHealth(settings.url, settings.retry_after_seconds,
                                   settings.wording.push, settings.warn)
        #: The lock service's own health: Redis being down costs compute-once across
        #: machines, never the sharing of results through the bucket.
        self.lease_health = (RemoteHealth(
            f"lock service {_redact(settings.lock_url)}", settings.retry_after_seconds,
            "results are still shared through the bucket", settings.warn)
            if settings.lock_url else self.health)
        self.pending = PendingUploads(settings.pending_folder)
        self._lock = threading.Lock()
        _INSTANCES.add(self)
        self._pid = -1
        self._client: Any = None
        self._signer: Any = None
        self._lock_service: Any = None
        self._conditional: Optional[bool] = None
        self._last_pending_retry = 0.0

    # --- what is made lazily ------------------------------------------------------------
    @property
    def client(self):
        """The S3 client of this process (made again in a forked child)."""
        if self._pid != os.getpid():
            self._renew_for_this_process()
        return self._client

    @property
    def signer(self):
        if self._signer is None:
            from .objects import Signer
            self._signer = Signer(self.settings.secret)
        return self._signer

    def _renew_for_this_process(self) -> None:
        from .client import S3Client
        with self._lock:
            if self._pid == os.getpid():
                return
            settings = self.settings
            try:
                self._client = S3Client(settings.bucket,
                                        connect_timeout=settings.connect_timeout,
                                        read_timeout=settings.read_timeout)
            except Exception as err:  # a malformed AWS_ENDPOINT_URL, no boto3...: a failure
                from .client import RemoteUnavailable  # of the remote, not of the call
                raise RemoteUnavailable(
                    f"cannot set up the S3 client for {settings.url} ({type(err).__name__}: "
                    f"{err})") from err
            self._lock_service = None
            self._pid = os.getpid()

    @property
    def lock_service(self):
        """Where leases live: the Redis/Valkey service of ``lock_url``, else the bucket."""
        client = self.client
        service = self._lock_service
        if service is None:
            settings = self.settings
            holder = f"{settings.machine or socket.gethostname()} pid {os.getpid()}"
            machine = settings.machine or socket.gethostname()
            if settings.lock_url:
                from .client import RemoteUnavailable
                from .redis_leases import RedisLockService
                try:
                    service = RedisLockService(
                        settings.lock_url, holder=holder, machine=machine,
                        ttl=settings.lease_seconds, connect_timeout=settings.connect_timeout,
                        read_timeout=settings.read_timeout)
                except RemoteUnavailable:
                    raise
                except Exception as err:  # a malformed URL, no redis-py: the remote's failure
                    raise RemoteUnavailable(
                        f"cannot set up the lock service {_redact(settings.lock_url)} "
                        f"({type(err).__name__}: {err})") from err
            else:
                from .leases import S3LockService
                service = S3LockService(client, holder=holder, machine=machine,
                                        ttl=settings.lease_seconds)
            self._lock_service = service
        return service

    def conditional_writes(self) -> Optional[bool]:
        """Whether the server enforces ``If-None-Match``/``If-Match`` (probed once per process
        and endpoint; None while it cannot be reached). Without them there is no
        first-writer-wins nor lease: the tier warns once and runs without compute-once, rather
        than believe in a lock that is not there."""
        if self._conditional is None:
            from .client import RemoteUnavailable
            try:
                enforced = self.client.conditional_writes_enforced(
                    f"{self.settings.root}/.probe/")
            except RemoteUnavailable as err:
                self.health.failed(err, "checking that it enforces conditional writes")
                return None
            self._conditional = enforced
            if not enforced:
                self.health.warn_once(
                    "conditional", f"The shared cache {self.settings.url} (endpoint "
                    f"{self.client.endpoint}) does not enforce conditional writes (PUT with "
                    "If-None-Match / If-Match). Results are still shared, but machines no "
                    "longer wait for each other: a call missing everywhere may be computed on "
                    "several machines at once. Upgrade the server to one that enforces them "
                    "to get compute-once back.")
        return self._conditional

    # --- StorageTier ----------------------------------------------------------------------
    def open_store(self, leaf: str, durability: Durability = Durability.STANDARD, *,
                   lock_root: Optional[str] = None, meta: Optional[dict] = None) -> CallStore:
        """The local store of ``leaf`` (checked by the local tier) with the remote behind it;
        ``lock_root`` (the project's folder) is what the remote name is relative to. Without
        it the leaf has no name shared between machines, and its store stays local."""
        store = self.local.open_store(leaf, durability, lock_root=lock_root, meta=meta)
        if lock_root is None:
            return store
        prefix = self.leaf_prefix(leaf, lock_root)
        if len(prefix.encode("utf-8")) + _LONGEST_SUFFIX > MAX_NAME_BYTES:
            self.health.warn_once(
                f"long:{prefix}", f"The results in {store.path} stay on this machine: their "
                f"names in the shared cache would be longer than the {MAX_NAME_BYTES} bytes S3 "
                "allows (long groupby values, or a deep module path). Shorten them, or "
                f"{self.settings.wording.local_only} to say so.")
            return store
        return TieredStore(self, store, prefix, os.path.abspath(lock_root))

    def find_stores(self, root: str) -> Iterator[str]:
        return self.local.find_stores(root)

    def clear_tree(self, root: str, *, lock_root: Optional[str] = None) -> int:
        """Remove every result under ``root`` (itself included): the local stores', and on the
        remote every object below the folder's name, leaves this machine never saw included
        (else they would be fetched back). Returns the most calls removed from either tier."""
        cleared = self.local.clear_tree(root, lock_root=lock_root)
        if lock_root is None:
            return cleared
        from .client import RemoteUnavailable
        prefix = self.leaf_prefix(root, lock_root)
        removed = 0
        try:
            for info in list(self.client.list(prefix)):
                if info.name.endswith(RESULT_SUFFIX):
                    self.client.delete(info.name)
                    self.pending.done(info.name)
                    removed += 1
        except RemoteUnavailable as err:
            self.health.failed(err, "deleting results")
            self.health.warn_once(f"delete:{root}", (
                f"Some results under {root} may still be in the shared cache "
                f"{self.settings.url}, and later calls may fetch them back: clear again once "
                "it is reachable."))
        return max(cleared, removed)

    def compact(self, leaf: str, *args, **kwargs):
        """Compaction is the local tier's (remote objects are one immutable result each)."""
        return self.local.compact(leaf, *args, **kwargs)

    # --- names ----------------------------------------------------------------------------
    def leaf_prefix(self, leaf: str, lock_root: str) -> str:
        """``PREFIX/NAMESPACE/<leaf relative to lock_root>/``: the remote folder of a leaf."""
        relative = os.path.relpath(os.path.abspath(leaf), os.path.abspath(lock_root))
        if relative == ".":
            return f"{self.settings.root}/"
        if relative.startswith(".."):
            raise ValueError(f"leaf {leaf} is not inside {lock_root}")
        return f"{self.settings.root}/{relative.replace(os.sep, '/')}/"

    def object_name(self, leaf: str, lock_root: str, digest: bytes) -> str:
        return self.leaf_prefix(leaf, lock_root) + digest.hex() + RESULT_SUFFIX

    # --- owed uploads ---------------------------------------------------------------------
    def owe(self, entry: PendingUpload) -> None:
        self.pending.add(entry)

    def after_upload(self) -> None:
        """The remote took an upload: retry owed ones in the background, at most once a
        minute per process (a daemon thread: killing it mid-way loses nothing, each upload
        is conditional and its entry is removed only once it is done). A short script would
        end before the thread does, so interpreter exit waits for it, up to
        :data:`_EXIT_WAIT` seconds."""
        now = time.monotonic()
        if now - self._last_pending_retry < _RETRY_PENDING_EVERY:
            return
        self._last_pending_retry = now
        if not self.pending.any():
            return
        thread = threading.Thread(target=self._retry_pending_quietly,
                                  name="ptd-remote-pending", daemon=True)
        thread.start()
        _RETRIES.append(thread)

    def _retry_pending_quietly(self) -> None:
        try:
            self.push_pending()
        except Exception:  # the next retry, or `ptd remote push`, will say what is wrong
            pass

    def push_pending(self, progress: Optional[Callable[[int], None]] = None) -> TransferReport:
        """Upload what earlier uploads left owed (see ``pending.py``). Raises
        :class:`~.client.RemoteUnavailable` if the server cannot be reached."""
        copied = present = failed = 0
        errors: List[str] = []
        for entry in list(self.pending.entries()):
            try:
                store = self.open_store(entry.leaf, lock_root=entry.lock_root)
            except (EngineError, OSError, ValueError) as err:
                failed += 1
                errors.append(f"{entry.leaf}: {err}")
                continue
            if not isinstance(store, TieredStore) or store.name(entry.digest) != entry.name:
                continue  # owed to another namespace or prefix: left for a process of it
            outcome = store.upload(entry.bucket, entry.digest, replace=entry.replace,
                                   raise_unavailable=True)
            if outcome == "failed":
                failed += 1
                errors.append(f"{entry.name}: could not be uploaded")
                continue
            self.pending.done(entry.name)
            if outcome == "copied":
                copied += 1
            else:
                present += 1
            if progress is not None:
                progress(1)
        return TransferReport(copied, present, 0, failed, tuple(errors))

    # --- tools ----------------------------------------------------------------------------
    def status(self) -> RemoteStatus:
        """Reachability, conditional writes, and the namespace's objects and bytes (never
        raises for an unreachable server: ``reachable`` is False and ``error`` says why)."""
        from .client import RemoteUnavailable
        settings = self.settings
        endpoint, error, reachable, conditional = "", "", False, None
        objects = size = 0
        try:
            client = self.client
            endpoint = client.endpoint
            for info in client.list(f"{settings.root}/"):
                if info.name.endswith(RESULT_SUFFIX):
                    objects += 1
                    size += info.size
            reachable = True
            conditional = client.conditional_writes_enforced(f"{settings.root}/.probe/")
        except (RemoteUnavailable, ImportError) as err:
            error = str(err)
        return RemoteStatus(settings.url, endpoint, settings.namespace, reachable, error,
                            conditional, not settings.unsigned, objects, size,
                            self.pending.count(),
                            _redact(settings.lock_url) if settings.lock_url else "the bucket")

    def remote_objects(self, relative_prefix: str = "") -> Iterator[RemoteEntry]:
        """Every result object of the namespace whose leaf starts with ``relative_prefix``."""
        root = f"{self.settings.root}/"
        for info in self.client.list(root + relative_prefix.lstrip("/")):
            name = info.name
            if not name.endswith(RESULT_SUFFIX) or not name.startswith(root):
                continue
            relative, _, file_name = name[len(root):].rpartition("/")
            digest_hex = file_name[:-len(RESULT_SUFFIX)]
            if relative.startswith(".probe"):
                continue
            yield RemoteEntry(relative, digest_hex, info.size, info.last_modified, name)

    def push(self, store: CallStore, progress: Optional[Callable[[int], None]] = None
             ) -> TransferReport:
        """Upload every live local result of ``store`` that the remote lacks."""
        if not isinstance(store, TieredStore):
            raise ValueError(f"{store.path} has no remote name (opened without its project)")
        copied = present = failed = 0
        errors: List[str] = []
        for bucket, digest, _record in store.local.scan(with_values=False):
            outcome = store.upload(bucket, digest, raise_unavailable=True, check_first=True)
            if outcome == "copied":
                copied += 1
                self.pending.done(store.name(digest))
            elif outcome == "present":
                present += 1
                self.pending.done(store.name(digest))
            else:
                failed += 1
                errors.append(f"{store.name(digest)}: could not be uploaded")
            if progress is not None:
                progress(1)
        return TransferReport(copied, present, 0, failed, tuple(errors))

    def pull(self, store: CallStore, bucket_of: Callable[[bytes], int],
             progress: Optional[Callable[[int], None]] = None) -> TransferReport:
        """Fetch into ``store`` every result the remote holds for its leaf and it lacks;
        ``bucket_of(digest)`` is the local bucket of a call (the layer above's formula)."""
        if not isinstance(store, TieredStore):
            raise ValueError(f"{store.path} has no remote name (opened without its project)")
        copied = present = rejected = failed = 0
        errors: List[str] = []
        for info in self.client.list(store.prefix):
            name = info.name
            file_name = name[len(store.prefix):]
            if "/" in file_name or not file_name.endswith(RESULT_SUFFIX):
                continue  # a deeper leaf's object, or a lease
            try:
                digest = bytes.fromhex(file_name[:-len(RESULT_SUFFIX)])
            except ValueError:
                continue
            bucket = bucket_of(digest)
            if store.local.latest(bucket, digest, with_value=False) is not None:
                present += 1
            else:
                outcome = store.fetch(bucket, digest, raise_unavailable=True)
                if outcome is True:
                    copied += 1
                elif outcome == "rejected":
                    rejected += 1
                    errors.append(f"{name}: rejected (see the warning)")
                else:
                    failed += 1
                    errors.append(f"{name}: could not be fetched")
            if progress is not None:
                progress(1)
        return TransferReport(copied, present, rejected, failed, tuple(errors))


_INSTANCES: "weakref.WeakSet[SharedStorage]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A fork while another thread held one of these locks (building the boto3 client takes
    hundreds of ms) would leave it held forever in the child: every lock is made anew."""
    for shared in list(_INSTANCES):
        shared._lock = threading.Lock()
        for health in {id(shared.health): shared.health,
                       id(shared.lease_health): shared.lease_health}.values():
            health._lock = threading.Lock()
        shared.pending._lock = threading.Lock()
    _RETRIES.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)

#: The longest object name S3 accepts, in UTF-8 bytes; a lease's name is the longest we make.
MAX_NAME_BYTES = 1024
_LONGEST_SUFFIX = len("0" * 32 + RESULT_SUFFIX + ".lease")


#: S3 errors that refuse one object (its name or size), not the server or the credentials.
_OBJECT_ERRORS = frozenset({"KeyTooLongError", "EntityTooLarge", "InvalidObjectName",
                           "InvalidArgument", "MetadataTooLarge", "EntityTooSmall"})


def _refused_for_this_object(err: BaseException) -> bool:
    return (getattr(err, "code", "") in _OBJECT_ERRORS
            or getattr(err, "status", None) in (400, 411, 413, 414))


def _redact(url: str) -> str:
    """``url`` without its password (``redis://:secret@host`` -> ``redis://***@host``)."""
    from .redis_leases import _hide_password  # (pure: imports no redis-py)
    return _hide_password(url)


class TieredStore:
    """A leaf's local store with the remote behind it (a :class:`CallStore`; see the module
    docstring). Everything local (scans, stats, compaction, imports) is the local store's;
    reads, value appends, deletes and the compute lock also reach the remote."""

    def __init__(self, shared: SharedStorage, local: CallStore, prefix: str,
                 lock_root: str) -> None:
        self.shared = shared
        self.local = local
        self.prefix = prefix
        self.lock_root = lock_root
        self.path = local.path

    def name(self, digest: bytes) -> str:
        """The remote object of the call ``digest``."""
        return self.prefix + digest.hex() + RESULT_SUFFIX

    # --- reading --------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.local.exists()

    def latest(self, bucket: int, digest: bytes, with_value: bool = True) -> Optional[Record]:
        record = self.local.latest(bucket, digest, with_value)
        if record is not None:
            return record
        fetched = self.fetch(bucket, digest)
        if fetched is True:
            return self.local.latest(bucket, digest, with_value)
        if isinstance(fetched, Record):
            return fetched if with_value else fetched._replace(value_blob=b"")
        return None

    def load_latest(self, bucket: int, digest: bytes, load: Callable[[Record], T]
                    ) -> Optional[Tuple[Record, T]]:
        found = self.local.load_latest(bucket, digest, load)
        if found is not None:
            return found
        fetched = self.fetch(bucket, digest)
        if fetched is True:
            return self.local.load_latest(bucket, digest, load)
        if isinstance(fetched, Record):  # verified, but the local tier could not keep it
            return fetched, load(fetched)
        return None

    def fetch(self, bucket: int, digest: bytes, *, raise_unavailable: bool = False):
        """Copy the call's remote object into the local store: True when it was appended,
        a verified :class:`Record` when the local store could not be written (full disk,
        permissions: the value is still good for this call), ``"rejected"`` when it does not
        verify (never loaded; warned once), False when there is none or the remote failed."""
        shared = self.shared
        if not raise_unavailable and not shared.health.usable():
            return False
        from .client import RemoteUnavailable
        from .objects import ObjectRejected, open_object, read_record
        name = self.name(digest)
        try:
            got = shared.client.get(name)
            if got is None:
                shared.health.succeeded()
                return False
            stream, info = got
            stream = _GuardedStream(stream, name)
            try:
                header, write_value = open_object(name, stream, info.size, shared.signer)
                try:
                    # streamed into the record's buffer, signature checked at its end: a
                    # value that does not verify raises inside, and nothing is appended
                    self.local.append_value(
                        bucket, digest, write_value, created=header.created,
                        compute_seconds=header.compute_seconds,
                        python_version=header.python_version, key_blob=header.key_blob,
                        origin=header.origin, code=header.code)
                    shared.health.succeeded()
                    return True
                except EngineError as err:
                    local_error = err
            finally:
                _close(stream)
            # The local store refused the write (disk full...): read it again, into memory.
            again = shared.client.get(name)
            if again is None:
                return False
            stream, info = again
            stream = _GuardedStream(stream, name)
            try:
                record = read_record(name, stream, info.size, shared.signer)
            finally:
                _close(stream)
            shared.health.warn_once(
                f"keep:{self.path}", f"A result fetched from the shared cache could not be "
                f"kept in the local cache {self.path} ({local_error}); it is used for this "
                "call, and fetched again by the next one.")
            return record
        except ObjectRejected as err:
            shared.health.warn_once(
                f"rejected:{name}",
                f"The shared cache object {shared.settings.bucket}/{name} was not loaded: "
                f"{err}. It is treated as a miss: the call computes its result. Someone with "
                "write access to the bucket wrote it without the team's secret (or altered "
                "it): delete it, and check who can write to the bucket.")
            return "rejected"
        except RemoteUnavailable as err:
            if raise_unavailable:
                raise
            shared.health.failed(err, "reading a result")
            return False

    # --- writing --------------------------------------------------------------------------
    def append_value(self, bucket: int, digest: bytes, write_value: Callable[[BinaryIO], str],
                     *, created: float, compute_seconds: float, python_version: str,
                     key_blob: bytes, meta: Optional[dict] = None, origin: str = "",
                     replace: bool = False, code: str = "") -> int:
        """Append locally, then upload (first writer wins, or ``replace``); a failed upload is
        owed, never an error. ``code`` travels in the object's header (signed with it)."""
        sequence = self.local.append_value(
            bucket, digest, write_value, created=created, compute_seconds=compute_seconds,
            python_version=python_version, key_blob=key_blob, meta=meta, origin=origin,
            code=code)
        self.upload(bucket, digest, replace=replace)
        return sequence

    def upload(self, bucket: int, digest: bytes, *, replace: bool = False,
               raise_unavailable: bool = False, check_first: bool = False) -> str:
        """Upload the call's newest local record: ``"copied"``, ``"present"`` (another
        machine's result was there first: it is fetched and becomes this machine's newest
        version too), ``"gone"`` (nothing local to upload) or ``"failed"`` (owed)."""
        shared = self.shared
        name = self.name(digest)
        owed = PendingUpload(name, self.path, self.lock_root, bucket, digest, replace)
        if not raise_unavailable and not shared.health.usable():
            shared.owe(owed)
            return "failed"
        from .client import RemoteUnavailable
        from .objects import object_chunks, object_size
        try:
            client, signer = shared.client, shared.signer
            if check_first and client.head(name) is not None:
                return "present"
            enforced = shared.conditional_writes() if not replace else True

            def send(record: Record) -> bool:
                size = object_size(record)
                chunks = object_chunks(name, record, signer)
                if replace:
                    client.put_replacing(name, chunks, size)
                    return True
                if enforced is False and client.head(name) is not None:
                    return False  # best effort without conditional writes (warned once)
                if enforced is None:
                    raise RemoteUnavailable(f"{client.endpoint} could not be probed")
                if enforced is False:
                    client.put_replacing(name, chunks, size)
                    return True
                return client.put_if_absent(name, chunks, size)

            found = self.local.load_latest(bucket, digest, send)
        except RemoteUnavailable as err:
            if _refused_for_this_object(err):  # not the server's fault: owing it is pointless
                shared.health.warn_once(
                    f"refused:{name}", f"The shared cache {shared.settings.url} refused the "
                    f"result {name} ({err}); it stays on this machine only.")
                return "failed"
            shared.owe(owed)
            if raise_unavailable:
                raise
            shared.health.failed(err, "uploading a result")
            return "failed"
        except EngineError:  # the local record cannot be read: nothing to upload from it
            return "failed"
        if found is None:
            return "gone"
        shared.health.succeeded()
        if found[1]:
            try:
                shared.lock_service.notify(name)
            except Exception:  # a wake-up lost costs waiters one poll interval, no more
                pass
            shared.after_upload()
            return "copied"
        # Another machine's result was there first: make it this machine's newest too.
        self.fetch(bucket, digest, raise_unavailable=raise_unavailable)
        return "present"

    def append(self, bucket: int, digest: bytes, record: Record,
               meta: Optional[dict] = None) -> int:
        return self.local.append(bucket, digest, record, meta)

    def append_if_absent(self, bucket: int, digest: bytes, record: Record,
                         meta: Optional[dict] = None) -> bool:
        return self.local.append_if_absent(bucket, digest, record, meta)

    def delete(self, bucket: int, digest: bytes) -> bool:
        """Forget the call here and on the remote (else the next call would fetch it back)."""
        deleted = self.local.delete(bucket, digest)
        return self._delete_remote([self.name(digest)]) > 0 or deleted

    def clear(self) -> int:
        """Remove every result of the leaf, here and on the remote (its objects directly in
        the leaf's remote folder; other leaves' are left alone)."""
        cleared = self.local.clear()
        shared = self.shared
        from .client import RemoteUnavailable
        try:
            names = [info.name for info in shared.client.list(self.prefix)
                     if "/" not in info.name[len(self.prefix):]
                     and info.name.endswith(RESULT_SUFFIX)]
        except RemoteUnavailable as err:
            shared.health.failed(err, "listing results to clear")
            return cleared
        return max(cleared, self._delete_remote(names))

    def _delete_remote(self, names: List[str]) -> int:
        shared = self.shared
        if not shared.health.usable():
            shared.health.warn_once(f"delete:{self.path}", (
                f"The shared cache {shared.settings.url} is unreachable, so results deleted "
                f"from {self.path} are still on it, and later calls may fetch them back."))
            return 0
        from .client import RemoteUnavailable
        deleted = 0
        try:
            for name in names:
                if shared.client.head(name) is not None:
                    shared.client.delete(name)
                    deleted += 1
                shared.pending.done(name)
        except RemoteUnavailable as err:
            shared.health.failed(err, "deleting results")
        return deleted

    # --- local only -----------------------------------------------------------------------
    def scan(self, bucket: Optional[int] = None, with_values: bool = True
             ) -> Iterator[Tuple[int, bytes, Record]]:
        return self.local.scan(bucket, with_values)

    def stats(self) -> Any:
        return self.local.stats()

    def code_versions(self) -> Dict[str, CodeVersionStats]:
        """This machine's records only (counting the remote's would read every object)."""
        return self.local.code_versions()

    def read_meta(self) -> dict:
        return self.local.read_meta()

    # --- the compute lock -----------------------------------------------------------------
    def compute_lock(self, bucket: int, digest: bytes, scope: LockScope,
                     timeout: Optional[float] = None) -> ComputeLock:
        """The local lock (one process per machine), then the call's remote lease (one
        machine), when the remote can be reached and enforces conditional writes."""
        local_lock = self.local.compute_lock(bucket, digest, scope, timeout)
        shared = self.shared
        if not (shared.health.usable() and shared.lease_health.usable()):
            return local_lock
        return TieredLock(local_lock, self, self.name(digest), timeout)


class TieredLock:
    """The local compute lock, then the remote lease (a :class:`ComputeLock`). The lease is
    asked for only once the local lock is held, so one process per machine talks to the
    remote; a nested call that must not wait locally does not wait remotely either."""

    def __init__(self, local: ComputeLock, store: TieredStore, name: str,
                 timeout: Optional[float]) -> None:
        self.local = local
        self.store = store
        self.name = name
        self.timeout = timeout
        self.path = local.path
        self._lease: Optional[ComputeLock] = None

    def acquire(self) -> Optional[str]:
        """The local lock, then the lease. Whatever goes wrong with the lease (the server or
        the lock service failing, a lease that cannot be made) costs only compute-once across
        machines: the call computes holding the local lock, and the failure is warned once.
        Only the lease's own :class:`Timeout` propagates, as the local lock's would."""
        reason = self.local.acquire()
        if reason is not None:
            return reason
        shared = self.store.shared
        if not shared.lease_health.usable():
            return None
        from .client import RemoteUnavailable
        try:
            if not shared.conditional_writes():
                return None  # warned once; compute-once across machines is not available
            client = shared.client
            lease = shared.lock_service.lease(
                self.name, timeout=self.timeout,
                result_exists=lambda: client.head(self.name) is not None)
            self._lease = lease
            self.path = lease.path
            return lease.acquire()
        except Timeout:
            raise
        except RemoteUnavailable as err:
            shared.lease_health.failed(err, "taking the call's lease")
            return None
        except Exception as err:  # a bug or a refusal of the lease itself: never a stuck call
            shared.lease_health.failed(err, "taking the call's lease")
            return None

    def release(self) -> None:
        lease, self._lease = self._lease, None
        try:
            if lease is not None:
                lease.release()
        except Exception:  # an unreleased lease expires after its time-to-live
            pass
        finally:
            self.local.release()


class _GuardedStream:
    """A response body whose failures mid-read (a connection reset, a read timeout: botocore
    and urllib3 raise their own classes) are :class:`~.client.RemoteUnavailable`, so that a
    server dying during a download is a remote failure like any other, and the half-read value
    is never stored (the exception propagates out of ``append_value``'s ``write_value``)."""

    def __init__(self, stream: Any, name: str) -> None:
        self._stream = stream
        self._name = name

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except Exception as err:
            from .client import RemoteUnavailable
            if isinstance(err, RemoteUnavailable):
                raise
            raise RemoteUnavailable(f"reading {self._name} failed midway: {err}") from err

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        _close(self._stream)


def _close(stream: Any) -> None:
    try:
        stream.close()
    except Exception:
        pass


__all__ = ["SharedStorage", "TieredStore", "TieredLock", "RemoteStatus", "RemoteEntry",
           "TransferReport", "RESULT_SUFFIX"]
