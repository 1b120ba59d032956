"""``ptd stats FUNCTION-OR-LEAF``: what a function's cache holds and what it is worth.

Entries are calls with a stored result; versions count every record (recomputed calls keep their
older versions until ``ptd compact``); tombstones are deleted calls. Each record carries the
seconds its computation took, so the sum over the entries is the time one hit on each of them
saves, and the code version that computed it (its code fingerprint and ``version=``), so the
results are also counted per code version, superseded ones included (``ptd compact
--drop-old-code`` drops those of every code fingerprint but the newest, whatever their
``version=``).
"""

import argparse
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from ..engine.interface import StorageTier
from ..imported import is_imported
from . import output, targets
from .exit_codes import OK
from .progress import progress_bar
from .units import format_bytes, format_seconds, format_time, iso_time

EXAMPLES = """\
examples:
  ptd stats train_a_model                  a function, by name (or module.name)
  ptd stats pipeline/train/train_a_model/MNIST
                                           one groupby leaf (or a prefix of leaves)
  ptd stats ~/.persist_to_disk/cache/myproject-1/pipeline/train/train_a_model --json
"""


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "stats", help="entries, versions, bytes and compute time of one function or leaf",
        description=output.paragraph(
            "Show what the cache of one function (all its groupby leaves) or of one "
            "leaf holds: entries, versions, tombstones, live and on-disk bytes, "
            "oldest and newest entry, the compute time stored (what hits save), and "
            "how many results each code version of the function wrote and when it last "
            "wrote one."),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", metavar="FUNCTION-OR-LEAF",
                        help="a folder path, or a function or leaf name found under --root")
    parser.add_argument("--root", metavar="PATH",
                        help="where to look for a name (default: the configured persist path)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


@dataclass
class LeafStats:
    path: str
    leaf: str
    entries: int
    versions: int
    tombstones: int
    unreadable: int
    live_bytes: int
    file_bytes: int
    disk_bytes: int
    oldest: Optional[float]
    newest: Optional[float]
    compute_seconds: float
    imported: int
    #: ``{code: [results, last written]}`` over every stored result (superseded included).
    code_versions: Dict[str, list] = field(default_factory=dict)


def code_parts(code: str) -> Tuple[str, Optional[str]]:
    """``(fingerprint, version label or None)`` of a record's code (``("", None)`` for
    results of unknown code)."""
    from ..fingerprint import parse_code_tag  # the one place the tag's format is known
    return parse_code_tag(code)


def leaf_stats(leaf: targets.Leaf, storage: StorageTier) -> LeafStats:
    store = storage.open_store(leaf.path)
    counts = store.stats()
    versions = {code: [found.records, found.last_written]
                for code, found in store.code_versions().items()}
    oldest = newest = None
    compute = 0.0
    imported = 0
    for _, _, record in store.scan(with_values=False):
        oldest = record.created if oldest is None else min(oldest, record.created)
        newest = record.created if newest is None else max(newest, record.created)
        compute += record.compute_seconds
        imported += is_imported(record)
    disk_bytes, _ = targets.usage(leaf.path, storage)
    return LeafStats(leaf.path, leaf.leaf, counts.entries, counts.versions, counts.tombstones,
                     counts.unreadable, counts.live_bytes, counts.file_bytes, disk_bytes, oldest,
                     newest, compute, imported, versions)


def code_versions(leaves: List[LeafStats]) -> List[dict]:
    """The code versions of ``leaves`` (summed over them), the most recently written first:
    ``{"code", "fingerprint", "version", "results", "last_written"}`` each."""
    merged: Dict[str, list] = {}
    for stats in leaves:
        for code, (results, last) in stats.code_versions.items():
            total = merged.setdefault(code, [0, last])
            total[0] += results
            total[1] = max(total[1], last)
    rows = []
    for code, (results, last) in sorted(merged.items(), key=lambda item: -item[1][1]):
        fingerprint, version = code_parts(code)
        rows.append({"code": code, "fingerprint": fingerprint, "version": version,
                     "results": results, "last_written": last})
    return rows


def _code_table(rows: List[dict]) -> str:
    return output.table(
        ["FINGERPRINT", "VERSION", "RESULTS", "LAST WRITTEN"],
        [[row["fingerprint"][:12] or ("(unknown code)" if not row["code"] else "-"),
          row["version"] if row["version"] is not None else "-", row["results"],
          format_time(row["last_written"])] for row in rows],
        right=("RESULTS",))


def _total(leaves: List[LeafStats]) -> dict:
    present = [s for s in leaves if s.oldest is not None]
    return {
        "entries": sum(s.entries for s in leaves),
        "versions": sum(s.versions for s in leaves),
        "superseded": sum(s.versions - s.entries - s.tombstones for s in leaves),
        "tombstones": sum(s.tombstones for s in leaves),
        "unreadable": sum(s.unreadable for s in leaves),
        "live_bytes": sum(s.live_bytes for s in leaves),
        "file_bytes": sum(s.file_bytes for s in leaves),
        "disk_bytes": sum(s.disk_bytes for s in leaves),
        "oldest": min((s.oldest for s in present), default=None),
        "newest": max((s.newest for s in present), default=None),
        "compute_seconds": sum(s.compute_seconds for s in leaves),
        "imported": sum(s.imported for s in leaves),
    }


def _leaf_document(stats: LeafStats) -> dict:
    document = asdict(stats)
    document["code_versions"] = {code: {"results": results, "last_written_epoch": last}
                                 for code, (results, last) in stats.code_versions.items()}
    return document


def run(args, storage: StorageTier) -> int:
    root = args.root or targets.default_root()
    leaves = targets.resolve(args.target, root, storage)
    collected = []
    with progress_bar("reading", unit="stores", total=len(leaves)) as advance:
        for leaf in leaves:
            collected.append(leaf_stats(leaf, storage))
            advance(1)
    total = _total(collected)
    versions = code_versions(collected)
    folders = sorted({leaf.function_folder for leaf in leaves})
    names = sorted({leaf.function_name or "" for leaf in leaves})
    title = folders[0] if len(folders) == 1 else f"{args.target} ({len(folders)} functions)"
    function = names[0] or None if len(names) == 1 else None
    if args.json:
        document = {"function": function, "function_folder": title,
                    "leaves": len(collected), **total, "oldest": iso_time(total["oldest"]),
                    "newest": iso_time(total["newest"]), "oldest_epoch": total["oldest"],
                    "newest_epoch": total["newest"],
                    "code_versions": [{**row, "last_written": iso_time(row["last_written"]),
                                       "last_written_epoch": row["last_written"]}
                                      for row in versions],
                    "per_leaf": [_leaf_document(s) for s in collected]}
        output.print_json(document)
        return OK
    print(f"{title} ({function})" if function else title)
    entries = total["entries"]
    average = format_seconds(total["compute_seconds"] / entries) if entries else "-"
    lines = [
        ("leaves", f"{len(collected)}"),
        ("entries", f"{entries}" + (f" ({total['imported']} imported from 0.0.7)"
                                    if total["imported"] else "")),
        ("versions", f"{total['versions']} ({total['superseded']} superseded; "
                     "`ptd compact` drops them)"),
        ("tombstones", f"{total['tombstones']} deleted calls"),
        ("live bytes", f"{format_bytes(total['live_bytes'])} (newest record of each entry)"),
        ("on disk", f"{format_bytes(total['file_bytes'])} data files, "
                    f"{format_bytes(total['disk_bytes'])} with lock files"),
        ("oldest entry", format_time(total["oldest"])),
        ("newest entry", format_time(total["newest"])),
        ("compute stored", f"{format_seconds(total['compute_seconds'])} (saved by one hit on "
                           f"each entry), {average} per entry on average"),
    ]
    if total["unreadable"]:
        lines.append(("unreadable", f"{total['unreadable']} entries written by a newer version"))
    if any(row["code"] for row in versions):
        lines.append(("code versions", f"{len(versions)} (results of each, superseded "
                                       "included, most recently written first)"))
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"  {label + ':':<{width + 1}} {value}")
    if any(row["code"] for row in versions):
        print()
        print(_code_table(versions))
    if len(collected) > 1:
        print()
        print(output.table(
            ["LEAF", "ENTRIES", "VERSIONS", "TOMBSTONES", "LIVE", "ON DISK", "NEWEST"],
            [[s.leaf or ".", s.entries, s.versions, s.tombstones, format_bytes(s.live_bytes),
              format_bytes(s.file_bytes), format_time(s.newest)] for s in collected],
            right=("ENTRIES", "VERSIONS", "TOMBSTONES", "LIVE", "ON DISK")))
    return OK
