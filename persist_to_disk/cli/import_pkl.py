"""``ptd import-pkl SRC DEST``: a persist-to-disk 0.0.7 cache tree into our stores, so that
our decorator hits those entries (see ``persist_to_disk.legacy``)."""

import argparse
import dataclasses
import os

from .. import config
from ..engine.interface import StorageTier
from ..legacy import import_tree
from . import output, targets
from .exit_codes import FAILURE, OK
from .export_pkl import _hashsize
from .progress import progress_bar

EXAMPLES = """\
examples:
  ptd import-pkl ~/.cache/persist_to_disk/cache/myproject-3 ~/.persist_to_disk/cache/myproject-1
  ptd import-pkl OLD/pipeline/train/train_a_model NEW/pipeline/train/train_a_model --hashsize 100

Each folder of bucket files under SRC goes to the same relative path under DEST (a project
folder to a project folder, a function folder to a function folder). Run it from the project's
environment: the results are unpickled (their classes must import) and stored again.
--hashsize must be the decorator's (hashsize= option, else the configured one, the default).
Imported entries serve functions without captured variables (closures are keyed by what they
capture, which 0.0.7 did not record). With groupby, or an argparse.Namespace argument, an
imported entry is found on the first call that misses and stored again under that call's key;
until then is_cached() and READONLY do not see it.
Bucket files that cannot be read are reported and skipped (exit status 1); entries DEST already
holds are kept as they are, so importing again is harmless.
Bucket files are pickles, and loading one runs code: SRC is refused (nothing imported, exit
status 1) if a folder in it or a bucket file is owned by another user or writable by others,
unless the setting shared allows it (as for the cache: shared = group or all).
"""


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "import-pkl", help="import a persist-to-disk 0.0.7 cache (.pkl bucket files)",
        description=output.paragraph(
            "Import the persist-to-disk 0.0.7 bucket files under SRC into stores "
            "under DEST, so that the decorator hits those entries."),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="SRC", help="a folder of a 0.0.7 cache tree")
    parser.add_argument("destination", metavar="DEST", help="the matching folder of our tree")
    parser.add_argument("--hashsize", type=_hashsize, metavar="N",
                        help="buckets of the stores written: the decorator's hashsize (default: "
                             "an existing store's own, else the configured hashsize)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def run(args, storage: StorageTier) -> int:
    source = targets.existing_folder(args.source, "SRC")
    try:
        with progress_bar("importing", unit="entries") as advance:
            report = import_tree(source, os.path.abspath(args.destination),
                                 hashsize=args.hashsize, default_hashsize=config.get_hashsize(),
                                 durability=config.get_durability(), progress=advance,
                                 sharing=config.get_shared(), storage=storage)
    except ValueError as err:
        raise targets.CommandError(str(err)) from None
    if not report.stores and not report.failed_files:
        raise targets.CommandError(f"SRC {source} holds no persist-to-disk 0.0.7 bucket files "
                                   "(<number>.pkl).")
    if args.json:
        output.print_json({**dataclasses.asdict(report), "skipped_total": report.skipped_total})
    else:
        print(f"Imported {report.imported} entries from {report.bucket_files} bucket file(s) "
              f"into {report.stores} store(s) under {report.destination}"
              + (f"; {report.already_stored} were already stored and kept as they were."
                 if report.already_stored else "."))
        if report.skipped:
            print(f"Skipped {report.skipped_total} entries: {output.counted(report.skipped)}.")
        if report.failed_files:
            print(f"{len(report.failed_files)} bucket file(s) could not be read and were "
                  "skipped (listed on stderr).")
    for failure in report.failed_files:
        output.warn(f"ptd import-pkl: {failure}")
    return FAILURE if report.failed_files else OK
