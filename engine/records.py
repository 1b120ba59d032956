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
    value_blob: bytes
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


def decode_record(data, sequence: int = 0, with_value: bool = True) -> Record:
    """Decode bytes (or a buffer) written by :func:`encode_record`.

    A record from a newer format raises :class:`StoreFormatError` so the caller can treat it as a
    miss with a warning, rather than misreading its fields.
    """
    if len(data) < _HEADER.size:
        raise StoreFormatError(f"record of {len(data)} bytes is shorter than its header")
    fmt, kind, created, compute_seconds, n_ser, n_py, n_key = _HEADER.unpack_from(data, 0)
    if fmt != RECORD_FORMAT:
        raise StoreFormatError(
            f"record format {fmt} is not supported by this version (which reads format "
            f"{RECORD_FORMAT}); upgrade persist_to_disk to read it"
        )
    start = _HEADER.size
    end = start + n_ser
    serializer = str(data[start:end], "ascii")
    start, end = end, end + n_py
    python_version = str(data[start:end], "ascii")
    start, end = end, end + n_key
    key_blob = bytes(data[start:end])
    value_blob = bytes(data[end:]) if with_value else b""
    try:
        kind = _KINDS[kind]
    except KeyError:
        raise StoreFormatError(f"record kind {kind} is unknown to this version") from None
    return Record(kind, created, compute_seconds, serializer, python_version, key_blob,
                  value_blob, sequence)
