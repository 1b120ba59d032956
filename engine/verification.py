"""Verification: can every record of a store be read, and is each what was written?

Opens the store (a garbage or truncated ``data.mdb`` fails here, as it would for any reader)
and walks every key, superseded versions and tombstones included, so that LMDB touches every
page, and checks each record: its header against its length and, for records with a checksum
(format 2), the checksum over the whole record and the key prefix it lies under, as every hit
does. A bit flipped in a value, a zeroed page or garbage is reported, and so is a record found
under another call's key. This is the engine's half of ``ptd verify``: it never unpickles
anything (whether a result can be loaded is the API layer's question, ``ptd verify --deep``).

The walk is split into short read transactions, as ``Store.scan`` is, so that verifying a large
store while jobs write to it never pins old pages (which would make the file grow).

Before LMDB reads anything, each generation's ``data.mdb`` is checked page by page without LMDB
(``lmdb.verify``, py-lmdb 3.0+): LMDB 0.9 trusts its pages, and on a zeroed or garbage B-tree
page it may stop the process (an assertion, ``Assertion 'IS_LEAF(mp)' failed``) or read out of
bounds rather than return an error. A store whose structure is damaged is reported without being
opened. That check reads the file as it is on disk; when jobs commit to it meanwhile (its size
or modification time changed), it is run again, and skipped after a few tries.
"""

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from struct import error as struct_error

import lmdb

from . import keys
from .durability import Durability
from .pool import POOL, EnvironmentPool, StoreMissing
from .errors import EngineError, StoreFormatError
from .generations import DATA_FILE, existing_generations, generation_folder
from .records import (_FIELDS, FIRST_CHECKSUMMED_FORMAT, RecordKind, is_newer_format,
                      record_problem)

MAX_LISTED_PROBLEMS = 100
STRUCTURE_ATTEMPTS = 5  # structural checks of a file that changed while being checked
_BATCH = 4096
_KINDS = {int(kind) for kind in RecordKind}
_RESERVED_PREFIX = keys.META_KEY[:keys.BUCKET_SIZE]


@dataclass
class StoreVerification:
    path: str
    records: int = 0          # record versions read: values and tombstones
    tombstones: int = 0
    newer_format: int = 0     # records (or a store) written by a newer version: not damage
    without_checksum: int = 0  # records written before checksums (format 1): values unchecked
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
    problem = record_problem(bytes(key[:keys.PREFIX_SIZE]), value)
    if problem is not None:
        report.problem(f"{_describe(key)}: {problem}")
        return
    if is_newer_format(value):
        report.newer_format += 1
        return
    fmt, kind, created, compute_seconds = _FIELDS.unpack_from(value, 0)[:4]
    if fmt < FIRST_CHECKSUMMED_FORMAT:
        report.without_checksum += 1
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


def _file_state(path: str):
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns, info.st_ino


def structure_problems(leaf: str) -> List[str]:
    """What is wrong with the B-tree pages of each generation's data file in ``leaf`` (checked
    offline, without LMDB); empty if nothing, or if this py-lmdb has no verifier."""
    try:
        from lmdb import verify as lmdb_verify
    except ImportError:  # py-lmdb before 3.0: the walk through LMDB is the only check
        return []
    problems: List[str] = []
    for generation in existing_generations(leaf):
        path = os.path.join(generation_folder(leaf, generation), DATA_FILE)
        for _ in range(STRUCTURE_ATTEMPTS):
            try:
                before = _file_state(path)
                try:
                    found = lmdb_verify.verify(path, subdir=False)
                except lmdb_verify.VerifyError as err:
                    found = [f"cannot be read as an LMDB data file ({err})"]
                except (ValueError, IndexError, struct_error) as err:  # pragma: no cover
                    found = [f"cannot be read as an LMDB data file ({type(err).__name__}: "
                             f"{err})"]
                changed = _file_state(path) != before
            except FileNotFoundError:
                break  # compacted away meanwhile: the walk below follows the switch
            except OSError as err:
                problems.append(f"{path} cannot be read: {err}")
                break
            if not changed:
                problems.extend(f"{path}: {problem} (LMDB's page structure)"
                                for problem in found)
                break
    return problems


def verify_store(leaf: str, *, progress: Optional[Callable[[int], None]] = None,
                 durability: Durability = Durability.STANDARD,
                 pool: EnvironmentPool = POOL) -> StoreVerification:
    """Read every record of the store in ``leaf`` and report what cannot be read.

    Never raises for a damaged store: the damage is the report. ``progress`` is called with the
    number of keys read by each batch.
    """
    report = StoreVerification(leaf)
    structure = structure_problems(leaf)
    if structure:
        for problem in structure:
            report.problem(problem)
        return report  # not opened: LMDB could abort the process on such pages
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
