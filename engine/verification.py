"""Verification: can every record of a store be read?

Opens the store (a garbage or truncated ``data.mdb`` fails here, as it would for any reader)
and walks every key, superseded versions and tombstones included, so that LMDB touches every
page, and checks each record's header against its length. This is the engine's half of
``ptd verify``: it never unpickles anything (whether a result can be loaded is the API layer's
question, ``ptd verify --deep``).

The walk is split into short read transactions, as ``Store.scan`` is, so that verifying a large
store while jobs write to it never pins old pages (which would make the file grow).
"""

import json
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import lmdb

from . import keys
from .durability import Durability
from .environments import POOL, EnvironmentPool, StoreMissing
from .errors import EngineError, StoreFormatError
from .records import _HEADER, RECORD_FORMAT, RecordKind

MAX_LISTED_PROBLEMS = 100
_BATCH = 4096
_KINDS = {int(kind) for kind in RecordKind}
_RESERVED_PREFIX = keys.META_KEY[:keys.BUCKET_SIZE]


@dataclass
class StoreVerification:
    path: str
    records: int = 0          # record versions read: values and tombstones
    tombstones: int = 0
    newer_format: int = 0     # records (or a store) written by a newer version: not damage
    problems: List[str] = field(default_factory=list)   # damage, at most MAX_LISTED_PROBLEMS
    problem_count: int = 0
    vanished: bool = False    # the store was removed while being verified (not damage)

    @property
    def damaged(self) -> bool:
        return self.problem_count > 0

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            self.problems.append(text)


def _describe(key: bytes) -> str:
    if keys.is_record_key(key):
        bucket, digest, sequence = keys.split_key(key)
        return f"record bucket {bucket} digest {digest.hex()} version {sequence}"
    return f"key {bytes(key[:40]).hex()}"


def _check_record(key: bytes, value: bytes, report: StoreVerification) -> None:
    report.records += 1
    if len(value) < _HEADER.size:
        report.problem(f"{_describe(key)}: {len(value)} bytes, shorter than a record header")
        return
    fmt, kind, created, compute_seconds, n_ser, n_py, n_key = _HEADER.unpack_from(value, 0)
    if fmt > RECORD_FORMAT:
        report.newer_format += 1
        return
    if fmt != RECORD_FORMAT:
        report.problem(f"{_describe(key)}: unknown record format {fmt}")
        return
    if kind not in _KINDS:
        report.problem(f"{_describe(key)}: unknown record kind {kind}")
        return
    if _HEADER.size + n_ser + n_py + n_key > len(value):
        report.problem(f"{_describe(key)}: its fields need {_HEADER.size + n_ser + n_py + n_key}"
                       f" bytes but the record has {len(value)}")
        return
    try:
        bytes(value[_HEADER.size:_HEADER.size + n_ser + n_py]).decode("ascii")
    except UnicodeDecodeError:
        report.problem(f"{_describe(key)}: its serializer or Python version is not text")
        return
    if not (math.isfinite(created) and math.isfinite(compute_seconds)):
        report.problem(f"{_describe(key)}: its creation or compute time is not a number")
        return
    if kind == RecordKind.TOMBSTONE:
        report.tombstones += 1


def _check_meta(value: bytes, report: StoreVerification) -> None:
    try:
        document = json.loads(bytes(value))
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        report.problem(f"the store's metadata document cannot be read ({err})")
        return
    from .store import STORE_FORMAT  # store imports this module's siblings; keep it lazy
    if int(document.get("store_format", STORE_FORMAT)) > STORE_FORMAT:
        report.newer_format += 1


def _check_batch(txn: "lmdb.Transaction", start: bytes, report: StoreVerification
                 ) -> Tuple[Optional[bytes], int]:
    """Check up to ``_BATCH`` keys from ``start``; return the next start (None at the end) and
    how many keys were read."""
    cursor = txn.cursor()
    if not cursor.set_range(start):
        return None, 0
    count = 0
    while True:
        key, value = cursor.key(), cursor.value()
        count += 1
        if keys.is_record_key(key):
            _check_record(key, value, report)
        elif key == keys.META_KEY:
            _check_meta(value, report)
        elif not key.startswith(_RESERVED_PREFIX):  # other reserved keys: the engine's own
            report.problem(f"{_describe(key)}: a key of {len(key)} bytes that is not a record")
        if not cursor.next():
            return None, count
        if count >= _BATCH:
            return bytes(cursor.key()), count


def verify_store(leaf: str, *, progress: Optional[Callable[[int], None]] = None,
                 durability: Durability = Durability.STANDARD,
                 pool: EnvironmentPool = POOL) -> StoreVerification:
    """Read every record of the store in ``leaf`` and report what cannot be read.

    Never raises for a damaged store: the damage is the report. ``progress`` is called with the
    number of keys read by each batch.
    """
    report = StoreVerification(leaf)
    start: Optional[bytes] = b""
    while start is not None:
        try:
            start, count = pool.read(leaf, durability,
                                     lambda txn: _check_batch(txn, start, report))
        except StoreMissing:
            report.vanished = True
            return report
        except StoreFormatError:
            report.newer_format += 1
            return report
        except (lmdb.Error, OSError, EngineError) as err:  # the damage is the report
            report.problem(f"{type(err).__name__}: {err}")
            return report
        if progress:
            progress(count)
    return report
