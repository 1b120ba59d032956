"""The format of a result in the shared tier: one object per call, signed.

Results are pickles, and loading a pickle runs code: a bucket that others can write is code that
others can run in your jobs. So every object carries a MAC (HMAC-SHA256 with a team secret) over
all of its bytes *and its name*, and nothing is loaded before the MAC checks out. The name is
inside the MAC so that an object copied under another call's name (a valid result, for another
call) fails too. Nothing in this module unpickles anything: the header is JSON, the key and
the value are handed over as bytes.

Layout of an object::

    MAGIC (8) | n (4, little-endian) | header (JSON, utf-8, n bytes) | key_blob | value | trailer (32)

* ``MAGIC_SIGNED`` (``PTDOBJS1``): trailer = HMAC-SHA256(secret, message).
* ``MAGIC_UNSIGNED`` (``PTDOBJU1``): trailer = SHA-256(message): integrity only, for teams that
  opted out of signing; a reader with a secret never accepts such an object, and a reader
  without one never accepts a signed object (it cannot check it).
* message = ``b"persist_to_disk object\\0" + name (utf-8) + b"\\0" + every byte before the
  trailer``.
* header = ``{"created", "compute_seconds", "serializer", "python_version", "origin",
  "key_size", "value_size"}``, and ``"code"`` (``Record.code``) when the record has one
  (objects written before code versions have none: their code is ``""``); the sizes must add
  up to the object's size. Like every header byte, the code is inside the MAC: an object
  cannot be passed off as another code version's result.

Objects stream both ways: :func:`object_chunks` yields slices of the value (no copy) and the
trailer last, computed as it goes, for a multipart upload; :func:`open_object` reads the header
and returns a ``write_value`` callback that copies the value into the local tier's record
while checking the MAC, and raises :class:`ObjectRejected` at the end if it fails, so that
``append_value`` stores nothing.
"""

import hashlib
import hmac
import json
import struct
from typing import BinaryIO, Callable, Iterator, NamedTuple, Optional, Tuple, Union

from ..engine.records import Record, RecordKind

__all__ = ["MAGIC_SIGNED", "MAGIC_UNSIGNED", "ObjectRejected", "RemoteObject", "Signer",
           "object_chunks", "object_size", "open_object", "read_record"]

MAGIC_SIGNED = b"PTDOBJS1"
MAGIC_UNSIGNED = b"PTDOBJU1"
_MAGIC_SIZE = 8
_LENGTH = struct.Struct("<I")
_PREFIX_SIZE = _MAGIC_SIZE + _LENGTH.size  # 12
TRAILER_SIZE = 32
_DOMAIN = b"persist_to_disk object\0"
_MAX_HEADER = 64 * 1024  # a header is ~200 bytes: anything larger is not ours
_COPY_CHUNK = 1 << 20  # write_value copies the value in pieces of at most 1 MiB


class ObjectRejected(Exception):
    """An object that must not be loaded: its MAC does not check out (altered, truncated,
    extended, or stored under another name), it is unsigned and the reader signs, it is signed
    and the reader has no secret, or it is not an object of this format. ``str()`` names the
    object and says why; ``name`` is the object's name."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"The shared object {name!r} was rejected: {why}")
        self.name = name


class Signer:
    """Signs and checks objects: with ``secret``, HMAC-SHA256; with None, unsigned mode
    (SHA-256 for integrity only)."""

    __slots__ = ("_secret", "signed", "magic")

    def __init__(self, secret: Optional[bytes]) -> None:
        if secret is not None:
            if not isinstance(secret, (bytes, bytearray)):
                raise TypeError("the signing secret must be bytes")
            if not secret:
                raise ValueError("the signing secret is empty: it would sign nothing")
        self._secret = bytes(secret) if secret is not None else None
        self.signed: bool = secret is not None
        self.magic = MAGIC_SIGNED if self.signed else MAGIC_UNSIGNED

    def _start(self, name: str):
        """A MAC (or hash) over the domain and ``name``, ready for the object's bytes."""
        mac = (hmac.new(self._secret, digestmod=hashlib.sha256) if self._secret is not None
               else hashlib.sha256())
        mac.update(_DOMAIN)
        mac.update(name.encode("utf-8"))
        mac.update(b"\0")
        return mac

    def __repr__(self) -> str:  # never shows the secret
        return f"Signer(signed={self.signed})"


