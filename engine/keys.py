"""Layout of LMDB keys: ``bucket (4 bytes) | digest (16 bytes) | sequence (8 bytes)``.

The bucket prefix keeps one bucket's records together so a bucket can be scanned (for export and
for the bucket-scoped lock); the sequence number makes the store append-only: a recompute writes
the next sequence, and a reader takes the highest one. Big-endian integers sort like numbers.
"""

import struct
from typing import Any, Iterator, Optional, Tuple

DIGEST_SIZE = 16
BUCKET_SIZE = 4
SEQUENCE_SIZE = 8
PREFIX_SIZE = BUCKET_SIZE + DIGEST_SIZE
MAX_BUCKET = 0xFFFFFFFE  # 0xFFFFFFFF is reserved for the store's own metadata
META_KEY = b"\xff\xff\xff\xff" + b"meta"
#: The lowest sequence a call with no record may start at: ``Store.clear`` raises it past every
#: sequence it deleted, so a record key, once written, never comes back with another value
#: (compaction finds what changed during a rebuild by comparing keys alone).
FIRST_SEQUENCE_KEY = b"\xff\xff\xff\xff" + b"first-sequence"
_LAST_SEQUENCE = b"\xff" * SEQUENCE_SIZE
_BUCKET = struct.Struct(">I")
_SEQUENCE = struct.Struct(">Q")


def record_prefix(bucket: int, digest: bytes) -> bytes:
    """The part of the key shared by every version of one call's record."""
    if len(digest) != DIGEST_SIZE:
        raise ValueError(f"digest must be {DIGEST_SIZE} bytes, got {len(digest)}")
    if not 0 <= bucket <= MAX_BUCKET:
        raise ValueError(f"bucket must be in [0, {MAX_BUCKET}], got {bucket}")
    return _BUCKET.pack(bucket) + digest


def bucket_prefix(bucket: int) -> bytes:
    return _BUCKET.pack(bucket)


def after_last_version(prefix: bytes) -> bytes:
    """A key that sorts after every version of ``prefix``: seek here, then step back once."""
    return prefix + _LAST_SEQUENCE


def record_key(prefix: bytes, sequence: int) -> bytes:
    return prefix + _SEQUENCE.pack(sequence)


def split_key(key: bytes):
    """Return ``(bucket, digest, sequence)`` of a record key."""
    bucket = _BUCKET.unpack_from(key, 0)[0]
    digest = bytes(key[BUCKET_SIZE:PREFIX_SIZE])
    sequence = _SEQUENCE.unpack_from(key, PREFIX_SIZE)[0]
    return bucket, digest, sequence


def encode_sequence(sequence: int) -> bytes:
    return _SEQUENCE.pack(sequence)


def decode_sequence(value) -> int:
    return _SEQUENCE.unpack(bytes(value))[0]


def sequence_of(key: bytes) -> int:
    return _SEQUENCE.unpack_from(key, PREFIX_SIZE)[0]


def is_record_key(key: bytes) -> bool:
    return len(key) == PREFIX_SIZE + SEQUENCE_SIZE and not key.startswith(META_KEY[:BUCKET_SIZE])


def newest_of_each_call(cursor, stop: Optional[bytes] = None
                        ) -> Iterator[Tuple[bytes, Any, int]]:
    """Walk the keys from where ``cursor`` stands (the first key if it is not positioned) up
    to ``stop`` (excluded; None: to the end), and yield ``(key, value, versions)`` of the
    newest record of each call, in key order, with how many versions the call has, and
    ``(key, value, 0)`` for every key that is not a record (the store's own documents).

    The one walk of a store by call: ``Store.scan``, ``Store.stats``, ``Store.clear`` and
    compaction all see a call through it, so they agree on what a call's newest record is.
    One pass over the keys in order (the versions of a call are adjacent, oldest first: the
    sequence is the last part of the key); each value is read as the cursor passes it, as
    the four loops it replaces did.
    """
    newest_key = newest_value = None
    versions = 0
    for key, value in cursor.iternext(keys=True, values=True):
        if stop is not None and key >= stop:
            break
        if is_record_key(key):
            if newest_key is not None and newest_key[:PREFIX_SIZE] != key[:PREFIX_SIZE]:
                yield newest_key, newest_value, versions
                versions = 0
            newest_key, newest_value = key, value
            versions += 1
        else:
            if newest_key is not None:
                yield newest_key, newest_value, versions
                newest_key, versions = None, 0
            yield key, value, 0
    if newest_key is not None:
        yield newest_key, newest_value, versions
