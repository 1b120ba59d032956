"""The record: what one stored version of one call holds.

A record is a small fixed header, two opaque blobs and two short text fields. The engine never
interprets the blobs (the API layer pickles the key tuple and the result into them); it keeps
what maintenance needs beside them: kind (value or tombstone), creation time, compute time, and
which serializer and Python wrote the value, so that a payload tied to one Python version can be
treated as a miss elsewhere instead of crashing.

Format 3 (written for a record that carries code, ``Record.code != ""``)::

    fields (28) | head crc (4) | key_blob | value_blob | serializer | python_version | code | crc

Format 2 (written for a record without code: ``Record.code == ""``)::

    fields (28) | head crc (4) | key_blob | value_blob | serializer | python_version | crc (4)

* ``fields`` = format, kind, the length of ``code`` (2 spare bytes in format 2, zero), created,
  compute_seconds and the lengths of serializer, python_version and key_blob (``<BBHddHHI``;
  format 2 reads it as ``<BBxxddHHI``, the whole header of format 1).
* ``code`` (format 3 only) is the code version the result was computed by, as the layer above
  spells it (ASCII, at most 65,535 bytes; the decorator writes ``<fingerprint>|<version>``, at
  most 200). The engine only stores, counts and compares it (``Store.code_versions``,
  ``CompactionPolicy.keep_fingerprint``). Format 2 is still written when there is no code,
  so that a cache written with ``code_changes='ignore'`` stays readable by versions that read
  format 2 only, and its records stay as small as before.
* The last 4 bytes are a CRC-32 of the record's key prefix (bucket and digest: the call it is
  stored under) followed by every byte before them, little-endian. The CRC of any bytes followed
  by their own CRC is a constant (``_RESIDUE``), so a reader checks the whole record with one
  pass, ``crc32(record, crc32(prefix)) == _RESIDUE``, without slicing or copying anything. A bit
  flipped anywhere (header, texts, code, key, value), a zeroed page, garbage, a truncated or
  extended value, or a record found under another call's key (the prefix is part of the
  checksummed bytes) fails it; the key tuple is never unpickled to check whose record it is.
  The sequence number is not covered: the record is written before its sequence is chosen, and
  another version of the same call is still that call's result.
* ``serializer`` also carries the record's *origin* (``Record.origin``: ``ptd-0.0.7`` for a
  result imported from a 0.0.7 bucket), as ``pickle:5+ptd-0.0.7``: a field of its own in
  ``Record``, a suffix on disk (:func:`serializer_tag` writes it, ``_decode_texts`` splits it),
  so that records imported before the field existed read the same.
* ``head crc`` is a CRC-32 of the prefix, ``fields`` and the texts (code included): enough to
  trust the header (is it stored, is it a tombstone, can this Python load it, which code made
  it) without reading the value, for ``is_cached()``, ``CHECKONLY``, ``forget()`` and counting
  code versions.
* The texts come last because the serializer is known only once the value is written: the value
  is pickled straight into the record's buffer (:func:`build_record`), not into bytes of its
  own that are then copied into the record.
* Every later format must keep the trailing CRC as defined here, so that any version can tell a
  record of a newer format (checksum right) from a damaged one (checksum wrong). A version that
  reads formats 1 and 2 only (before code versions) reports a format-3 record as written by a
  newer version (a miss with a warning, counted as unreadable, never dropped by compaction).

Format 1 (``fields | serializer | python_version | key_blob | value_blob``, no checksum) is still
read: caches written before checksums keep working, without the damage detection.

Why CRC-32 (``zlib.crc32``): it is the fastest checksum in the standard library here, and
detects every burst of up to 32 flipped bits and all but 2^-32 of random damage; tampering is
not the threat (whoever can write the cache can write a matching checksum, see the trust rules).
Measured on this project's machine (AMD EPYC, Python 3.11.7, zlib 1.2.13), µs per call:

    ========  =======  =======  =======  ======  ===================
    size      crc32    adler32  blake2b  sha1
    ========  =======  =======  =======  ======  ===================
    1 KB      0.34     0.34     1.30     0.80
    1 MB      248      291      1,113    544     (crc32: 4.2 GB/s)
    100 MB    24,700   29,100   111,000  54,300
    ========  =======  =======  =======  ======  ===================

A hit pays one CRC pass over the record: ~0.25 µs on a small result (short inputs cost ~40 ns a
call and ~1.3 ns a byte); on large results it is the main cost next to unpickling (1 MB: ~250 µs
of CRC against ~65 µs to unpickle in place, so a 1 MB hit takes ~3-4x a raw LMDB get and
``pickle.loads``; 100 MB: ~25 ms of CRC, still faster than the raw get, which copies). Only a
faster hash outside the standard library would change that: XXH3-64 (the ``xxhash`` package)
measured 0.08 µs / 17 µs / 4.2 ms for the three sizes above.
"""

