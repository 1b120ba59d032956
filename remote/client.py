"""The S3 client of the shared tier: a thin layer over boto3 that never hangs and says what failed.

Why a layer of our own rather than boto3 directly:

* **Bounded time.** A dead or slow server must cost seconds, never hang a call: every request
  has a connect and a read timeout and a bounded number of attempts (botocore ``Config``;
  ``max_attempts`` counts the first attempt too: botocore's own ``retries["max_attempts"]``
  counts only the retries, so ``total_max_attempts`` is what is set), so the worst case of one
  request is about ``max_attempts * (connect_timeout + read_timeout)`` plus botocore's short
  backoff between attempts (a PUT can wait up to a read timeout more per attempt, for the
  server's ``100 Continue``). Measured with 1 s timeouts and 2 attempts: a refused connection
  costs 0.2-1.3 s, a server that accepts connections and never answers 2.5-3.5 s (a GET) to
  5-6 s (a PUT).
* **One error for "the remote cannot be used".** Whatever goes wrong on the way (refused
  connection, timeout, 5xx, refused credentials, missing bucket, a stream cut midway) is raised
  as :class:`RemoteUnavailable`, naming the endpoint, the bucket and the cause, so that the tier
  can fall back to local-only work with one warning. The answers the tier acts on are values,
  not errors: a missing object is ``None``, a refused precondition is ``None`` / ``False``.
* **Conditional writes.** ``put(..., if_none_match=True)`` (``If-None-Match: *``) creates only
  if absent and ``if_match=etag`` replaces only that version: first-writer-wins for results, and
  leases. Some S3 servers accept the headers and ignore them, so
  :meth:`S3Client.conditional_writes_enforced` checks once per endpoint that they are enforced.
* **Whole objects only.** A large object is uploaded in parts (multipart) from an iterator of
  chunks, holding at most one part in memory; any failure aborts the upload, so that nothing,
  not even a pending upload, is left behind, and readers never see part of a result.
* **Fork safety.** A boto3 client is not safe to use across ``fork`` (its connection pool's
  sockets would be shared with the parent), so each process makes its own on first use.

boto3 is imported when a client is made, never when this module is imported: the core install
of the package does not need it.

Facts measured on SeaweedFS 4.48 (the test server):

* ``If-None-Match: *`` and ``If-Match`` are enforced on ``PutObject`` (412
  ``PreconditionFailed``), atomically: of 8 writers racing, one wins. Writers contending for one
  object wait for each other in steps of about 1 s (up to 2-4 s with 8 writers).
* ``If-None-Match: *`` on ``CompleteMultipartUpload`` refuses a completion over an existing
  object (412; the upload then stays pending until aborted), but two completions at the same
  moment both succeed about one time in five: hence the claim in :meth:`S3Client._complete_first`.
* ``If-Match`` is enforced on ``DeleteObject``.
* ``Date`` and ``Last-Modified`` have a resolution of one second (HTTP dates).
* After a PUT of an empty body sent with ``Expect: 100-continue`` (botocore's default), the next
  request on the connection gets no answer: see :func:`_no_expect_for_empty_bodies`.
"""

import email.utils
import os
import random
import threading
import time
import uuid
from typing import (Any, BinaryIO, Dict, Iterable, Iterator, List, NamedTuple, NoReturn,
                    Optional, Tuple, Union)

__all__ = ["PART_SIZE", "MIN_PART_SIZE", "MAX_PARTS", "ObjectInfo", "RemoteUnavailable",
           "S3Client"]

#: Size of the parts of a multipart upload (and the size up to which one PUT is used).
PART_SIZE = 16 * 1024 * 1024
#: S3's smallest part (every part but the last must be at least this large).
MIN_PART_SIZE = 5 * 1024 * 1024
#: S3's largest number of parts in one upload; larger objects get larger parts.
MAX_PARTS = 10000
#: Suffix of the claim object through which completions of one name take turns.
CLAIM_SUFFIX = ".completing"


