"""Export our stores as 0.0.7 bucket files.

Each store under SRC becomes the folder at the same relative path under DEST (our tree and
0.0.7's have the same shape: ``<project>-<id>/<module path>/<function>/<groupby values>``).
Entries are grouped by 0.0.7 bucket; each bucket file is read, merged and replaced under 0.0.7's
locks, one bucket at a time, so 0.0.7 processes using DEST meanwhile wait milliseconds, not for
the whole export. An entry already in the file under the same key is replaced by ours; every
other entry of the file is kept. A bucket file that cannot be loaded is left untouched and
reported (0.0.7 itself would replace it with an empty one).

Results are not unpickled: each goes into the file as the pickle bytes we stored (see
:class:`~.buckets.StoredValue`), so any result can be exported whatever classes ptd can import.
Skipped, and counted by reason: keys 0.0.7 cannot hold (unhashable values, ``*args``), keys we
did not record, and results stored with cloudpickle (0.0.7 does not depend on cloudpickle, and a
bucket it cannot load is a bucket it empties).
"""

import os
import pickle
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from filelock import Timeout

from ..engine import Store, find_stores
from . import buckets
from .keys import NotRepresentable, check_exportable, to_legacy_key


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


def _leaf_settings(store: Store, hashsize: Optional[int], hash_method: Optional[str],
                   default_hashsize: int) -> Tuple[int, str]:
    """The reader's settings: given ones, else what the decorator recorded with the store."""
    meta = store.read_meta()
    return (hashsize or int(meta.get("hashsize") or default_hashsize),
            hash_method or meta.get("hash_method") or "pickle")


def _plan(store: Store, hashsize: int, hash_method: str, skipped: Counter,
          progress: Optional[Callable[[int], None]]) -> Dict[int, List[Tuple[int, bytes, tuple]]]:
    """Group the store's live entries by 0.0.7 bucket: ``{bucket: [(our bucket, digest,
    0.0.7 key)]}``. Only keys are read here; results are read bucket by bucket when written."""
    plan: Dict[int, List[Tuple[int, bytes, tuple]]] = {}
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
        plan.setdefault(bucket, []).append((our_bucket, digest, legacy_key))
    return plan


def _merge_bucket(store: Store, dest_leaf: str, bucket: int,
                  entries: List[Tuple[int, bytes, tuple]], report: ExportReport) -> None:
    values = {}
    for our_bucket, digest, legacy_key in entries:
        record = store.latest(our_bucket, digest)  # the newest, even if recomputed meanwhile
        if record is not None and not record.serializer.startswith("cloudpickle"):
            values[legacy_key] = buckets.StoredValue(record.value_blob)
    if not values:
        return
    path = buckets.bucket_path(dest_leaf, bucket)
    try:
        with buckets.bucket_lock(dest_leaf, bucket):
            content = {}
            if os.path.exists(path):
                try:
                    content = buckets.load_bucket(buckets.read_bucket_bytes(path), path)
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
                progress: Optional[Callable[[int], None]] = None) -> ExportReport:
    """Export every store under ``source`` into 0.0.7 bucket files under ``destination``.

    ``hashsize`` and ``hash_method`` must match the 0.0.7 reader's settings; by default each
    store's own (recorded by the decorator), else ``default_hashsize`` and ``'pickle'``.
    """
    source, destination = os.path.abspath(source), os.path.abspath(destination)
    if os.path.commonpath([source, destination]) in (source, destination):
        raise ValueError(f"SRC {source} and DEST {destination} overlap; export into a folder "
                         "outside our cache tree (0.0.7's persist path, for example).")
    if hash_method is not None and hash_method not in buckets.HASH_METHODS:
        raise ValueError(f"hash_method must be 'pickle' or 'json', got {hash_method!r}")
    report = ExportReport(source, destination)
    skipped: Counter = Counter()
    for leaf in find_stores(source):
        store = Store(leaf)
        size, method = _leaf_settings(store, hashsize, hash_method, default_hashsize)
        dest_leaf = os.path.normpath(os.path.join(destination, os.path.relpath(leaf, source)))
        plan = _plan(store, size, method, skipped, progress)
        for bucket in sorted(plan):
            _merge_bucket(store, dest_leaf, bucket, plan[bucket], report)
        report.stores += 1
    report.skipped = dict(skipped)
    return report
