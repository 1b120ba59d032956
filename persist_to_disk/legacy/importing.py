"""Import 0.0.7 bucket files into our stores.

Every folder under SRC holding ``<bucket>.pkl`` files becomes the store at the same relative path
under DEST. Entries are stored under the digest described in :mod:`persist_to_disk.imported`,
with their origin set to :data:`~persist_to_disk.imported.IMPORTED_ORIGIN` (marked as imported),
with the bucket file's modification time as their creation time (0.0.7 recorded no compute
time). Nothing already stored is replaced: an entry whose call is already in DEST is skipped,
so importing twice is harmless. A bucket file that cannot be read (truncated, not a pickle, or a
result whose class cannot be imported here) is reported and skipped, and the rest goes on.

Files are read under 0.0.7's own locks, since 0.0.7 rewrites them in place. Bucket files are
pickles: every leaf folder of SRC (and the folders above it up to SRC) is checked against the
trust rule at the configured sharing level before anything is loaded, and each file as it is
read (:mod:`.buckets`); a tree others could have written is refused with
``UntrustedFolderError``, nothing imported.

Commits: a store the import creates is written without an fsync per entry (``fast``) and made
durable by its last entry, written with the configured durability, whose commit flushes all
earlier ones; a store that already held results gets the configured durability throughout,
because a store damaged by an OS crash mid-import would lose what it held before.

Each store written is logged (INFO, ``persist_to_disk`` logger), and so is each bucket file
that is skipped.
"""

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from filelock import Timeout

from ..engine import Durability, Record, RecordKind, UntrustedFolderError
from ..engine.interface import StorageTier
from ..errors import UnkeyableArgumentError, UnpicklableResultError
from ..imported import IMPORTED_ORIGIN, legacy_digest
from ..keying import bucket_of
from ..serialization import PYTHON_VERSION, dumps, dumps_key
from . import buckets
from .keys import is_legacy_key

SOURCE_NAME = "persist-to-disk 0.0.7"
log = logging.getLogger("persist_to_disk")


@dataclass
class ImportReport:
    source: str
    destination: str
    stores: int = 0
    bucket_files: int = 0             # files read
    imported: int = 0                 # entries stored
    already_stored: int = 0           # entries whose call DEST already held: kept as they were
    skipped: Dict[str, int] = field(default_factory=dict)   # reason -> entries
    failed_files: List[str] = field(default_factory=list)   # skipped files, with why

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


class _LeafWriter:
    """Appends imported records to one store, holding the last one back so that it can be
    written with the durable setting (see the module docstring)."""

    def __init__(self, storage: StorageTier, leaf: str, durability: Durability,
                 meta: dict) -> None:
        self.durable = storage.open_store(leaf, durability)
        self.fresh = not self.durable.exists()
        self.bulk = storage.open_store(leaf, Durability.FAST) if self.fresh else self.durable
        self.meta = meta
        self.pending: Optional[Tuple[int, bytes, Record]] = None

    def holds(self, bucket: int, digest: bytes) -> bool:
        """Whether the store (or the record held back) has this call already. Read through
        ``bulk``: a store's handle has one durability, and switching reopens the environment."""
        if self.pending is not None and self.pending[:2] == (bucket, digest):
            return True
        return self.bulk.latest(bucket, digest) is not None

    def add(self, bucket: int, digest: bytes, record: Record) -> None:
        if self.pending is not None:
            self.bulk.append(*self.pending, meta=self.meta)
        self.pending = (bucket, digest, record)

    def finish(self) -> None:
        if self.pending is not None:
            self.durable.append(*self.pending, meta=self.meta)
            self.pending = None


def _check_trees(source: str, destination: str) -> None:
    inside = os.path.commonpath([source, destination])
    if inside in (source, destination):
        raise ValueError(f"SRC {source} and DEST {destination} overlap; import into a folder "
                         "outside the 0.0.7 tree (for example your persist path).")


def _read_bucket(leaf: str, bucket: int, path: str, sharing) -> bytes:
    try:
        with buckets.bucket_lock(leaf, bucket):
            return buckets.read_bucket_bytes(path, sharing)
    except (Timeout, UntrustedFolderError):
        raise
    except PermissionError:
        # A tree we may not write (another user's, a read-only copy) cannot get lock files;
        # nobody can be rewriting its files through this mount either.
        return buckets.read_bucket_bytes(path, sharing)


