"""``ptd ls [PATH]``: the projects, functions and groupby leaves of a cache, with their entry
counts, disk sizes and last writes."""

import argparse
import os

from ..engine.interface import StorageTier
from . import output, remote, targets
from .exit_codes import FAILURE, OK
from .progress import progress_bar
from .units import format_bytes, format_time, iso_time

EXAMPLES = """\
examples:
  ptd ls                              every cache under the configured persist path
  ptd ls ~/.persist_to_disk/cache/myproject-1
  ptd ls --json | jq '.[] | select(.entries > 1000) | .path'
  ptd ls --remote                     what the shared cache holds for this project, by leaf
"""


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "ls", help="list projects, functions and groupby leaves with sizes",
        description=output.paragraph(
            "List the cache stores under PATH: one row per function, or per groupby "
            "leaf, with its entries (stored results), the bytes of all its files, and"
            " when it was last written."),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", metavar="PATH",
                        help="a persist path, project, function or leaf folder (default: the "
                             "configured persist path)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of objects instead of a table")
    parser.add_argument("--remote", action="store_true",
                        help="list the shared cache (the setting `remote`) of the project in "
                             "the working folder instead: objects, bytes and newest upload of "
                             "each leaf (PATH: a leaf path prefix as listed)")
    parser.set_defaults(run=run)


def _row(leaf: targets.Leaf, storage: StorageTier) -> dict:
    disk_bytes, last_write = targets.usage(leaf.path, storage)
    row = {"project": leaf.project, "function": leaf.function_name,
           "function_folder": leaf.function_label, "leaf": leaf.leaf, "path": leaf.path,
           "entries": None, "disk_bytes": disk_bytes, "last_write": iso_time(last_write),
           "last_write_epoch": last_write, "error": None}
    try:
        row["entries"] = storage.open_store(leaf.path).stats().entries
    except Exception as err:  # a damaged store is listed, not fatal; `ptd verify` explains
        row["error"] = f"{type(err).__name__}: {err}"
    return row


def run(args, storage: StorageTier) -> int:
    if args.remote:
        return remote.list_remote(args, storage)
    root = targets.existing_folder(args.path) if args.path else targets.default_root()
    leaves = ([targets.describe(leaf, root, storage)
               for leaf in targets.stores_under(root, storage)]
              if os.path.isdir(root) else [])  # the default persist path: nothing cached yet
    rows = []
    with progress_bar("reading", unit="stores", total=len(leaves)) as advance:
        for leaf in leaves:
            rows.append(_row(leaf, storage))
            advance(1)
    if args.json:
        output.print_json(rows)
    elif not rows:
        print(f"No cache stores under {root}.")
    else:
        print(f"Cache stores under {root}:")
        print(output.table(
            ["PROJECT", "FUNCTION", "LEAF", "ENTRIES", "SIZE", "LAST WRITE"],
            [[r["project"] or "-", r["function_folder"], r["leaf"] or "-",
              "?" if r["entries"] is None else r["entries"], format_bytes(r["disk_bytes"]),
              format_time(r["last_write_epoch"])] for r in rows],
            right=("ENTRIES", "SIZE")))
        total = sum(r["entries"] or 0 for r in rows)
        print(f"{len(rows)} store(s), {total} entries, "
              f"{format_bytes(sum(r['disk_bytes'] for r in rows))} on disk")
    for r in rows:
        if r["error"]:
            output.warn(f"ptd ls: {r['path']} cannot be read ({r['error']}); run `ptd verify "
                        f"{r['path']}`.")
    return FAILURE if any(r["error"] for r in rows) else OK
