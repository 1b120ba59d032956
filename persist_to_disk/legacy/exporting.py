"""Export our stores as 0.0.7 bucket files.

Each store under SRC becomes the folder at the same relative path under DEST (our tree and
0.0.7's have the same shape: ``<project>-<id>/<module path>/<function>/<groupby values>``).
Entries are grouped by 0.0.7 bucket; each bucket file is read, merged and replaced under 0.0.7's
locks, one bucket at a time, so 0.0.7 processes using DEST meanwhile wait milliseconds, not for
the whole export. An entry already in the file under the same key is replaced by ours; every
other entry of the file is kept. A bucket file that cannot be loaded is left untouched and
reported (0.0.7 itself would replace it with an empty one). Bucket files already in DEST are
pickles too: DEST's folders and each file are checked against the trust rule before one is
loaded (:mod:`.buckets`), with the same opt-in (``shared``) as our caches.

0.0.7 has one result per key, and several of our calls can have the same 0.0.7 key: the results
of other ``version=`` values or code versions of one call (each is a call of its own here, kept
side by side), and calls 0.0.7 spells alike (groupby values ``1`` and ``'1'`` share a folder).
Of those, the result created last is exported; the others are skipped and counted. Dates that
tie (a coarse or pinned clock) go to the call recomputed most (the highest sequence: a call's
records are appended in sequence order), then to the call's key, so that the same store
always exports the same result.

Each result goes into the file as the pickle bytes we stored (see
:class:`~.buckets.StoredValue`), after a test load here: a bucket 0.0.7 cannot load is a bucket
it empties, with the entries it already held, so a result that does not load (its module is not
importable here, or it uses a class of a script's ``__main__``) is skipped. Run the export
where the project's modules import. Skipped, and counted by reason: keys 0.0.7 cannot hold
(unhashable values, ``*args``), results that lost to a newer one with the same 0.0.7 key (see
above), keys we did not record, results stored with cloudpickle (0.0.7 does not depend on it)
and results that do not load. Each store exported is logged (INFO, ``persist_to_disk`` logger).
"""

import io
import logging
import os
import pickle
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from filelock import Timeout

from ..engine.interface import CallStore, StorageTier
from ..normalization import unescape_folder_name
from . import buckets
from .keys import NotRepresentable, check_exportable, to_legacy_key

log = logging.getLogger("persist_to_disk")
#: Why a result is not exported when a newer one has its 0.0.7 key (see the module docstring).
NEWER_WITH_SAME_KEY = "a newer result has the same 0.0.7 key"


@dataclass
class ExportReport:
    source: str
    destination: str
    stores: int = 0
    exported: int = 0                  # entries written into bucket files
    replaced: int = 0                  # of which the file already held that key
    bucket_files: int = 0              # files written
    skipped: Dict[str, int] = field(default_factory=dict)   # reason -> entries
    failed_files: List[str] = field(default_factory=list)   # left untouched, with why

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def _leaf_settings(store: CallStore, hashsize: Optional[int], hash_method: Optional[str],
                   default_hashsize: int) -> Tuple[int, str]:
    """The reader's settings: given ones, else what the decorator recorded with the store."""
    meta = store.read_meta()
    return (hashsize or int(meta.get("hashsize") or default_hashsize),
            hash_method or meta.get("hash_method") or "pickle")


def _legacy_folder(store: CallStore, leaf: str, source: str, destination: str) -> str:
    """Where 0.0.7 keeps the leaf: the same relative path, with the groupby folders (recorded by
    the decorator as ``leaf``) named by their values' text, as 0.0.7 names them (ours escape
    values that are a store's own file names: ``lock.mdb`` is our folder ``%lock.mdb``)."""
    parts = os.path.relpath(leaf, source).split(os.sep)
    groups = (store.read_meta().get("leaf") or ".").split(os.sep)
    if groups != ["."] and len(groups) <= len(parts) and parts[-len(groups):] == groups:
        parts[-len(groups):] = [unescape_folder_name(name) for name in groups]
    return os.path.normpath(os.path.join(destination, *parts))


def _plan(store: CallStore, hashsize: int, hash_method: str, skipped: Counter,
          progress: Optional[Callable[[int], None]]) -> Dict[int, List[Tuple[int, bytes, tuple]]]:
    """Group the store's live entries by 0.0.7 bucket: ``{bucket: [(our bucket, digest,
    0.0.7 key)]}``, one per 0.0.7 key: the one created last. Only keys are read here; results
    are read bucket by bucket when written."""
    chosen: Dict[tuple, Tuple[Tuple[float, int, int, bytes], int]] = {}
    for our_bucket, digest, record in store.scan(with_values=False):
        if progress:
            progress(1)
        if record.serializer.startswith("cloudpickle"):
            skipped["result needs cloudpickle"] += 1
            continue
        if not record.key_blob:
            skipped["key not recorded"] += 1
            continue
        try:
            key = pickle.loads(record.key_blob)
        except Exception:
            skipped["key cannot be loaded here"] += 1
            continue
        try:
            legacy_key, _ = to_legacy_key(key)
            check_exportable(legacy_key)
            bucket = buckets.bucket_of_key(legacy_key, hashsize, hash_method)
        except NotRepresentable as err:
            skipped[err.reason] += 1
            continue
        except Exception:  # pickle or JSON cannot hash it: 0.0.7 would have raised too
            skipped[f"key has no {hash_method} hash"] += 1
            continue
        other = chosen.get(legacy_key)
        if other is not None:
            # Another version= or code version of the call, groupby values 1 and '1' (one
            # folder), a Namespace and its JSON text: 0.0.7 cannot tell them apart, so only
            # the result created last is exported.
            skipped[NEWER_WITH_SAME_KEY] += 1
        rank = (record.created, record.sequence, our_bucket, digest)  # see the docstring
        if other is None or rank > other[0]:
            chosen[legacy_key] = (rank, bucket)
    plan: Dict[int, List[Tuple[int, bytes, tuple]]] = {}
    for legacy_key, ((_, _, our_bucket, digest), bucket) in chosen.items():
        plan.setdefault(bucket, []).append((our_bucket, digest, legacy_key))
    return plan


