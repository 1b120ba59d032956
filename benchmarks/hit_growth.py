"""Hit cost of a persisted function as its store grows: 10 to 1,000,000 entries.

    python benchmarks/hit_growth.py --sizes 10,1000,10000,100000,1000000

For each size, a fresh cache is filled with exactly the records the decorator writes (same
key, digest, serializer), appended through the engine so that a million entries take seconds
rather than minutes of compute-and-lock. Then ``--samples`` calls, at random among the stored
ones, are timed through the decorator; the median of ``--repeat`` passes is reported in µs per
hit. A hit reads one record, so the figure should not grow with the size.
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time


def fill_and_measure(size: int, samples: int, repeat: int) -> float:
    with tempfile.TemporaryDirectory() as home:
        os.environ["PERSIST_TO_DISK_HOME"] = home
        import persist_to_disk as ptd
        from persist_to_disk.engine import POOL, Record, RecordKind
        from persist_to_disk.serialization import PYTHON_VERSION, dumps, dumps_key
        ptd.config.reload()

        @ptd.persistf(durability="fast")
        def small(i):
            return {"i": i, "s": "x" * 100}

        persisted = small.__persisted__
        for i in range(size):
            store, bucket, digest, key = persisted.locate((i,), {})
            blob, serializer = dumps({"i": i, "s": "x" * 100}, "result")
            store.append(bucket, digest, Record(RecordKind.VALUE, time.time(), 0.0, serializer,
                                                PYTHON_VERSION, dumps_key(key), blob))
        assert small.cache_info()["entries"] == size
        chosen = [random.randrange(size) for _ in range(samples)]
        assert all(small(i) == {"i": i, "s": "x" * 100} for i in chosen[:100])
        runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            for i in chosen:
                small(i, cache_switch=ptd.READONLY)  # READONLY: a miss would raise, not compute
            runs.append((time.perf_counter() - started) / samples * 1e6)
        POOL.close_all()
        return statistics.median(runs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000,100000,1000000")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"python {sys.version.split()[0]}, {args.samples} random hits, median of {args.repeat}")
    print(f"{'entries':>10}{'hit µs/call':>14}")
    first = None
    for size in sizes:
        hit = fill_and_measure(size, args.samples, args.repeat)
        first = first or hit
        print(f"{size:>10}{hit:>14.2f}   ({hit / first:.2f}x the first size)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
