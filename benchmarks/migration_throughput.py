"""Throughput of ``ptd export-pkl`` and ``ptd import-pkl`` (entries per second).

    python benchmarks/migration_throughput.py --entries 100000 --repeat 3

Each repetition, in a fresh temporary folder: writes ``--entries`` records into one of our
stores, as the decorator stores calls ``f(i, name)`` returning a small dict (written through the
engine with ``fast`` durability, which is not what is measured); then times

* export: that store into 0.0.7 bucket files (``hashsize`` buckets, ``hash_method='pickle'``),
  the bucket files not existing yet;
* import: those bucket files into a fresh store, with the default ``standard`` durability
  (a new store: no fsync per entry, one at the end; see persist_to_disk/legacy/importing.py).

Prints the median and range over the repetitions.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from persist_to_disk.engine import POOL, Durability, Record, RecordKind, Store  # noqa: E402
from persist_to_disk.keying import bucket_of, call_digest  # noqa: E402
from persist_to_disk.legacy import export_tree, import_tree  # noqa: E402
from persist_to_disk.serialization import PYTHON_VERSION, dumps, dumps_key  # noqa: E402


def populate(leaf: str, entries: int, hashsize: int) -> None:
    store = Store(leaf, Durability.FAST)
    meta = {"function": "bench.f", "hashsize": hashsize, "hash_method": "pickle",
            "groupby": [], "leaf": "."}
    for i in range(entries):
        key = (("i", i), ("name", "experiment"))
        digest = call_digest((), key)
        blob, serializer = dumps({"i": i, "loss": i / 7, "tag": "x" * 40}, "bench")
        store.append(bucket_of(digest, hashsize), digest,
                     Record(RecordKind.VALUE, time.time(), 0.01, serializer, PYTHON_VERSION,
                            dumps_key(key), blob), meta=meta)


def once(entries: int, hashsize: int) -> tuple:
    with tempfile.TemporaryDirectory() as folder:
        ours = os.path.join(folder, "ours", "project-1", "bench", "f")
        legacy = os.path.join(folder, "legacy", "project-1", "bench", "f")
        imported = os.path.join(folder, "imported", "project-1", "bench", "f")
        populate(ours, entries, hashsize)
        POOL.close_all()

        started = time.perf_counter()
        exported = export_tree(ours, legacy)
        export_seconds = time.perf_counter() - started
        assert exported.exported == entries and not exported.failed_files, exported

        started = time.perf_counter()
        report = import_tree(legacy, imported, hashsize=hashsize)
        import_seconds = time.perf_counter() - started
        assert report.imported == entries and not report.failed_files, report
        assert Store(imported).stats().entries == entries
        POOL.close_all()
    return entries / export_seconds, entries / import_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--hashsize", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = [once(args.entries, args.hashsize) for _ in range(args.repeat)]
    for name, values in (("export", [r[0] for r in runs]), ("import", [r[1] for r in runs])):
        print(f"{name}: {statistics.median(values):,.0f} entries/s (median of {len(values)}; "
              f"range {min(values):,.0f}-{max(values):,.0f}) at {args.entries:,} entries, "
              f"hashsize {args.hashsize}")


if __name__ == "__main__":
    main()