def _nbytes(blob) -> int:
    return len(blob) if isinstance(blob, (bytes, bytearray)) else memoryview(blob).nbytes


def _header_bytes(record: Record) -> bytes:
    header = {"created": record.created, "compute_seconds": record.compute_seconds,
              "serializer": record.serializer, "python_version": record.python_version,
              "origin": record.origin, "key_size": len(record.key_blob),
              "value_size": _nbytes(record.value_blob)}
    if record.code:
        header["code"] = record.code
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def object_size(record: Record) -> int:
    """The size in bytes of the object of ``record``."""
    return (_PREFIX_SIZE + len(_header_bytes(record)) + len(record.key_blob)
            + _nbytes(record.value_blob) + TRAILER_SIZE)


def object_chunks(name: str, record: Record, signer: Signer, chunk_size: int = 8 << 20
                  ) -> Iterator[Union[bytes, memoryview]]:
    """The bytes of the object of ``record`` stored as ``name``: the header, the key, the
    value in slices of ``chunk_size`` (memoryviews of ``record.value_blob``: no copy), and the
    trailer last, computed as the chunks go by (iterate once)."""
    if record.kind is not RecordKind.VALUE:
        raise ValueError("only value records are stored in the shared tier")
    header = _header_bytes(record)
    mac = signer._start(name)
    prefix = signer.magic + _LENGTH.pack(len(header)) + header
    mac.update(prefix)
    yield prefix
    if record.key_blob:
        mac.update(record.key_blob)
        yield record.key_blob
    value = memoryview(record.value_blob)
    if value.format != "B" or value.ndim != 1:
        value = value.cast("B")
    for start in range(0, len(value), chunk_size):
        piece = value[start:start + chunk_size]
        mac.update(piece)
        yield piece
    yield mac.digest()


class RemoteObject(NamedTuple):
    """An object opened for reading: its header and key are read, its value is not yet.
    Nothing here is verified until the value has been read and the trailer checked."""

    created: float
    compute_seconds: float
    serializer: str
    python_version: str
    origin: str
    key_blob: bytes
    value_size: int
    code: str = ""  # absent from objects written before code versions


def _read_exact(stream: BinaryIO, n: int, name: str, what: str) -> bytes:
    """``n`` bytes from ``stream`` (however its reads split them); ObjectRejected if it ends
    first (a truncated object)."""
    data = stream.read(n)
    if len(data) == n:
        return data
    pieces = [data]
    got = len(data)
    while got < n:
        piece = stream.read(n - got)
        if not piece:
            raise ObjectRejected(name, f"it ends inside its {what} (truncated)")
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


def _text(header: dict, field: str, name: str) -> str:
    value = header.get(field)
    if not isinstance(value, str) or not value.isascii():
        raise ObjectRejected(name, f"its header's {field!r} is not ASCII text")
    return value


def _number(header: dict, field: str, name: str, kind=(int, float)):
    value = header.get(field)
    if isinstance(value, bool) or not isinstance(value, kind) or value < 0:
        raise ObjectRejected(name, f"its header's {field!r} is not a non-negative number")
    return value