class RemoteUnavailable(OSError):
    """The remote cannot be used now: unreachable, timed out, a 5xx, credentials refused, the
    bucket missing, a stream cut midway... ``str()`` names the endpoint, the bucket and the
    cause. ``status`` is the HTTP status when the server answered (else None), ``code`` the S3
    error code (``""`` if none); ``errno`` is None."""

    def __init__(self, message: str, *, status: Optional[int] = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ObjectInfo(NamedTuple):
    """What the server said about one object."""

    name: str
    size: int
    etag: str  # as the server sends it, quotes included: ready for If-Match
    last_modified: float  # epoch seconds, server clock (1 s resolution)
    server_now: float  # epoch seconds of the response's Date header; 0.0 if unknown (list())


# Answers to "does this endpoint enforce conditional writes?", per (endpoint, bucket), once per
# process: {key: (enforced, detail)}.
_PROBED: Dict[Tuple[str, str], Tuple[bool, str]] = {}
_PROBE_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    # Another thread may have held the lock at fork time: the child's copy would never be
    # released. The answers themselves stay true in the child.
    global _PROBE_LOCK
    _PROBE_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)

_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                               "ExpiredToken", "InvalidToken", "AuthorizationHeaderMalformed"})


def _server_time(response: dict) -> float:
    """The response's ``Date`` header as epoch seconds (0.0 if absent or unreadable)."""
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    date = headers.get("date")
    if not date:
        return 0.0
    try:
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return 0.0


#: The slowest transfer a download may have before it is abandoned: a server that trickles
#: bytes never trips the read timeout (which bounds each socket read, not the transfer).
MIN_BYTES_PER_SECOND = 256 * 1024