import enum
import io
import struct
import zlib
from typing import BinaryIO, Callable, NamedTuple, Optional

from .errors import StoreFormatError

#: The newest record format: what this version writes for a record with code, and the highest
#: it reads. A record without code is written as :data:`FORMAT_WITHOUT_CODE`.
RECORD_FORMAT = 3
#: What a record without code is written as (readable by versions before code versions).
FORMAT_WITHOUT_CODE = 2
#: The first format with checksums (format 1 has none).
FIRST_CHECKSUMMED_FORMAT = 2
#: Every format's leading fields (the whole header of format 1), code length left out.
_FIELDS = struct.Struct("<BBxxddHHI")  # format, kind, created, compute_seconds, len x3
#: The same 28 bytes with the code length (format 3; zero in formats 1 and 2).
_FIELDS_WITH_CODE = struct.Struct("<BBHddHHI")
_HEADER = struct.Struct("<BBxxddHHII")  # formats 2 and 3: the fields, then their checksum
_CRC = struct.Struct("<I")
_FIELDS_SIZE = _FIELDS.size  # 28
_HEADER_SIZE = _HEADER.size  # 32
_TRAILER_SIZE = _CRC.size
_MIN_SIZE = _HEADER_SIZE + _TRAILER_SIZE
_MAX_CODE = 0xFFFF
_RESIDUE = 0x2144DF1C  # crc32(data + crc32(data) as 4 little-endian bytes), for any data
_crc32 = zlib.crc32


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
    #: Where the record came from, when not from a call of this version: ``"ptd-0.0.7"`` for
    #: a result imported from a 0.0.7 ``.pkl`` bucket; ``""`` for a computed one.
    origin: str = ""
    #: The code version that computed the result (ASCII; the decorator writes
    #: ``<fingerprint>|<version label>``); ``""`` when unknown: written before code versions,
    #: under ``code_changes='ignore'``, imported from 0.0.7, or a tombstone.
    code: str = ""

    @property
    def is_tombstone(self) -> bool:
        return self.kind is RecordKind.TOMBSTONE


class CodeVersionStats(NamedTuple):
    """What a store holds of one code version (see ``CallStore.code_versions``)."""

    records: int         # value records written by it, superseded versions included
    last_written: float  # ``created`` of the newest of them (seconds since the epoch)
    #: When it last wrote a result that is still its call's newest of known code, as far as
    #: the store can tell (``Store.code_versions``): what ``ptd compact --drop-old-code``
    #: orders code versions by. -inf when another code superseded each of its results.
    last_current: float = float("-inf")


class DamagedRecordError(StoreFormatError):
    """A record's bytes fail their checksum or contradict each other: they were altered on disk
    (or the record lies under another call's key). Readers treat it as a miss, never as a value;
    ``ptd verify`` reports it. A ``StoreFormatError``, so that every reader that skips records
    it cannot interpret (scans, stats, compaction) also skips, and keeps, damaged ones."""


_KINDS = {int(kind): kind for kind in RecordKind}


def serializer_tag(serializer: str, origin: str = "") -> bytes:
    """The serializer field as stored: ``serializer``, then ``"+" + origin`` when the record
    has an origin. The one place a record's origin is encoded (:func:`_decode_texts` is the
    one place it is decoded, splitting at the first ``"+"``).

    The origin rides in the serializer field so that the format stays as it is: records
    imported from 0.0.7 by earlier versions already say ``pickle:5+ptd-0.0.7`` there, and
    their checksums cover those bytes. A serializer name therefore never contains ``"+"``.
    """
    if origin and "+" in serializer:
        raise ValueError(f"a serializer name may not contain '+': {serializer!r}")
    return (serializer + "+" + origin if origin else serializer).encode("ascii")