def _import_file(writer: _LeafWriter, path: str, content: dict, hashsize: int,
                 skipped: Counter, report: ImportReport,
                 progress: Optional[Callable[[int], None]]) -> None:
    created = os.path.getmtime(path)
    for key, value in content.items():
        if progress:
            progress(1)
        if not is_legacy_key(key):
            skipped["not a 0.0.7 key"] += 1
            continue
        try:
            digest = legacy_digest(key)
        except (UnkeyableArgumentError, RecursionError):
            skipped["key cannot be keyed"] += 1
            continue
        bucket = bucket_of(digest, hashsize)
        if writer.holds(bucket, digest):
            report.already_stored += 1
            continue
        try:
            blob, serializer = dumps(value, f"The result stored in {path}")
        except UnpicklableResultError:
            skipped["result cannot be stored"] += 1
            continue
        record = Record(RecordKind.VALUE, created, 0.0, serializer, PYTHON_VERSION,
                        dumps_key(key), blob, origin=IMPORTED_ORIGIN)
        writer.add(bucket, digest, record)
        report.imported += 1


def import_tree(source: str, destination: str, *, hashsize: Optional[int] = None,
                default_hashsize: int = 500, durability: Durability = Durability.STANDARD,
                progress: Optional[Callable[[int], None]] = None,
                sharing=None, storage: Optional[StorageTier] = None) -> ImportReport:
    """Import every 0.0.7 leaf folder under ``source`` into stores under ``destination``.

    ``hashsize``: buckets of the stores written, which must be the decorator's (by default an
    existing store's own, else ``default_hashsize``, the configured one). ``sharing``: whose
    bucket files may be loaded (default: the configured ``shared`` level); an untrusted
    folder raises ``UntrustedFolderError`` before anything is imported. ``storage``: the tier
    whose stores are written (default: the local one, :func:`.buckets.local_storage`).
    """
    source, destination = os.path.abspath(source), os.path.abspath(destination)
    _check_trees(source, destination)
    leaves = list(buckets.find_legacy_leaves(source))
    for leaf in leaves:
        buckets.check_bucket_folder(leaf, source, sharing)
    storage = buckets.local_storage(storage)
    report = ImportReport(source, destination)
    skipped: Counter = Counter()
    for leaf in leaves:
        dest_leaf = os.path.normpath(os.path.join(destination, os.path.relpath(leaf, source)))
        store = storage.open_store(dest_leaf, durability)
        existing = store.read_meta() if store.exists() else {}
        size = hashsize or int(existing.get("hashsize") or default_hashsize)
        meta = {"function": None, "hashsize": size, "hash_method": None, "groupby": None,
                "leaf": None, "imported_from": SOURCE_NAME, "source": leaf}
        writer = _LeafWriter(storage, dest_leaf, durability, meta)
        imported, present, files, failed = (report.imported, report.already_stored,
                                            report.bucket_files, len(report.failed_files))
        try:
            for bucket, path in buckets.bucket_files(leaf):
                try:
                    content = buckets.load_bucket(_read_bucket(leaf, bucket, path, sharing),
                                                  path)
                except UntrustedFolderError:
                    raise  # planted, or writable by others: a setup to fix, not a bad file
                except buckets.UnreadableBucket as err:
                    report.failed_files.append(f"{err} Skipped.")
                    continue
                except Timeout:
                    report.failed_files.append(
                        f"{path}: its lock was held by another process for "
                        f"{buckets.LOCK_TIMEOUT_SECONDS:.0f} s. Skipped; run the import again.")
                    continue
                except OSError as err:
                    report.failed_files.append(f"{path} cannot be read ({err}). Skipped.")
                    continue
                report.bucket_files += 1
                _import_file(writer, path, content, size, skipped, report, progress)
        finally:
            writer.finish()
        report.stores += 1
        for failure in report.failed_files[failed:]:
            log.info("import from 0.0.7: bucket file skipped: %s", failure)
        log.info("import from 0.0.7: %d entries from %d bucket file(s) of %s into %s "
                 "(hashsize %d); %d already stored there, kept", report.imported - imported,
                 report.bucket_files - files, leaf, dest_leaf, size,
                 report.already_stored - present)
    report.skipped = dict(skipped)
    log.info("import from 0.0.7 of %s into %s done: %d entries from %d bucket file(s) into %d "
             "store(s); %d already stored, %d skipped, %d bucket file(s) failed", source,
             destination, report.imported, report.bucket_files, report.stores,
             report.already_stored, report.skipped_total, len(report.failed_files))
    return report
