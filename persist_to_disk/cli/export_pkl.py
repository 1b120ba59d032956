"""``ptd export-pkl SRC DEST`` (also ``tools/export_pkl``): our cache as persist-to-disk 0.0.7
bucket files (see ``persist_to_disk.legacy``)."""

import argparse
import dataclasses
import os

from .. import config
from ..engine.interface import StorageTier
from ..legacy import export_tree
from ..settings import parse_hashsize
from . import output, targets
from .exit_codes import FAILURE, OK
from .progress import progress_bar

EXAMPLES = """\
examples:
  ptd export-pkl ~/.persist_to_disk/cache/myproject-1 ~/.cache/persist_to_disk/cache/myproject-1
  ptd export-pkl path/to/our/function_folder path/to/0.0.7/function_folder --hashsize 100
  ptd export-pkl SRC DEST --hash-method json     for functions decorated with hash_method='json'

SRC is any folder of our cache tree; each store below it goes to the same relative path below
DEST. The trees have the same shape (<project>-<id>/<module path>/<function>/<groupby values>),
but the <id>s come from each library's own project_to_pids.txt and may differ: export project
by project. Run it from the project's environment (its classes are only needed for keys and for
merging into bucket files that exist). 0.0.7 processes may use DEST meanwhile: each bucket file
is merged under their lock files (call and func granularity; stop jobs configured with
lock_granularity='global'). Results needing cloudpickle, and keys 0.0.7 cannot hold
(unhashable values, *args), are skipped and counted. 0.0.7 has no versions: where several of
our results have one 0.0.7 key (other version= values or code versions of a call, groupby
values 1 and '1'), the result created last is exported and the others are skipped and
counted. Bucket files already in DEST are loaded to
merge into them, so a DEST folder or file owned by another user or writable by others is
refused (exit status 1) unless the setting shared allows it, as for the cache.
"""


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "export-pkl", help="write persist-to-disk 0.0.7 bucket files (.pkl) from our cache",
        description=output.paragraph(
            "Export the stores under SRC as persist-to-disk 0.0.7 bucket files under "
            "DEST, merged into the bucket files already there (their other entries "
            "are kept). Of several results with one 0.0.7 key (versions or code "
            "versions of a call), the one created last is exported."),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)


def _hashsize(text: str) -> int:
    try:
        return parse_hashsize(text, "--hashsize")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="a folder of our cache tree")
    parser.add_argument("destination", metavar="DEST", help="the matching 0.0.7 folder")
    parser.add_argument("--hashsize", type=_hashsize, metavar="N",
                        help="the 0.0.7 reader's hashsize (default: each function's own, as "
                             "recorded with its store, else the configured hashsize)")
    parser.add_argument("--hash-method", choices=("pickle", "json"),
                        help="the 0.0.7 reader's hash_method (default: each function's own)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args, storage: StorageTier) -> int:
    source = targets.existing_folder(args.source, "SRC")
    if not targets.stores_under(source, storage):
        raise targets.CommandError(f"SRC {source} holds no cache store; `ptd ls` lists them.")
    try:
        with progress_bar("exporting", unit="entries") as advance:
            report = export_tree(source, os.path.abspath(args.destination),
                                 hashsize=args.hashsize, hash_method=args.hash_method,
                                 default_hashsize=config.get_hashsize(), progress=advance,
                                 sharing=config.get_shared(), storage=storage)
    except ValueError as err:
        raise targets.CommandError(str(err)) from None
    if args.json:
        output.print_json({**dataclasses.asdict(report), "skipped_total": report.skipped_total})
    else:
        print(f"Exported {report.exported} entries from {report.stores} store(s) into "
              f"{report.bucket_files} bucket file(s) under {report.destination}"
              + (f" ({report.replaced} replaced an entry with the same key)."
                 if report.replaced else "."))
        if report.skipped:
            print(f"Skipped {report.skipped_total} entries 0.0.7 cannot hold: "
                  f"{output.counted(report.skipped)}.")
    for failure in report.failed_files:
        output.warn(f"ptd export-pkl: {failure}")
    return FAILURE if report.failed_files else OK