def _code_bytes(code: str) -> bytes:
    """The code field as stored (b"" for a record without code: it is written as format 2)."""
    if not code:
        return b""
    try:
        raw = code.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"a record's code must be ASCII text, got {code!r}") from None
    if len(raw) > _MAX_CODE:
        raise ValueError(f"a record's code is at most {_MAX_CODE} bytes, got {len(raw)}")
    return raw


def _head_crc(prefix: bytes, fields, texts) -> int:
    return _crc32(texts, _crc32(fields, _crc32(prefix)))


def encode_record(record: Record, prefix: bytes = b"") -> bytes:
    """The bytes of ``record`` (format 3 if it has code, else 2), checksummed for the key
    ``prefix`` it is stored under (``keys.record_prefix(bucket, digest)``; the engine always
    passes it)."""
    serializer = serializer_tag(record.serializer, record.origin)
    python_version = record.python_version.encode("ascii")
    code = _code_bytes(record.code)
    texts = serializer + python_version + code
    fields = _FIELDS_WITH_CODE.pack(RECORD_FORMAT if code else FORMAT_WITHOUT_CODE,
                                    int(record.kind), len(code), record.created,
                                    record.compute_seconds, len(serializer), len(python_version),
                                    len(record.key_blob))
    header = fields + _CRC.pack(_head_crc(prefix, fields, texts))
    crc = _crc32(prefix)
    for part in (header, record.key_blob, record.value_blob, texts):
        crc = _crc32(part, crc)
    return b"".join((header, record.key_blob, record.value_blob, texts, _CRC.pack(crc)))


def build_record(prefix: bytes, kind: RecordKind, created: float, compute_seconds: float,
                 python_version: str, key_blob: bytes,
                 write_value: Callable[[BinaryIO], str], origin: str = "",
                 code: str = "") -> memoryview:
    """A record (format 3 with ``code``, else 2) whose value ``write_value(file)`` writes into
    the record's own buffer (returning the serializer's name), as one writable buffer ready
    for ``txn.put``.

    Storing a large result this way holds two copies of it besides the object: this buffer,
    and LMDB's own copy into its pages while it writes (py-lmdb cannot reserve the space for
    the value in place). ``pickle.dumps`` then joining the record held three (a 500 MB result
    peaked at 2 GB of memory; now 1.5 GB). The checksums are computed over the buffer in
    place. Whatever ``write_value`` raises propagates (nothing has been written to the store
    then); it may write, fail, truncate back and write again.

    On every miss: the texts (serializer, Python version, code) are encoded once per function,
    and the header and both checksums are packed into the one view of the buffer
    (``pack_into``); filling the header in through a slice of a first view and taking a second
    one for the trailer cost ~2 µs more of a small record's ~5 µs (timeit, issue 15). The bytes
    are exactly :func:`encode_record`'s (``tests/test_write_path.py``).
    """
    code_raw = _CODES.get(code)
    if code_raw is None:
        code_raw = _code_bytes(code)  # checked before the value is written
        if len(_CODES) >= _TEXTS_LIMIT:
            _CODES.clear()
        _CODES[code] = code_raw
    if (python_version, origin) not in _CHECKED_TEXTS:  # checked before the value is written
        python_version.encode("ascii")
        serializer_tag("pickle", origin)
        if len(_CHECKED_TEXTS) >= _TEXTS_LIMIT:
            _CHECKED_TEXTS.clear()
        _CHECKED_TEXTS.add((python_version, origin))
    out = io.BytesIO()
    out.write(_NO_HEADER)
    out.write(key_blob)
    serializer = write_value(out)
    tail = _TAILS.get((serializer, origin, python_version, code))
    if tail is None:
        tail = _tail(serializer, origin, python_version, code, code_raw)
    texts, fmt, n_ser, n_py = tail
    out.seek(0, io.SEEK_END)
    out.write(texts)
    end = out.tell()
    out.write(_NO_CRC)
    # One view of the buffer, written into in place (``pack_into``: no slice assignment, no
    # second view), ~2 µs less per miss than filling the header in through a view, then
    # appending the checksum and taking another view.
    record = out.getbuffer()
    _pack_header_into(record, 0, fmt, kind, len(code_raw), created, compute_seconds, n_ser,
                      n_py, len(key_blob), 0)
    crc = _crc32(prefix)
    _pack_crc_into(record, _FIELDS_SIZE,
                   _crc32(texts, _crc32(record[:_FIELDS_SIZE], crc)))  # the head's checksum
    _pack_crc_into(record, end, _crc32(record[:end], crc))
    return record


