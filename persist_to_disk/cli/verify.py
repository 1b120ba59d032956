"""``ptd verify [PATH]``: can every store and record be read, and is each intact? Exit 1 if not.

The engine checks each store's page structure without LMDB (LMDB itself may stop the process on
a damaged page), then reads every record of every store and checks its checksum against the
call it is stored under, as every hit does (``engine.verification``): a flipped bit, a zeroed
page, garbage, or a record under another call's key is reported. ``--deep`` also loads every
stored result and key, as a hit would, which runs their unpickling code and needs their classes
importable: run it from the project's environment.
"""

import argparse
import os
import pickle
from typing import List

from ..engine import LocalStorage
from ..engine.interface import StorageTier
from ..engine.settings import install
from ..engine.verification import StoreVerification, verify_store
from ..serialization import IncompatibleRecord, check_loadable, loads
from . import output, targets
from .exit_codes import FAILURE, OK
from .progress import progress_bar

EXAMPLES = """\
examples:
  ptd verify                          every store under the configured persist path
  ptd verify path/to/function_folder --deep
  ptd verify --json > report.json || echo "damage found"
"""
MAX_PRINTED = 10


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "verify", help="check that every store and record can be read and is intact "
             "(exit 1 on damage)",
        description=output.paragraph(
            "Open every store under PATH, check its page structure, and read every "
            "record (superseded versions and tombstones included) and its checksum; "
            "report what cannot be read or was altered. Exit status 1 if anything is "
            "damaged. Safe while jobs use the cache."),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", metavar="PATH",
                        help="a persist path, project, function or leaf folder (default: the "
                             "configured persist path)")
    parser.add_argument("--deep", action="store_true",
                        help="also load every stored result and key (runs their unpickling: "
                             "use the project's environment)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one per store")
    parser.set_defaults(run=run)


def deep_check(report: StoreVerification, advance, storage: StorageTier) -> None:
    """Load every live result and key as a hit would; a failure is reported as damage."""
    try:
        for bucket, digest, record in storage.open_store(report.path).scan(with_values=True):
            advance(1)
            where = f"result bucket {bucket} digest {digest.hex()}"
            try:
                check_loadable(record.serializer, record.python_version)
            except IncompatibleRecord:
                continue  # e.g. another Python's cloudpickle payload: a hit recomputes it
            try:
                loads(record.value_blob, record.serializer, record.python_version)
            except IncompatibleRecord as err:
                report.problem(f"{where}: {err}")
            if record.key_blob:
                try:
                    pickle.loads(record.key_blob)
                except Exception as err:
                    report.problem(f"{where}: its key cannot be loaded ({type(err).__name__}: "
                                   f"{err})")
    except Exception as err:
        report.problem(f"reading results failed: {type(err).__name__}: {err}")


def run(args, storage: LocalStorage) -> int:
    root = targets.existing_folder(args.path) if args.path else targets.default_root()
    leaves = targets.stores_under(root, storage) if os.path.isdir(root) else []
    # verify_store reads through the process's environment pool and trust check, which
    # follow the installed settings: those of this tier (what folders it may load).
    install(storage.settings)
    reports: List[StoreVerification] = []
    with progress_bar("verifying", unit="records") as advance:
        for leaf in leaves:
            report = verify_store(leaf, progress=advance)
            if args.deep and not report.damaged and not report.vanished:
                deep_check(report, advance, storage)
            reports.append(report)
    damaged = [r for r in reports if r.damaged]
    if args.json:
        output.print_json([{"path": r.path, "ok": not r.damaged, "records": r.records,
                            "tombstones": r.tombstones, "newer_format": r.newer_format,
                            "without_checksum": r.without_checksum,
                            "problem_count": r.problem_count, "problems": r.problems,
                            "vanished": r.vanished} for r in reports])
    else:
        for report in reports:
            if report.damaged:
                print(f"DAMAGED  {report.path}: {report.problem_count} problem(s)")
                for problem in report.problems[:MAX_PRINTED]:
                    print(f"         {problem}")
                if report.problem_count > MAX_PRINTED:
                    print(f"         ... and {report.problem_count - MAX_PRINTED} more "
                          "(--json lists up to 100)")
            elif report.newer_format:
                print(f"NEWER    {report.path}: {report.newer_format} record(s) written by a "
                      "newer persist_to_disk; upgrade to read them")
            if report.without_checksum and not report.damaged:
                print(f"OLD      {report.path}: {report.without_checksum} record(s) written "
                      "by a version without checksums: read, but damage to their values "
                      "cannot be detected")
        records = sum(r.records for r in reports)
        print(f"{len(reports)} store(s), {records} records read"
              + (" and results loaded" if args.deep else "") + ": "
              + (f"{len(damaged)} damaged." if damaged else "no damage found."))
        if damaged:
            print("A damaged store is never deleted by ptd: move its folder aside to start that "
                  "cache afresh (the decorator recreates it), or restore it from a backup.")
    return FAILURE if damaged else OK
