"""``ptd compact [PATH ...]`` (also ``tools/compact``): rebuild stores so their files shrink.

Each store is rebuilt into a new generation holding only the newest record of every call that
is kept (the local tier's ``compact``), while jobs go on reading and writing it.
"""

import argparse
import dataclasses
import os
from typing import List

from ..engine import CompactionPolicy, EngineError, LocalStorage
from . import output, targets
from .exit_codes import FAILURE, OK
from .progress import progress_bar
from .units import format_bytes, parse_duration, parse_size

EXAMPLES = """\
examples:
  ptd compact                                  every store under the configured persist path
  ptd compact path/to/function_folder --dry-run
  ptd compact --older-than 30d                 also drop results written over 30 days ago
  ptd compact --max-size 2GiB path/to/leaf     keep at most 2 GiB of results per store,
                                               dropping the oldest first
sizes: 500MB, 2GiB, 1.5G (KB/MB/GB: powers of 1000; KiB/MiB/GiB and K/M/G: 1024)
durations: 45s, 90m, 12h, 30d, 2w, 1d12h
"""


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "compact", help="drop superseded versions, tombstones and expired results; shrink files",
        description=output.paragraph(
            "Rebuild each store under the PATHs without superseded versions "
            "(recomputed calls), tombstones (deleted calls) and, if asked, results "
            "that are too old or do not fit a size budget, so that its files really "
            "shrink. Safe while jobs read and write the cache: nothing they write "
            "meanwhile is lost, and a writer waits at most for the final switch. "
            "Prints the bytes before and after."),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="persist path, project, function or leaf folders (default: the "
                             "configured persist path)")
    parser.add_argument("--older-than", metavar="DURATION", type=parse_duration,
                        help="also drop results written longer ago than this (30d, 12h, ...)")
    parser.add_argument("--max-size", metavar="SIZE", type=parse_size,
                        help="keep at most this many bytes of results per store, dropping the "
                             "oldest first (500MB, 2GiB, ...)")
    parser.add_argument("--dry-run", action="store_true",
                        help="only say what would be dropped and the estimated size after")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one per store")


def _line(report) -> str:
    dropped = [f"{count} {label}" for count, label in (
        (report.superseded, "superseded"), (report.tombstones, "deleted"),
        (report.expired, "expired"), (report.evicted, "over size")) if count]
    verb = "would be" if report.dry_run else ""
    size = (f"{format_bytes(report.bytes_before)} -> "
            f"{'~' if report.dry_run else ''}{format_bytes(report.bytes_after)}")
    return (f"{targets.display(report.path)}: {size}, {report.kept} kept"
            + (f", {verb + ' ' if verb else ''}dropped: {', '.join(dropped)}" if dropped else ""))


def run(args, storage: LocalStorage) -> int:
    paths = args.paths or [targets.default_root()]
    leaves: List[str] = []
    for path in paths:
        if not args.paths and not os.path.isdir(path):
            continue  # the default persist path: nothing cached yet
        leaves.extend(leaf for leaf in targets.stores_under(path, storage)
                      if leaf not in leaves)
    policy = CompactionPolicy(older_than=args.older_than, max_size=args.max_size)
    reports, failures = [], []
    with progress_bar("compacting", unit="records") as advance:
        for leaf in leaves:
            try:
                reports.append(storage.compact(leaf, policy, dry_run=args.dry_run,
                                               progress=advance))
            except (EngineError, OSError) as err:
                failures.append((leaf, f"{type(err).__name__}: {err}"))
    if args.json:
        output.print_json([dataclasses.asdict(r) for r in reports]
                          + [{"path": leaf, "error": error} for leaf, error in failures])
    else:
        if any(targets.display(r.path) != r.path for r in reports):
            print(f"Stores under {targets.default_root()}:")
        for report in reports:
            print(_line(report))
        before = sum(r.bytes_before for r in reports)
        after = sum(r.bytes_after for r in reports)
        print(f"{len(reports)} store(s): {format_bytes(before)} -> "
              f"{'~' if args.dry_run else ''}{format_bytes(after)}"
              + (" (dry run: nothing was changed)" if args.dry_run else ""))
    for leaf, error in failures:
        output.warn(f"ptd compact: {leaf} was not compacted: {error}")
    return FAILURE if failures else OK