_NO_HEADER = bytes(_HEADER_SIZE)  # the header's place, filled in once the value is written
_NO_CRC = bytes(_TRAILER_SIZE)  # the checksum's place, filled in last
_pack_header_into = struct.Struct("<BBHddHHII").pack_into  # format 3's fields, head crc
_pack_crc_into = _CRC.pack_into
#: What :func:`build_record` encodes once rather than per record (a function writes the same
#: texts every time): code -> its bytes; (serializer, origin, python_version, code) -> (texts
#: as stored, format, serializer tag's length, python_version's length).
_CODES: dict = {}
_TAILS: dict = {}


def _tail(serializer: str, origin: str, python_version: str, code: str,
          code_raw: bytes) -> tuple:
    tag = serializer_tag(serializer, origin)
    python_raw = python_version.encode("ascii")
    tail = (tag + python_raw + code_raw, RECORD_FORMAT if code_raw else FORMAT_WITHOUT_CODE,
            len(tag), len(python_raw))
    if len(_TAILS) >= _TEXTS_LIMIT:
        _TAILS.clear()
    _TAILS[(serializer, origin, python_version, code)] = tail
    return tail


_unpack_fields = _FIELDS_WITH_CODE.unpack_from
_new_record = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hit path
#: texts bytes -> (serializer, python_version, n_ser, origin, code, n_py)
_TEXTS: dict = {}
_TEXTS_LIMIT = 256
#: (python_version, origin) pairs known to encode (build_record checks them first)
_CHECKED_TEXTS: set = set()
_COPY_LIMIT = 64 * 1024  # values above this are returned as a memoryview of the record bytes


def decode_record(data, sequence: int = 0, with_value: bool = True,
                  prefix: Optional[bytes] = None) -> Record:
    """Decode bytes (or a buffer) written by :func:`encode_record` or :func:`build_record`, of
    any format from 1 to :data:`RECORD_FORMAT`.

    With ``prefix`` (the key prefix the record was read under; every read of the store passes
    it) the checksum is verified: of the whole record when the value is wanted, of the header
    only with ``with_value=False``. A record that fails it, or whose lengths do not add up,
    raises :class:`DamagedRecordError`. A record from a newer format raises
    :class:`StoreFormatError` so the caller can treat it as a miss with a warning, rather than
    misreading its fields.

    Every hit decodes one record, so this is kept lean (~0.65 µs on a small record, and ~0.3
    µs more for its checksum: crc32 of short inputs runs at ~1.3 ns a byte plus ~40 ns a call;
    formats 2 and 3 cost the same): the text fields repeat from record to record (a few
    serializer and Python versions, one code version per function), so their strings are
    looked up by their bytes (checking where they split), not decoded each time.
    """
    if data.__class__ is not bytes:
        return _decode_buffer(data, sequence, with_value, prefix)
    try:
        fmt, kind, n_code, created, compute_seconds, n_ser, n_py, n_key = _unpack_fields(data, 0)
    except struct.error:
        raise StoreFormatError(
            f"record of {len(data)} bytes is shorter than its header") from None
    if fmt != RECORD_FORMAT:
        if fmt != FORMAT_WITHOUT_CODE:
            return _decode_format_1(data, fmt, kind, created, compute_seconds, n_ser, n_py,
                                    n_key, sequence, with_value, prefix)
        n_code = 0  # format 2's spare bytes
    texts_end = len(data) - _TRAILER_SIZE
    texts_start = texts_end - n_ser - n_py - n_code
    key_end = _HEADER_SIZE + n_key
    if key_end > texts_start:
        raise _lengths_damaged(len(data), key_end + n_ser + n_py + n_code + _TRAILER_SIZE)
    if prefix is not None:
        if with_value:
            if _crc32(data, _crc32(prefix)) != _RESIDUE:
                raise _checksum_damaged()
        else:
            _check_head(data, prefix, texts_start, texts_end)
    record_kind = _KINDS.get(kind)
    if record_kind is None:
        raise StoreFormatError(f"record kind {kind} is unknown to this version")
    texts = _TEXTS.get(data[texts_start:texts_end])
    if texts is None or texts[2] != n_ser or texts[5] != n_py:
        texts = _decode_texts(data[texts_start:texts_end], n_ser, n_py)
    if not with_value:
        value = b""
    elif texts_start - key_end > _COPY_LIMIT:
        value = memoryview(data)[key_end:texts_start]  # a large result: unpickled without a copy
    else:
        value = data[key_end:texts_start]
    return _new_record(Record, (record_kind, created, compute_seconds, texts[0], texts[1],
                                data[_HEADER_SIZE:key_end], value, sequence, texts[3],
                                texts[4]))


