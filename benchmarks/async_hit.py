"""Hit cost of an ``async def`` cached function next to the same function cached plain, in one
process and one run (issue 14's closing figure).

    python benchmarks/async_hit.py --entries 1000 --hits 20000 --rounds 3

Both functions return a small dict and are filled with the same ``--entries`` calls; each
round then times ``--hits`` hits of each one by one (the async one awaited inside one running
event loop, as an ``asyncio`` pipeline calls it) and prints the medians in microseconds, also
for the general path (a call with ``cache_switch=``). Only this project is needed.
"""

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--hits", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="ptd-async-hit-")
    os.environ["PERSIST_TO_DISK_HOME"] = os.path.join(scratch, "home")
    import persist_to_disk as ptd
    ptd.config.set_project_path(scratch)

    @ptd.persistf()
    def plain(x):
        return {"x": x, "s": "x" * 100}

    @ptd.persistf()
    async def coro(x):
        return {"x": x, "s": "x" * 100}

    entries, hits = args.entries, args.hits
    for i in range(entries):
        plain(i)

    async def fill():
        for i in range(entries):
            await coro(i)
    asyncio.run(fill())
    clock = time.perf_counter_ns

    def sync_hits(**keywords):
        times = []
        for i in range(hits):
            started = clock()
            plain(i % entries, **keywords)
            times.append(clock() - started)
        return statistics.median(times) / 1000

    async def async_hits(**keywords):
        times = []
        for i in range(hits):
            started = clock()
            await coro(i % entries, **keywords)
            times.append(clock() - started)
        return statistics.median(times) / 1000

    print(f"python {sys.version.split()[0]}, {entries} entries, median of {hits} hits each")
    try:
        measure(ptd, sync_hits, async_hits, args.rounds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure(ptd, sync_hits, async_hits, rounds: int) -> None:
    for round_ in range(rounds):
        sync, asynchronous = sync_hits(), asyncio.run(async_hits())
        sync_general = sync_hits(cache_switch=ptd.CACHE)
        async_general = asyncio.run(async_hits(cache_switch=ptd.CACHE))
        print(f"round {round_}: sync hit {sync:.2f} µs, async hit {asynchronous:.2f} µs "
              f"({asynchronous / sync:.2f}x); general path: sync {sync_general:.2f} µs, "
              f"async {async_general:.2f} µs")


if __name__ == "__main__":
    main()
