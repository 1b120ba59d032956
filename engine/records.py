"""The record: what one stored version of one call holds.

A record is a small fixed header, two short text fields and two opaque blobs::

    header | serializer | python_version | key_blob | value_blob

The engine never interprets the blobs (the API layer pickles the key tuple and the result into
them); it keeps what maintenance needs beside them: kind (value or tombstone), creation time,
compute time, and which serializer and Python wrote the value, so that a payload tied to one
Python version can be treated as a miss elsewhere instead of crashing.
"""

import enum
import struct
from typing import NamedTuple

from .errors import StoreFormatError

RECORD_FORMAT = 1
_HEADER = struct.Struct("<BBxxddHHI")  # format, kind, created, compute_seconds, len x3


class RecordKind(enum.IntEnum):
    VALUE = 1
    TOMBSTONE = 2


class Record(NamedTuple):
    """One stored version (a NamedTuple: immutable and cheap to build on every hit)."""

    kind: RecordKind
    created: float
    compute_seconds: float
    serializer: str
    python_version: str
    key_blob: bytes
    value_blob: bytes  # decoded values over 64 KiB come as a memoryview (no second copy)
    sequence: int = 0

    @property
    def is_tombstone(self) -> bool:
        return self.kind is RecordKind.TOMBSTONE


_KINDS = {int(kind): kind for kind in RecordKind}


def encode_record(record: Record) -> bytes:
    serializer = record.serializer.encode("ascii")
    python_version = record.python_version.encode("ascii")
    header = _HEADER.pack(
        RECORD_FORMAT,
        int(record.kind),
        record.created,
        record.compute_seconds,
        len(serializer),
        len(python_version),
        len(record.key_blob),
    )
    return b"".join((header, serializer, python_version, record.key_blob, record.value_blob))


_unpack_header = _HEADER.unpack_from
_HEADER_SIZE = _HEADER.size
_new_record = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hit path
_TEXTS: dict = {}  # serializer + python_version bytes -> (serializer, python_version, split)
_TEXTS_LIMIT = 256
_COPY_LIMIT = 64 * 1024  # values above this are returned as a memoryview of the record bytes


def decode_record(data, sequence: int = 0, with_value: bool = True) -> Record:
    """Decode bytes (or a buffer) written by :func:`encode_record`.

    A record from a newer format raises :class:`StoreFormatError` so the caller can treat it as a
    miss with a warning, rather than misreading its fields.

    Every hit decodes one record, so this is kept lean (~0.4 µs): the two short text fields
    repeat from record to record (a few serializer and Python versions), so their strings are
    looked up by their bytes (checking where they split), not decoded each time.
    """
    if data.__class__ is not bytes:
        return _decode_buffer(data, sequence, with_value)
    try:
        fmt, kind, created, compute_seconds, n_ser, n_py, n_key = _unpack_header(data, 0)
    except struct.error:
        raise StoreFormatError(
            f"record of {len(data)} bytes is shorter than its header") from None
    if fmt != RECORD_FORMAT:
        raise StoreFormatError(
            f"record format {fmt} is not supported by this version (which reads format "
            f"{RECORD_FORMAT}); upgrade persist_to_disk to read it"
        )
    record_kind = _KINDS.get(kind)
    if record_kind is None:
        raise StoreFormatError(f"record kind {kind} is unknown to this version")
    texts_end = _HEADER_SIZE + n_ser + n_py
    texts = _TEXTS.get(data[_HEADER_SIZE:texts_end])
    if texts is None or texts[2] != n_ser:
        texts = _decode_texts(data, n_ser, texts_end)
    key_end = texts_end + n_key
    if not with_value:
        value = b""
    elif len(data) - key_end > _COPY_LIMIT:
        value = memoryview(data)[key_end:]  # a large result: unpickled without another copy
    else:
        value = data[key_end:]
    return _new_record(Record, (record_kind, created, compute_seconds, texts[0], texts[1],
                                data[texts_end:key_end], value, sequence))


def _decode_texts(data: bytes, n_ser: int, texts_end: int):
    texts = (str(data[_HEADER_SIZE:_HEADER_SIZE + n_ser], "ascii"),
             str(data[_HEADER_SIZE + n_ser:texts_end], "ascii"), n_ser)
    if len(_TEXTS) >= _TEXTS_LIMIT:
        _TEXTS.clear()
    _TEXTS[data[_HEADER_SIZE:texts_end]] = texts
    return texts


def decode_view(data, sequence: int = 0) -> Record:
    """:func:`decode_record` of a buffer whose ``value_blob`` stays a view of ``data`` (no
    copy): for a large value read straight from LMDB's memory map, loaded before the
    transaction ends."""
    try:
        n_ser, n_py, n_key = _unpack_header(data, 0)[4:]
    except struct.error:
        raise StoreFormatError(
            f"record of {len(data)} bytes is shorter than its header") from None
    key_end = _HEADER_SIZE + n_ser + n_py + n_key
    record = decode_record(bytes(data[:key_end]), sequence, with_value=False)
    return record._replace(value_blob=data[key_end:])


def _decode_buffer(data, sequence: int, with_value: bool) -> Record:
    """:func:`decode_record` of a buffer (a memoryview of a large value, say): the fields
    before the value are copied to decode them, the value once, as its own bytes."""
    record = decode_view(data, sequence)
    return record._replace(value_blob=bytes(record.value_blob) if with_value else b"")