def _decode_format_1(data: bytes, fmt: int, kind: int, created: float, compute_seconds: float,
                     n_ser: int, n_py: int, n_key: int, sequence: int, with_value: bool,
                     prefix: Optional[bytes]) -> Record:
    """:func:`decode_record` of a format-1 record (no checksum, no code), or the error of a
    format it cannot read."""
    if fmt != 1:
        raise _unsupported(fmt, data, prefix)
    texts_start = _FIELDS_SIZE
    texts_end = key_start = texts_start + n_ser + n_py
    key_end = key_start + n_key
    value_end = len(data)
    if key_end > value_end:
        raise _lengths_damaged(len(data), key_end)
    record_kind = _KINDS.get(kind)
    if record_kind is None:
        raise StoreFormatError(f"record kind {kind} is unknown to this version")
    texts = _decode_texts(data[texts_start:texts_end], n_ser, n_py)
    if not with_value:
        value = b""
    elif value_end - key_end > _COPY_LIMIT:
        value = memoryview(data)[key_end:value_end]
    else:
        value = data[key_end:value_end]
    return _new_record(Record, (record_kind, created, compute_seconds, texts[0], texts[1],
                                data[key_start:key_end], value, sequence, texts[3], texts[4]))


def _check_head(data, prefix: bytes, texts_start: int, texts_end: int) -> None:
    """Verify a format-2 or -3 header (its lengths already checked) without reading the
    value."""
    stored = _CRC.unpack_from(data, _FIELDS_SIZE)[0]
    if _head_crc(prefix, data[:_FIELDS_SIZE], data[texts_start:texts_end]) != stored:
        raise DamagedRecordError(
            "record header fails its checksum: its bytes were altered on disk, or it lies "
            "under another call's key")


def _checksum_damaged() -> DamagedRecordError:
    return DamagedRecordError(
        "record fails its checksum: its bytes were altered on disk, or it lies under another "
        "call's key")


def _lengths_damaged(size: int, needed: int) -> DamagedRecordError:
    return DamagedRecordError(
        f"record of {size} bytes is damaged: its header's lengths need {needed} bytes")


def _unsupported(fmt: int, data, prefix: Optional[bytes]) -> StoreFormatError:
    """A newer format's record (its checksum holds, if ``prefix`` is given to check it), or a
    damaged one."""
    if fmt > RECORD_FORMAT:
        if prefix is not None and not _checksum_holds(data, prefix):
            return _newer_damaged(fmt)
        return StoreFormatError(
            f"record format {fmt} is not supported by this version (which reads formats 1 to "
            f"{RECORD_FORMAT}); upgrade persist_to_disk to read it")
    return DamagedRecordError(f"record format {fmt} is unknown: the record is damaged")


def _decode_texts(raw: bytes, n_ser: int, n_py: int):
    """``(serializer, python_version, n_ser, origin, code, n_py)`` of a record's text fields,
    the serializer tag split at its first ``"+"`` (see :func:`serializer_tag`), the code being
    what follows the Python version (empty before format 3), remembered by their bytes (they
    repeat from record to record)."""
    try:
        serializer, _, origin = str(raw[:n_ser], "ascii").partition("+")
        python_end = n_ser + n_py
        texts = (serializer, str(raw[n_ser:python_end], "ascii"), n_ser, origin,
                 str(raw[python_end:], "ascii"), n_py)
    except UnicodeDecodeError:
        raise DamagedRecordError(
            "record is damaged: its serializer, Python version or code is not text") from None
    if len(_TEXTS) >= _TEXTS_LIMIT:
        _TEXTS.clear()
    _TEXTS[raw] = texts
    return texts