def _open(name: str, stream: BinaryIO, size: int, signer: Signer):
    """Read and check the magic, header and key; return (RemoteObject, the running MAC)."""
    if size < _PREFIX_SIZE + TRAILER_SIZE:
        raise ObjectRejected(name, f"{size} bytes is too short for an object of this format")
    prefix = _read_exact(stream, _PREFIX_SIZE, name, "header")
    magic = prefix[:_MAGIC_SIZE]
    if magic != signer.magic:
        if magic == MAGIC_UNSIGNED:
            raise ObjectRejected(name, "it is not signed, and this reader loads only signed "
                                       "objects")
        if magic == MAGIC_SIGNED:
            raise ObjectRejected(name, "it is signed, and this reader has no secret to "
                                       "check its signature")
        raise ObjectRejected(name, "it is not an object of this format (wrong magic bytes)")
    (header_size,) = _LENGTH.unpack_from(prefix, _MAGIC_SIZE)
    if header_size > min(_MAX_HEADER, size - _PREFIX_SIZE - TRAILER_SIZE):
        raise ObjectRejected(name, f"its header length ({header_size}) does not fit its size")
    raw = _read_exact(stream, header_size, name, "header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ObjectRejected(name, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ObjectRejected(name, "its header is not a JSON object")
    key_size = _number(header, "key_size", name, int)
    value_size = _number(header, "value_size", name, int)
    if _PREFIX_SIZE + header_size + key_size + value_size + TRAILER_SIZE != size:
        raise ObjectRejected(name, f"its header's sizes do not add up to its size ({size} "
                                   "bytes): truncated, extended or altered")
    mac = signer._start(name)
    mac.update(prefix)
    mac.update(raw)
    key_blob = _read_exact(stream, key_size, name, "key")
    mac.update(key_blob)
    opened = RemoteObject(float(_number(header, "created", name)),
                          float(_number(header, "compute_seconds", name)),
                          _text(header, "serializer", name),
                          _text(header, "python_version", name),
                          _text(header, "origin", name), key_blob, value_size,
                          _text(header, "code", name) if "code" in header else "")
    if "+" in opened.serializer:
        raise ObjectRejected(name, "its header's serializer name contains '+'")
    return opened, mac


def _check(name: str, mac, trailer: bytes, signer: Signer) -> None:
    if not hmac.compare_digest(mac.digest(), trailer):
        why = ("its signature does not match (altered, stored under another name, or signed "
               "with another secret)" if signer.signed
               else "its checksum does not match (altered, or stored under another name)")
        raise ObjectRejected(name, why)


def open_object(name: str, stream: BinaryIO, size: int, signer: Signer
                ) -> Tuple[RemoteObject, Callable[[BinaryIO], str]]:
    """Open the object ``name`` (``size`` bytes, read from ``stream``): read its header and
    key, and return them with ``write_value(out)``, which copies the value into ``out`` in
    pieces of at most 1 MiB while checking the MAC, reads and compares the trailer, and returns
    the serializer's name; or raises :class:`ObjectRejected` (after having written the value:
    a caller such as ``CallStore.append_value`` then stores nothing). ``write_value`` reads the
    stream and may be called once. The header is not trusted until it returns."""
    opened, mac = _open(name, stream, size, signer)
    used = []

    def write_value(out: BinaryIO) -> str:
        if used:
            raise RuntimeError(f"the value of {name!r} has already been read from its stream")
        used.append(True)
        left = opened.value_size
        while left:
            piece = stream.read(min(left, _COPY_CHUNK))
            if not piece:
                raise ObjectRejected(name, "it ends inside its value (truncated)")
            mac.update(piece)
            out.write(piece)
            left -= len(piece)
        trailer = _read_exact(stream, TRAILER_SIZE, name, "signature")
        if stream.read(1):
            raise ObjectRejected(name, "it goes on after its signature (extended)")
        _check(name, mac, trailer, signer)
        return opened.serializer

    return opened, write_value


def read_record(name: str, stream: BinaryIO, size: int, signer: Signer) -> Record:
    """The whole object ``name`` read into memory (one copy) and verified, as a value Record
    (its value a read-only memoryview of that copy): for when the local tier cannot store it.
    Raises :class:`ObjectRejected` as :func:`open_object` does."""
    opened, mac = _open(name, stream, size, signer)
    buffer = bytearray(opened.value_size + TRAILER_SIZE)
    view = memoryview(buffer)
    position = 0
    while position < len(buffer):
        piece = stream.read(min(len(buffer) - position, _COPY_CHUNK))
        if not piece:
            raise ObjectRejected(name, "it ends before its signature (truncated)")
        view[position:position + len(piece)] = piece
        position += len(piece)
    if stream.read(1):
        raise ObjectRejected(name, "it goes on after its signature (extended)")
    value = view[:opened.value_size].toreadonly()
    mac.update(value)
    _check(name, mac, bytes(view[opened.value_size:]), signer)
    if opened.value_size <= 64 * 1024:
        value = bytes(value)  # small values as bytes, like the local tier's records
    return Record(RecordKind.VALUE, opened.created, opened.compute_seconds, opened.serializer,
                  opened.python_version, opened.key_blob, value, 0, opened.origin, opened.code)