class _Body:
    """The body of a GET: ``read(n)`` and ``close()``, with errors of the transfer (a timeout,
    a connection cut midway, a short body) raised as :class:`RemoteUnavailable`.

    ``read(n)`` returns what one socket read brings (at most ``n`` bytes; callers loop), so
    that the whole download is bounded: after ``read_timeout`` plus one second per
    :data:`MIN_BYTES_PER_SECOND` of the object, the next read raises instead of waiting for a
    server that sends a byte every few seconds (each read waits at most ``read_timeout``)."""

    __slots__ = ("_stream", "_client", "_name", "_deadline", "_raw")

    def __init__(self, stream: Any, client: "S3Client", name: str, size: int = 0) -> None:
        self._stream = stream
        self._client = client
        self._name = name
        self._deadline = (time.monotonic() + client.read_timeout
                          + size / MIN_BYTES_PER_SECOND)
        raw = getattr(stream, "_raw_stream", None)  # botocore's StreamingBody: urllib3's
        self._raw = raw if hasattr(raw, "read1") else None

    def read(self, n: int = -1) -> bytes:
        try:
            if n is None or n < 0 or self._raw is None:
                return self._stream.read(None if n is None or n < 0 else n)
            if time.monotonic() > self._deadline:
                raise RemoteUnavailable(
                    f"S3 endpoint {self._client.endpoint}: reading {self._name!r} stalled: "
                    f"the server sends it slower than {MIN_BYTES_PER_SECOND // 1024} KiB/s")
            return self._raw.read1(n)
        except RemoteUnavailable:
            raise
        except Exception as err:  # noqa: BLE001 -- converted below or re-raised
            self._client._fail(err, "reading", self._name)

    def close(self) -> None:
        try:
            self._stream.close()
        except Exception:  # noqa: BLE001 -- closing a broken stream must not fail the caller
            pass

    def __enter__(self) -> "_Body":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class S3Client:
    """One bucket of an S3-compatible server, with bounded timeouts (see the module docstring).

    The endpoint, region and credentials come from boto3's standard sources
    (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_DEFAULT_REGION``, profiles in ``~/.aws``). Safe to share between threads; after a
    ``fork`` the child makes its own boto3 client on first use.
    """

    def __init__(self, bucket: str, *, connect_timeout: float = 3.0, read_timeout: float = 20.0,
                 max_attempts: int = 2) -> None:
        try:
            import boto3  # noqa: F401 -- imported here: the core install does without it
            from botocore.config import Config
        except ImportError as err:
            raise ImportError(
                "The shared cache tier (S3) needs boto3, which is not installed: "
                'pip install "persist_to_disk[s3]"') from err
        if not bucket:
            raise ValueError("S3Client needs a bucket name")
        self.bucket = bucket
        # Checksums: botocore >= 1.36 adds CRC checksums to every upload by default, which
        # several S3-compatible servers reject or mishandle; our objects carry their own
        # end-to-end check (objects.py), so only the checksums an operation requires are sent.
        self.read_timeout = read_timeout
        self._config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                              retries={"total_max_attempts": max_attempts, "mode": "standard"},
                              request_checksum_calculation="when_required",
                              response_checksum_validation="when_required")
        #: the longest one request can take, retries included (a completion's claim older
        #: than this was left by an uploader that is gone)
        self._request_seconds = max_attempts * (connect_timeout + read_timeout) + 2.0
        self._pid = -1
        self._boto: Any = None
        self._make_client()
        self.endpoint: str = self._boto.meta.endpoint_url
        self.probe_detail = ""  # why conditional_writes_enforced() said what it said

    # -- plumbing ---------------------------------------------------------------------------

    def _make_client(self) -> None:
        import boto3
        # A Session per client: sessions are not thread-safe, and a fresh one per process
        # shares nothing (connection pool included) with the parent.
        client = boto3.session.Session().client("s3", config=self._config)
        client.meta.events.register("before-send.s3", _no_expect_for_empty_bodies)
        self._boto = client
        self._pid = os.getpid()

    def _s3(self) -> Any:
        """This process's boto3 client (a forked child makes its own)."""
        if self._pid != os.getpid():
            self._make_client()
        return self._boto

    def _fail(self, err: BaseException, doing: str, name: str) -> NoReturn:
        """Raise ``err`` as :class:`RemoteUnavailable` (see :meth:`_convert`), or as it is."""
        converted = self._convert(err, doing, name)
        if converted is err:
            raise err
        raise converted from err

    def _convert(self, err: BaseException, doing: str, name: str) -> BaseException:
        """``err`` (from botocore, urllib3 or a socket) as :class:`RemoteUnavailable`; errors
        of the caller (bad parameters, our own exceptions) are returned unchanged."""
        from botocore.exceptions import (BotoCoreError, ClientError, NoCredentialsError,
                                         ParamValidationError)
        where = f"S3 endpoint {self.endpoint}, bucket {self.bucket!r}"
        if isinstance(err, RemoteUnavailable):
            return err
        if isinstance(err, ClientError):
            error = err.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = error.get("Message") or str(err)
            if code == "NoSuchBucket":
                hint = f"the bucket {self.bucket!r} does not exist: create it"
            elif code in _CREDENTIAL_CODES or status == 403:
                hint = ("the credentials were refused (check AWS_ACCESS_KEY_ID, "
                        "AWS_SECRET_ACCESS_KEY or the profile, and the bucket's permissions)")
            elif status is not None and status >= 500:
                hint = "the server failed"
            else:
                hint = "the server refused the request"
            return RemoteUnavailable(
                f"{where}: {doing} {name!r} failed: {hint} (HTTP {status} {code}: {message})",
                status=status, code=code)
        if isinstance(err, NoCredentialsError):
            return RemoteUnavailable(
                f"{where}: {doing} {name!r} failed: no credentials found (set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or configure a profile in ~/.aws)")
        if isinstance(err, ParamValidationError):
            return err
        try:
            from urllib3.exceptions import HTTPError as Urllib3Error
        except ImportError:  # pragma: no cover -- botocore depends on urllib3
            Urllib3Error = OSError
        if isinstance(err, (BotoCoreError, Urllib3Error, OSError)):
            return RemoteUnavailable(
                f"{where}: {doing} {name!r} failed: {type(err).__name__}: {err}")
        return err

    @staticmethod
    def _client_error(err: BaseException) -> Tuple[str, Optional[int]]:
        """(S3 error code, HTTP status) of a botocore ClientError; ("", None) otherwise."""
        response = getattr(err, "response", None)
        if not isinstance(response, dict):
            return "", None
        return (str(response.get("Error", {}).get("Code", "")),
                response.get("ResponseMetadata", {}).get("HTTPStatusCode"))

    def _is_missing(self, err: BaseException) -> bool:
        code, status = self._client_error(err)
        return code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket"
                                          and code != "NoSuchUpload")

    def _is_precondition(self, err: BaseException) -> bool:
        code, status = self._client_error(err)
        return status == 412 or code in _PRECONDITION_CODES

    # -- reads ------------------------------------------------------------------------------

    def get(self, name: str) -> Optional[Tuple[BinaryIO, ObjectInfo]]:
        """The object's body as a stream (``read(n)``; the caller closes it) and its info;
        None if there is no such object."""
        try:
            response = self._s3().get_object(Bucket=self.bucket, Key=name)
        except Exception as err:  # noqa: BLE001
            if self._is_missing(err):
                return None
            self._fail(err, "reading", name)
        info = ObjectInfo(name, int(response.get("ContentLength", 0)),
                          response.get("ETag", ""), response["LastModified"].timestamp(),
                          _server_time(response))
        return _Body(response["Body"], self, name, info.size), info  # type: ignore[return-value]

    def get_bytes(self, name: str) -> Optional[Tuple[bytes, ObjectInfo]]:
        """A small object's bytes and info (leases); None if there is no such object."""
        found = self.get(name)
        if found is None:
            return None
        body, info = found
        try:
            return body.read(), info
        finally:
            body.close()

    def head(self, name: str) -> Optional[ObjectInfo]:
        """The object's info, None if there is no such object. (A HEAD has no body: a missing
        bucket looks like a missing object here; any write names it.)"""
        try:
            response = self._s3().head_object(Bucket=self.bucket, Key=name)
        except Exception as err:  # noqa: BLE001
            if self._is_missing(err):
                return None
            self._fail(err, "looking up", name)
        return ObjectInfo(name, int(response.get("ContentLength", 0)), response.get("ETag", ""),
                          response["LastModified"].timestamp(), _server_time(response))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``prefix``, in name order (paginated: any
        number of objects, a page in memory at a time). ``server_now`` is 0.0."""
        try:
            pages = self._s3().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", ()):
                    yield ObjectInfo(item["Key"], int(item.get("Size", 0)), item.get("ETag", ""),
                                     item["LastModified"].timestamp(), 0.0)
        except Exception as err:  # noqa: BLE001
            self._fail(err, "listing", prefix)

    # -- writes -----------------------------------------------------------------------------

    def put(self, name: str, body: bytes, *, if_none_match: bool = False,
            if_match: Optional[str] = None) -> Optional[ObjectInfo]:
        """Write a small object in one request. ``if_none_match``: only if no object has the
        name; ``if_match``: only if the object's ETag is this one. Returns its info (ETag, and
        the server's time as both ``last_modified`` and ``server_now``), or None when the
        precondition did not hold (412, or 409 for a concurrent conditional write)."""
        arguments: Dict[str, Any] = {"Bucket": self.bucket, "Key": name, "Body": body}
        if if_none_match:
            arguments["IfNoneMatch"] = "*"
        if if_match is not None:
            arguments["IfMatch"] = if_match
        try:
            response = self._s3().put_object(**arguments)
        except Exception as err:  # noqa: BLE001
            if (if_none_match or if_match is not None) and self._is_precondition(err):
                return None
            self._fail(err, "writing", name)
        now = _server_time(response)
        return ObjectInfo(name, len(body), response.get("ETag", ""), now, now)

    def put_if_absent(self, name: str, chunks: Iterable[Union[bytes, memoryview]], size: int,
                      *, part_size: int = PART_SIZE) -> bool:
        """Create the object from ``chunks`` (``size`` bytes in all) only if no object has the
        name: True if created, False if one existed (first writer wins; the chunks are then
        not all consumed).

        Up to ``part_size`` bytes: one PUT with ``If-None-Match: *`` (the chunks joined: one
        copy). Larger: a HEAD first (an object already there is not uploaded again), then a
        multipart upload, completed only if no object has appeared meanwhile: completions of
        one name take turns through a claim object made with a conditional PUT (see
        :meth:`_complete_first`: servers do not all make ``If-None-Match`` on a completion
        atomic), and the completion carries ``If-None-Match: *`` too. Any failure aborts the
        upload and propagates; nothing is visible then, not even a pending upload.
        """
        if size <= part_size:
            return self.put(name, _join(chunks, size, name), if_none_match=True) is not None
        if self.head(name) is not None:
            return False
        return self._multipart(name, chunks, size, part_size, if_none_match=True)

    def put_replacing(self, name: str, chunks: Iterable[Union[bytes, memoryview]], size: int,
                      *, part_size: int = PART_SIZE) -> None:
        """Write the object whether or not one exists (a recomputed result replaces the
        shared one); multipart above ``part_size``, aborted on any failure."""
        if size <= part_size:
            self.put(name, _join(chunks, size, name))
        else:
            self._multipart(name, chunks, size, part_size, if_none_match=False)

    def _multipart(self, name: str, chunks: Iterable[Union[bytes, memoryview]], size: int,
                   part_size: int, *, if_none_match: bool) -> bool:
        """Upload in parts of at most ``part_size`` bytes (one in memory at a time); abort on
        any failure, and on a refused precondition (False)."""
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {part_size} is below S3's smallest part "
                             f"({MIN_PART_SIZE} bytes)")
        part_size = max(part_size, -(-size // MAX_PARTS))
        s3 = self._s3()
        try:
            upload_id = s3.create_multipart_upload(Bucket=self.bucket, Key=name)["UploadId"]
        except Exception as err:  # noqa: BLE001
            self._fail(err, "starting the upload of", name)
        try:
            parts: List[Dict[str, Any]] = []
            sent = 0
            for number, part in enumerate(_parts(chunks, part_size), start=1):
                sent += len(part)
                if sent > size:
                    raise ValueError(f"the chunks of {name!r} hold more than the {size} bytes "
                                     "announced")
                try:
                    response = s3.upload_part(Bucket=self.bucket, Key=name, UploadId=upload_id,
                                              PartNumber=number, Body=part)
                except Exception as err:  # noqa: BLE001
                    self._fail(err, f"uploading part {number} of", name)
                parts.append({"PartNumber": number, "ETag": response["ETag"]})
                del part  # one part in memory at a time
            if sent != size:
                raise ValueError(f"the chunks of {name!r} hold {sent} bytes, not the {size} "
                                 "announced")
            if not if_none_match:
                self._complete(name, upload_id, parts, if_none_match=False)
            elif not self._complete_first(name, upload_id, parts):
                self._abort(name, upload_id)
                return False
            return True
        except BaseException:
            self._abort(name, upload_id)
            raise

    def _complete(self, name: str, upload_id: str, parts: List[Dict[str, Any]], *,
                  if_none_match: bool) -> bool:
        """Complete the upload; False if ``If-None-Match: *`` was refused (an object exists;
        the upload then stays pending until aborted)."""
        arguments: Dict[str, Any] = {"Bucket": self.bucket, "Key": name, "UploadId": upload_id,
                                     "MultipartUpload": {"Parts": parts}}
        if if_none_match:
            arguments["IfNoneMatch"] = "*"
        try:
            self._s3().complete_multipart_upload(**arguments)
        except Exception as err:  # noqa: BLE001
            if if_none_match and self._is_precondition(err):
                return False
            self._fail(err, "completing the upload of", name)
        return True

    def _complete_first(self, name: str, upload_id: str, parts: List[Dict[str, Any]]) -> bool:
        """Complete the upload only if no object has the name: True if it did.

        ``If-None-Match: *`` on the completion is not enough everywhere: SeaweedFS (4.48)
        refuses a completion over an object that exists, but of two completions *at the same
        time* both succeed about one time in five (the later replaces the earlier), while
        its conditional PUT has exactly one winner. So completions of one name take turns
        through a small claim object, created with a conditional PUT, held for the completion
        only (milliseconds, whatever the size: the parts are already uploaded), then deleted:
        the holder checks that no object appeared and completes; a waiter polls until the
        object appears (False) or the claim goes away. A claim older (by the server's clock)
        than a completion can take is left by a crashed uploader and taken over.
        """
        claim = name + CLAIM_SUFFIX
        body = f"completing upload {upload_id} of {name}".encode("utf-8")
        stale_after = self._request_seconds + 5.0
        give_up = time.monotonic() + 2 * stale_after + 10.0
        delay = 0.02
        held: Optional[ObjectInfo] = self.put(claim, body, if_none_match=True)
        watched: Optional[Tuple[str, float]] = None
        while held is None:
            if time.monotonic() > give_up:
                raise RemoteUnavailable(
                    f"S3 endpoint {self.endpoint}, bucket {self.bucket!r}: completing the "
                    f"upload of {name!r} failed: the claim {claim!r} of another upload did "
                    "not go away", code="ClaimHeld")
            if self.head(name) is not None:
                return False
            found = self.head(claim)
            if found is None:
                held = self.put(claim, body, if_none_match=True)
                continue
            if found.server_now:
                stale = found.server_now - found.last_modified > stale_after
            else:  # no Date header: stale once unchanged for that long on our clock
                if watched is None or watched[0] != found.etag:
                    watched = (found.etag, time.monotonic())
                stale = time.monotonic() - watched[1] > stale_after
            if stale:
                held = self.put(claim, body, if_match=found.etag)
                continue
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 0.5)
        try:
            if self.head(name) is not None:
                return False
            return self._complete(name, upload_id, parts, if_none_match=True)
        finally:
            try:
                self.delete(claim, if_match=held.etag)
            except RemoteUnavailable:
                pass  # a claim left behind goes stale; waiters see the object first anyway

    def _abort(self, name: str, upload_id: str) -> None:
        """Abort a multipart upload so that its parts do not linger (errors ignored: the
        caller's error is the one that matters)."""
        try:
            self._s3().abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
        except Exception:  # noqa: BLE001
            pass

    def delete(self, name: str, *, if_match: Optional[str] = None) -> None:
        """Remove the object (a missing one is fine). ``if_match``: only if its ETag is this
        one (a refused precondition is also fine: someone else's object stays)."""
        arguments: Dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if if_match is not None:
            arguments["IfMatch"] = if_match
        try:
            self._s3().delete_object(**arguments)
        except Exception as err:  # noqa: BLE001
            if self._is_missing(err) or (if_match is not None and self._is_precondition(err)):
                return
            self._fail(err, "deleting", name)

    # -- the probe --------------------------------------------------------------------------

    def conditional_writes_enforced(self, probe_prefix: str) -> bool:
        """Whether this endpoint enforces conditional writes (first-writer-wins and leases
        rest on them): asked once per endpoint and bucket per process, with a probe object
        under ``probe_prefix`` that is deleted afterwards. ``probe_detail`` says which check
        failed. Raises :class:`RemoteUnavailable` if the server cannot be asked (and asks
        again next time)."""
        key = (self.endpoint, self.bucket)
        with _PROBE_LOCK:
            if key not in _PROBED:
                _PROBED[key] = self._probe(probe_prefix)
            enforced, self.probe_detail = _PROBED[key]
        return enforced

    def _probe(self, probe_prefix: str) -> Tuple[bool, str]:
        name = f"{probe_prefix.rstrip('/')}/conditional-writes-{uuid.uuid4().hex}"
        if name.startswith("/"):
            name = name[1:]
        where = f"S3 endpoint {self.endpoint}, bucket {self.bucket!r}"
        try:
            first = self.put(name, b"probe 1", if_none_match=True)
            if first is None:
                return False, f"{where}: a new object was refused with If-None-Match: *"
            if self.put(name, b"probe 2", if_none_match=True) is not None:
                return False, (f"{where}: an existing object was replaced despite "
                               "If-None-Match: * (not enforced)")
            if self.put(name, b"probe 3", if_match='"0123456789abcdef0123456789abcdef"'
                        ) is not None:
                return False, (f"{where}: an object was replaced despite an If-Match with a "
                               "wrong ETag (not enforced)")
            if self.put(name, b"probe 4", if_match=first.etag) is None:
                return False, f"{where}: an If-Match with the right ETag was refused"
            return True, f"{where}: conditional writes are enforced"
        except RemoteUnavailable as err:
            if err.status in (400, 501):  # the server refuses the headers it does not know
                return False, f"{where}: conditional writes are not supported ({err})"
            raise
        finally:
            try:
                self.delete(name)
            except RemoteUnavailable:
                pass


def _no_expect_for_empty_bodies(request: Any, **kwargs: Any) -> None:
    """Drop ``Expect: 100-continue`` from a request without a body. botocore sends it with
    every PutObject; on an empty one SeaweedFS (4.48) answers, but the *next* request on that
    connection then gets no answer until the read timeout (and a retried conditional PUT that
    the server had executed comes back refused). The header is not signed."""
    if "Expect" in request.headers and request.headers.get("Content-Length") in ("0", b"0"):
        del request.headers["Expect"]


def _join(chunks: Iterable[Union[bytes, memoryview]], size: int, name: str) -> bytes:
    """The chunks as one bytes object of ``size`` bytes (no copy for a single bytes chunk)."""
    data = b"".join(chunks)
    if len(data) != size:
        raise ValueError(f"the chunks of {name!r} hold {len(data)} bytes, not the {size} "
                         "announced")
    return data


def _parts(chunks: Iterable[Union[bytes, memoryview]], part_size: int) -> Iterator[bytearray]:
    """The bytes of ``chunks`` regrouped into parts of ``part_size`` (the last one shorter):
    one part is built at a time."""
    part = bytearray()
    for chunk in chunks:
        view = memoryview(chunk).cast("B") if not isinstance(chunk, bytes) else memoryview(chunk)
        while len(view):
            take = part_size - len(part)
            part += view[:take]
            view = view[take:]
            if len(part) == part_size:
                yield part
                part = bytearray()
    if part:
        yield part
