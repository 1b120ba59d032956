"""Cache a real, slow function with one decorator, then watch later calls skip the work.

Run it twice: the second run (a new process) computes nothing.

    python examples/quickstart.py
"""

import csv
import json
import multiprocessing
import time

import persist_to_disk as ptd


@ptd.persistf()
def count_primes(limit: int) -> int:
    """Count the primes below ``limit`` with a plain sieve: slow enough to be worth caching."""
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"
    for n in range(2, int(limit ** 0.5) + 1):
        if sieve[n]:
            sieve[n * n::n] = bytearray(len(range(n * n, limit, n)))
    return sum(sieve)


@ptd.persistf(groupby=["corpus"], skip_kwargs=["verbose"])
def word_lengths(corpus: str, min_length: int = 1, verbose: bool = False) -> dict:
    """A feature-extraction step: a histogram of word lengths, one cache folder per corpus."""
    if verbose:
        print(f"  computing word_lengths({corpus!r}, min_length={min_length})")
    text = {"json": json.__doc__, "csv": csv.__doc__}[corpus]
    histogram: dict = {}
    for word in text.split():
        if len(word) >= min_length:
            histogram[len(word)] = histogram.get(len(word), 0) + 1
    return histogram


def timed(label: str, func, *args, **kwargs):
    started = time.perf_counter()
    result = func(*args, **kwargs)
    print(f"{label:<38} -> {result!s:<12.12} {1000 * (time.perf_counter() - started):9.2f} ms")
    return result


if __name__ == "__main__":
    print(f"cache folder: {count_primes.cache_folder()}")
    timed("count_primes(20_000_000)", count_primes, 20_000_000)
    timed("count_primes(20_000_000) again", count_primes, 20_000_000)

    limits = [2_000_000 + 500_000 * i for i in range(8)]
    with multiprocessing.Pool(2) as pool:  # the cache works across processes as it is
        started = time.perf_counter()
        pool.map(count_primes, limits)
        print(f"{'pool.map over 8 limits':<38} -> {'done':<12} "
              f"{1000 * (time.perf_counter() - started):9.2f} ms")

    timed("word_lengths('json')", word_lengths, "json", min_length=2, verbose=True)
    timed("word_lengths('json'), verbose ignored", word_lengths, "json", 2, verbose=False)
    print(f"entries stored for count_primes: {count_primes.cache_info()['entries']}")
    print("Run this script again: every call above is now answered from the cache.")
