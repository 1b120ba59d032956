"""``ptd clear FUNCTION-OR-LEAF``: delete a function's or a leaf's stored results.

Each store is emptied in one transaction (``clear`` of the store) and then compacted, so the files
really shrink, and the folders stay: jobs using the cache meanwhile never find a folder gone
from under them, they just miss and recompute.
"""

import argparse
import sys

from ..engine import EngineError, LocalStorage
from . import output, targets
from .exit_codes import DECLINED, FAILURE, OK
from .units import format_bytes

EXAMPLES = """\
examples:
  ptd clear train_a_model                  asks, then deletes every result of the function
  ptd clear pipeline/train/train_a_model/MNIST --yes
                                           one groupby leaf, without asking
  ptd clear ~/.persist_to_disk/cache/myproject-1/pipeline/train/train_a_model
"""


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "clear", help="delete a function's or leaf's cached results (asks first)",
        description=output.paragraph(
            "Delete every stored result of a function (all its groupby leaves) or of "
            "one leaf. Asks before deleting unless --yes. Each store is emptied in "
            "one transaction and then compacted, so the space is given back; the "
            "folders stay, and jobs using the cache meanwhile simply recompute."),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", metavar="FUNCTION-OR-LEAF",
                        help="a folder path, or a function or leaf name found under --root")
    parser.add_argument("--root", metavar="PATH",
                        help="where to look for a name (default: the configured persist path)")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask")
    parser.set_defaults(run=run)


def _confirmed(question: str) -> bool:
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()  # '' at end of input: no
    if not _is_terminal(sys.stdin):
        print(answer.strip(), file=sys.stderr)  # what a terminal would have echoed
    return answer.strip().lower() in ("y", "yes")


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def run(args, storage: LocalStorage) -> int:
    leaves = targets.resolve(args.target, args.root or targets.default_root(), storage)
    folders = sorted({leaf.function_folder for leaf in leaves})
    label = targets.display(folders[0]) if len(folders) == 1 else args.target
    entries, unreadable = 0, {}
    for leaf in leaves:
        try:
            entries += storage.open_store(leaf.path).stats().entries
        except (EngineError, OSError) as err:  # damaged: cleared below if it can be
            unreadable[leaf.path] = f"{type(err).__name__}: {err}"
    size = sum(targets.usage(leaf.path, storage)[0] for leaf in leaves)
    if not args.yes:
        shown = [targets.display(leaf.path)
                 + (" (cannot be read: its results are not counted)"
                    if leaf.path in unreadable else "")
                 for leaf in leaves]
        under = f" under {targets.default_root()}" if shown[0] != leaves[0].path else ""
        print(f"Stores{under}:\n  " + "\n  ".join(shown), file=sys.stderr)
        if not _confirmed(f"Delete {entries} stored result(s) of {label} ({len(leaves)} "
                          f"store(s), {format_bytes(size)} on disk)?"):
            print("Nothing was deleted.", file=sys.stderr)
            return DECLINED
    deleted, failures = 0, 0
    before = after = 0
    for leaf in leaves:
        try:
            deleted += storage.open_store(leaf.path).clear()
            report = storage.compact(leaf.path)
            before += report.bytes_before
            after += report.bytes_after
        except (EngineError, OSError) as err:
            output.warn(f"ptd clear: {leaf.path}: {type(err).__name__}: {err}")
            failures += 1
    print(f"Deleted {deleted} stored result(s) of {label}; data files {format_bytes(before)} "
          f"-> {format_bytes(after)}.")
    return FAILURE if failures else OK
