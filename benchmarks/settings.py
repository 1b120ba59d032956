"""Sizes, counts and repetitions of a run: the full profile (issue 4's figures) and ``--quick``,
a smoke test that finishes in under a minute on two shared cores."""

from dataclasses import dataclass, field, replace
from typing import List


@dataclass
class Settings:
    #: repetitions: worker processes (small), or timed passes within a worker (the others)
    repeat: int = 5
    #: libraries run side by side (more than 1 disturbs every figure: for --quick only)
    jobs: int = 1
    #: per library and step: a fill or a measurement estimated to take longer is skipped
    budget_seconds: float = 300.0
    small_entries: int = 10_000
    #: fresh processes timing the first hit (and import + decorate) per repetition
    first_hit_processes: int = 3
    #: misses of the syncing setting timed one by one, each paired with a fsync-floor iteration
    paired_misses: int = 200
    #: iterations of each fsync-floor measurement (4 KiB write + fdatasync; see floor.py)
    fsync_iterations: int = 200
    growth_sizes: List[int] = field(default_factory=lambda: [1_000, 10_000, 100_000, 1_000_000])
    growth_hit_samples: int = 10_000
    growth_miss_samples: int = 1_000
    large_megabytes: List[int] = field(default_factory=lambda: [1, 100])
    large_calls: int = 10  # calls per pass for values up to 10 MB; one above
    hashing_array_megabytes: int = 10
    hashing_dict_items: int = 1_000
    hashing_calls: int = 20
    concurrency_workers: List[int] = field(default_factory=lambda: [2, 4])
    concurrency_distinct_calls: int = 2_000
    #: CPU milliseconds each distinct call computes (issue 15: a 1 ms function)
    concurrency_distinct_compute_ms: float = 1.0
    #: pool sizes that also run the distinct calls with a sleep of that time instead of CPU
    #: work: the cache's own serialization without the machine's free cores
    concurrency_sleep_workers: List[int] = field(default_factory=lambda: [1, 2])
    concurrency_same_calls: int = 50
    concurrency_compute_ms: float = 20.0
    disk_entries: int = 100_000
    quick: bool = False


FULL = Settings()

QUICK = Settings(
    repeat=1,
    jobs=2,
    budget_seconds=5.0,
    small_entries=200,
    first_hit_processes=1,
    paired_misses=20,
    fsync_iterations=20,
    growth_sizes=[100, 1_000],
    growth_hit_samples=200,
    growth_miss_samples=30,
    large_megabytes=[1],
    large_calls=2,
    hashing_array_megabytes=2,
    hashing_dict_items=1_000,
    hashing_calls=2,
    concurrency_workers=[2],
    concurrency_sleep_workers=[],
    concurrency_distinct_calls=60,
    concurrency_same_calls=5,
    concurrency_compute_ms=5.0,
    disk_entries=200,
    quick=True,
)


def profile(quick: bool, **overrides) -> Settings:
    """The profile with the command line's overrides (``None`` keeps the profile's value)."""
    return replace(QUICK if quick else FULL,
                   **{k: v for k, v in overrides.items() if v is not None})
