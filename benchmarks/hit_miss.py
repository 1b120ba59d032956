"""Hit and miss cost per call of a persisted function at a given number of stored entries.

    python benchmarks/hit_miss.py --entries 10000 --repeat 5

Each repetition uses a fresh cache folder: the miss figure is the time to compute and store
``entries`` distinct calls (small dict result) divided by their number; the hit figure is the
time to call them all again. Medians over the repetitions, in microseconds per call, for the
default ``standard`` durability and for ``fast``. Stored entries before timing the hits equal
``--entries``, so the hit cost is measured at that cache size.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time


def measure(durability: str, entries: int) -> tuple:
    with tempfile.TemporaryDirectory() as home:
        os.environ["PERSIST_TO_DISK_HOME"] = home
        import persist_to_disk as ptd
        ptd.config.reload()

        @ptd.persistf(durability=durability)
        def small(i):
            return {"i": i, "s": "x" * 100}

        started = time.perf_counter()
        for i in range(entries):
            small(i)
        miss = (time.perf_counter() - started) / entries
        started = time.perf_counter()
        for i in range(entries):
            small(i)
        hit = (time.perf_counter() - started) / entries
        assert small.cache_info()["entries"] == entries
        from persist_to_disk.engine import POOL
        POOL.close_all()
        return miss * 1e6, hit * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {args.entries} entries, median of {args.repeat}")
    print(f"{'durability':<12}{'miss µs/call':>14}{'hit µs/call':>14}")
    for durability in ("standard", "fast"):
        runs = [measure(durability, args.entries) for _ in range(args.repeat)]
        miss = statistics.median(r[0] for r in runs)
        hit = statistics.median(r[1] for r in runs)
        print(f"{durability:<12}{miss:>14.1f}{hit:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