def decode_view(data, sequence: int = 0, prefix: Optional[bytes] = None,
                with_value: bool = True) -> Record:
    """:func:`decode_record` of a buffer whose ``value_blob`` stays a view of ``data`` (no
    copy): for a large value read straight from LMDB's memory map, loaded before the
    transaction ends. The checksum is computed over the view in place. Everything else in the
    returned record is copied out, so it stays valid after the transaction."""
    try:
        fmt, kind, n_code, created, compute_seconds, n_ser, n_py, n_key = _unpack_fields(data, 0)
    except struct.error:
        raise StoreFormatError(
            f"record of {len(data)} bytes is shorter than its header") from None
    if fmt == RECORD_FORMAT or fmt == FORMAT_WITHOUT_CODE:
        if fmt == FORMAT_WITHOUT_CODE:
            n_code = 0  # format 2's spare bytes
        texts_end = len(data) - _TRAILER_SIZE
        texts_start = texts_end - n_ser - n_py - n_code
        key_start = _HEADER_SIZE
        key_end = value_start = key_start + n_key
        value_end = texts_start
    elif fmt == 1:
        texts_start = _FIELDS_SIZE
        texts_end = key_start = texts_start + n_ser + n_py
        key_end = value_start = key_start + n_key
        value_end = len(data)
    else:
        raise _unsupported(fmt, data, prefix)
    if key_end > value_end:
        raise _lengths_damaged(len(data), key_end + (len(data) - value_end))
    if fmt != 1 and prefix is not None:
        if with_value:
            if _crc32(data, _crc32(prefix)) != _RESIDUE:
                raise _checksum_damaged()
        else:
            _check_head(data, prefix, texts_start, texts_end)
    record_kind = _KINDS.get(kind)
    if record_kind is None:
        raise StoreFormatError(f"record kind {kind} is unknown to this version")
    raw_texts = bytes(data[texts_start:texts_end])
    texts = _TEXTS.get(raw_texts)
    if texts is None or texts[2] != n_ser or texts[5] != n_py:
        texts = _decode_texts(raw_texts, n_ser, n_py)
    value = data[value_start:value_end] if with_value else b""
    return _new_record(Record, (record_kind, created, compute_seconds, texts[0], texts[1],
                                bytes(data[key_start:key_end]), value, sequence, texts[3],
                                texts[4]))


def _decode_buffer(data, sequence: int, with_value: bool, prefix: Optional[bytes]) -> Record:
    """:func:`decode_record` of a buffer (a memoryview of a large value, say): the fields
    are copied out to decode them, the value once, as its own bytes."""
    record = decode_view(data, sequence, prefix, with_value)
    return record._replace(value_blob=bytes(record.value_blob)) if with_value else record


def _checksum_holds(data, prefix: bytes) -> bool:
    return len(data) >= _MIN_SIZE and _crc32(data, _crc32(prefix)) == _RESIDUE


def _newer_damaged(fmt: int) -> DamagedRecordError:
    return DamagedRecordError(
        f"record format byte says {fmt} (newer than this version) but the record fails its "
        "checksum: it is damaged")


def record_problem(key_prefix: bytes, data) -> Optional[str]:
    """What is wrong with the record ``data`` stored under ``key_prefix``, or None if nothing
    (a newer format whose checksum holds is not a problem: see :func:`is_newer_format`).

    Checks the whole record, as a hit would, without keeping a copy of it (for ``ptd verify``).
    """
    if len(data) < _FIELDS_SIZE:
        return f"{len(data)} bytes, shorter than a record header"
    fmt = data[0]
    if fmt > RECORD_FORMAT:
        return None if _checksum_holds(data, key_prefix) else str(_newer_damaged(fmt))
    try:
        if (fmt >= FIRST_CHECKSUMMED_FORMAT
                and _crc32(data, _crc32(key_prefix)) != _RESIDUE):
            raise _checksum_damaged()
        decode_view(data, 0, None, with_value=False)
    except StoreFormatError as err:
        return str(err)
    return None


def is_newer_format(data) -> bool:
    """Whether ``data`` says it is a record of a format newer than this version reads."""
    return len(data) > 0 and data[0] > RECORD_FORMAT