class _NotPortable(Exception):
    pass


class _PortabilityCheck(pickle.Unpickler):
    """Loads a result the way a 0.0.7 reader will, refusing classes of a script's
    ``__main__`` (the reader's ``__main__`` is another script)."""

    def find_class(self, module, name):
        if module in ("__main__", "__mp_main__"):
            raise _NotPortable("result uses a class or function of a script's __main__")
        return super().find_class(module, name)


def _unloadable(blob) -> Optional[str]:
    """Why 0.0.7 could not load this result, or None.

    One result that cannot be unpickled makes 0.0.7 discard its whole bucket file, with the
    entries already in it, so nothing is exported that does not load here (run the export
    where the results' modules are importable: the project's environment and folder).
    """
    try:
        _PortabilityCheck(io.BytesIO(bytes(blob))).load()
    except _NotPortable as err:
        return str(err)
    except Exception as err:
        return f"result cannot be loaded here ({type(err).__name__})"
    return None


def _merge_bucket(store: CallStore, dest_leaf: str, bucket: int,
                  entries: List[Tuple[int, bytes, tuple]], report: ExportReport,
                  skipped: Counter, sharing) -> None:
    values = {}
    for our_bucket, digest, legacy_key in entries:
        record = store.latest(our_bucket, digest)  # the newest, even if recomputed meanwhile
        if record is None:
            continue
        if not record.serializer.startswith("pickle"):
            skipped["result needs cloudpickle"] += 1
            continue
        reason = _unloadable(record.value_blob)
        if reason is not None:
            skipped[reason] += 1
            continue
        values[legacy_key] = buckets.StoredValue(record.value_blob)
    if not values:
        return
    path = buckets.bucket_path(dest_leaf, bucket)
    try:
        with buckets.bucket_lock(dest_leaf, bucket):
            content = {}
            if os.path.exists(path):
                try:
                    content = buckets.load_bucket(buckets.read_bucket_bytes(path, sharing),
                                                  path)
                except buckets.UnreadableBucket as err:
                    report.failed_files.append(f"{err} Left unchanged; its {len(values)} "
                                               "entries were not exported.")
                    return
            report.replaced += sum(1 for key in values if key in content)
            content.update(values)
            buckets.write_bucket(path, content)
    except Timeout:
        report.failed_files.append(
            f"{path}: its lock was held by another process for {buckets.LOCK_TIMEOUT_SECONDS:.0f}"
            f" s; {len(values)} entries were not exported. Run the export again.")
        return
    report.exported += len(values)
    report.bucket_files += 1


def export_tree(source: str, destination: str, *, hashsize: Optional[int] = None,
                hash_method: Optional[str] = None, default_hashsize: int = 500,
                progress: Optional[Callable[[int], None]] = None,
                sharing=None, storage: Optional[StorageTier] = None) -> ExportReport:
    """Export every store under ``source`` into 0.0.7 bucket files under ``destination``.

    ``hashsize`` and ``hash_method`` must match the 0.0.7 reader's settings; by default each
    store's own (recorded by the decorator), else ``default_hashsize`` and ``'pickle'``.
    ``sharing``: whose bucket files already in ``destination`` may be loaded to merge into
    them (default: the configured ``shared`` level); a destination folder others could have
    written raises ``UntrustedFolderError`` before its bucket files are touched. ``storage``:
    the tier whose stores are read (default: the local one, :func:`.buckets.local_storage`).
    """
    source, destination = os.path.abspath(source), os.path.abspath(destination)
    if os.path.commonpath([source, destination]) in (source, destination):
        raise ValueError(f"SRC {source} and DEST {destination} overlap; export into a folder "
                         "outside our cache tree (0.0.7's persist path, for example).")
    if hash_method is not None and hash_method not in buckets.HASH_METHODS:
        raise ValueError(f"hash_method must be 'pickle' or 'json', got {hash_method!r}")
    report = ExportReport(source, destination)
    skipped: Counter = Counter()
    storage = buckets.local_storage(storage)
    for leaf in storage.find_stores(source):
        store = storage.open_store(leaf)
        size, method = _leaf_settings(store, hashsize, hash_method, default_hashsize)
        dest_leaf = _legacy_folder(store, leaf, source, destination)
        buckets.check_bucket_folder(dest_leaf, destination, sharing)
        plan = _plan(store, size, method, skipped, progress)
        exported, files = report.exported, report.bucket_files
        for bucket in sorted(plan):
            _merge_bucket(store, dest_leaf, bucket, plan[bucket], report, skipped, sharing)
        report.stores += 1
        log.info("export to 0.0.7: %d entries of %s into %d bucket file(s) under %s "
                 "(hashsize %d, hash_method %s)", report.exported - exported, leaf,
                 report.bucket_files - files, dest_leaf, size, method)
    report.skipped = dict(skipped)
    log.info("export to 0.0.7 of %s into %s done: %d entries from %d store(s) into %d bucket "
             "file(s); %d skipped, %d bucket file(s) failed", source, destination,
             report.exported, report.stores, report.bucket_files, report.skipped_total,
             len(report.failed_files))
    return report
