"""``ptd compact [PATH ...]`` (also ``tools/compact``): rebuild stores so their files shrink.

Each store is rebuilt into a new generation holding only the newest record of every call that
is kept (the local tier's ``compact``), while jobs go on reading and writing it.

``--drop-old-code`` works per function: the stores are grouped by the function that wrote them
(their recorded ``function`` and function folder), and each store is compacted keeping only
the results of one code fingerprint of its function, under every ``version=``, and results of
unknown code. A code version here is a fingerprint, never a version label: ``version=`` values
are selectors as much as bumps (``version=("v2", model_name)`` with two models in use), so
nothing tells an abandoned one from one in use.

The fingerprint kept is the one named by ``--keep-code``, or else the newest: the one that
wrote the function's last result in any of its groupby leaves (the compacted ones or not), as
``Store.code_versions`` orders them (``CodeVersionStats.last_current``: by the order a call's
records were appended, then by date). When that cannot be told, nothing of the function is
dropped by code: two fingerprints tie, or the newest is dated after this machine's clock (a
clock running ahead; its dates say nothing about order). Going back to older code whose runs
then only hit writes nothing, so the abandoned newer code stays the newest: ``--keep-code``
is for that case.
"""

import argparse
import dataclasses
import os
import re
import time
from typing import Dict, List, Optional, Tuple

from ..engine import CompactionPolicy, EngineError, LocalStorage
from . import output, targets
from .exit_codes import FAILURE, OK, USAGE
from .progress import progress_bar
from .units import format_bytes, format_time, iso_time, parse_duration, parse_size

EXAMPLES = """\
examples:
  ptd compact                                  every store under the configured persist path
  ptd compact path/to/function_folder --dry-run
  ptd compact --older-than 30d                 also drop results written over 30 days ago
  ptd compact --max-size 2GiB path/to/leaf     keep at most 2 GiB of results per store,
                                               dropping the oldest first
  ptd compact --drop-old-code --dry-run        what dropping every function's results of
                                               code other than its newest would drop
  ptd compact path/to/function_folder --drop-old-code --keep-code 3f9a1c
                                               keep the code whose fingerprint starts with
                                               3f9a1c (after going back to older code)
sizes: 500MB, 2GiB, 1.5G (KB/MB/GB: powers of 1000; KiB/MiB/GiB and K/M/G: 1024)
durations: 45s, 90m, 12h, 30d, 2w, 1d12h
"""
#: How short a ``--keep-code`` prefix may be: 6 hex digits tell about 16 million codes apart.
MIN_KEEP_CODE_CHARS = 6
_HEX = re.compile(r"[0-9a-f]+")


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "compact", help="drop superseded versions, tombstones and expired results; shrink files",
        description=output.paragraph(
            "Rebuild each store under the PATHs without superseded versions "
            "(recomputed calls), tombstones (deleted calls) and, if asked, results "
            "that are too old, do not fit a size budget or were computed by old code, "
            "so that its files really shrink. Safe while jobs read and write the "
            "cache: nothing they write meanwhile is lost, and a writer waits at most "
            "for the final switch. Prints the bytes before and after."),
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
    parser.add_argument(
        "--drop-old-code", action="store_true",
        help="also drop, per function, the results of code other than its newest: the code "
             "whose fingerprint wrote the function's most recently written result, in any of "
             "its groupby leaves (by the order the store appended records where it knows it, "
             "else by date). A code version here is the code fingerprint alone "
             "(f.cache_info()['code_fingerprint']): results of the kept code are kept under "
             "every version=, which --drop-old-code never drops as such (use --older-than, "
             "or f.clear(), for those). Results of unknown code (written before code versions "
             "were recorded, with code_changes='ignore', or imported from 0.0.7) are kept. "
             "If which code is newest cannot be told (two wrote their last results at the "
             "same time, or the newest is dated after this machine's clock), nothing of that "
             "function is dropped by code and the output says so; the exit status stays 0. "
             "The output names, per function, the code kept and each code dropped; try "
             "--dry-run first")
    parser.add_argument(
        "--keep-code", metavar="FINGERPRINT-PREFIX", type=_fingerprint_prefix,
        help="with --drop-old-code: keep the code whose fingerprint starts with this (at "
             f"least {MIN_KEEP_CODE_CHARS} hex digits) instead of the newest; it must match "
             "exactly one code of each function compacted (exit status 2 otherwise, naming "
             "them). Use it after going back to older code: runs of the old code only hit and "
             "write nothing, so the abandoned newer code still counts as the newest. "
             "f.cache_info()['code_fingerprint'] shows the code in use; `ptd stats FUNCTION` "
             "lists the codes stored")
    parser.add_argument("--dry-run", action="store_true",
                        help="only say what would be dropped and the estimated size after")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one per store")


def _fingerprint_prefix(text: str) -> str:
    prefix = text.strip().lower()
    if len(prefix) < MIN_KEEP_CODE_CHARS or not _HEX.fullmatch(prefix):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not the start of a code fingerprint: give at least "
            f"{MIN_KEEP_CODE_CHARS} hex digits of f.cache_info()['code_fingerprint'] (or of "
            "a FINGERPRINT that `ptd stats FUNCTION` lists)")
    return prefix


def _line(report) -> str:
    dropped = [f"{count} {label}" for count, label in (
        (report.superseded, "superseded"), (report.tombstones, "deleted"),
        (report.expired, "expired"), (report.evicted, "over size"),
        (report.old_code, "of old code")) if count]
    verb = "would be" if report.dry_run else ""
    size = (f"{format_bytes(report.bytes_before)} -> "
            f"{'~' if report.dry_run else ''}{format_bytes(report.bytes_after)}")
    return (f"{targets.display(report.path)}: {size}, {report.kept} kept"
            + (f", {verb + ' ' if verb else ''}dropped: {', '.join(dropped)}" if dropped else ""))


def run(args, storage: LocalStorage) -> int:
    if args.keep_code is not None and not args.drop_old_code:
        output.warn("ptd compact: --keep-code goes with --drop-old-code (it says which code "
                    "--drop-old-code keeps); add --drop-old-code, or leave --keep-code out")
        return USAGE
    paths = args.paths or [targets.default_root()]
    leaves: List[str] = []
    for path in paths:
        if not args.paths and not os.path.isdir(path):
            continue  # the default persist path: nothing cached yet
        leaves.extend(leaf for leaf in targets.stores_under(path, storage)
                      if leaf not in leaves)
    policy = CompactionPolicy(older_than=args.older_than, max_size=args.max_size)
    reports, failures = [], []
    decisions: Dict[str, CodeDecision] = {}
    functions: List[CodeDecision] = []
    if args.drop_old_code:
        decisions, functions, unreadable = decide_code_of_functions(
            leaves, storage, args.keep_code, time.time())
        mismatched = [d for d in functions if d.mismatch is not None]
        if mismatched:
            for decision in mismatched:
                output.warn(f"ptd compact: {decision.function}: {decision.mismatch}")
            output.warn("ptd compact: nothing was compacted. Name one function's folder as "
                        "PATH to compact only that function with --keep-code.")
            return USAGE
        failures.extend(unreadable)
    not_read = {leaf for leaf, _ in failures}
    with progress_bar("compacting", unit="records") as advance:
        for leaf in leaves:
            if leaf in not_read:
                continue  # its function's newest code version is not known
            decision = decisions.get(leaf)
            leaf_policy = (dataclasses.replace(policy, keep_fingerprint=decision.keep,
                                               keep_fingerprint_as_of=decision.as_of)
                           if decision is not None and decision.keep else policy)
            try:
                reports.append(storage.compact(leaf, leaf_policy, dry_run=args.dry_run,
                                               progress=advance))
            except (EngineError, OSError) as err:
                failures.append((leaf, f"{type(err).__name__}: {err}"))
    if args.json:
        output.print_json([{**dataclasses.asdict(r), **(
                               _json_decision(decisions.get(r.path))
                               if args.drop_old_code else {})} for r in reports]
                          + [{"path": leaf, "error": error} for leaf, error in failures])
    else:
        for decision in functions:
            print(decision.describe(args.dry_run))
        if any(targets.display(r.path) != r.path for r in reports):
            print(f"Stores under {targets.default_root()}:")
        for report in reports:
            print(_line(report))
        before = sum(r.bytes_before for r in reports)
        after = sum(r.bytes_after for r in reports)
        print(f"{len(reports)} store(s): {format_bytes(before)} -> "
              f"{'~' if args.dry_run else ''}{format_bytes(after)}"
              + (" (dry run: nothing was changed)" if args.dry_run else ""))
        if functions and not args.dry_run:
            print("(ptd compact --drop-old-code --dry-run shows this without deleting "
                  "anything)")
    for leaf, error in failures:
        output.warn(f"ptd compact: {leaf} was not compacted: {error}")
    return FAILURE if failures else OK


@dataclasses.dataclass
class CodeDecision:
    """What ``--drop-old-code`` keeps of one function's results."""

    function: str
    #: ``{fingerprint: [stored results, last written, last current]}`` over its groupby
    #: leaves (see ``CodeVersionStats``); results of unknown code are not in it.
    fingerprints: Dict[str, list]
    keep: Optional[str] = None      # the fingerprint kept; None: nothing dropped by code
    as_of: float = 0.0              # the newest date seen when deciding (keep_fingerprint_as_of)
    named: bool = False             # ``keep`` was named by --keep-code
    undecided: Optional[str] = None  # why nothing is dropped by code although codes differ
    mismatch: Optional[str] = None   # why --keep-code names no single code of the function

    def dropped(self) -> List[Tuple[str, int, float]]:
        """``(fingerprint, stored results, last written)`` of each code dropped, newest first."""
        if self.keep is None:
            return []
        return sorted(((fingerprint, results, last) for fingerprint, (results, last, _)
                       in self.fingerprints.items() if fingerprint != self.keep),
                      key=lambda row: (-row[2], row[0]))

    def describe(self, dry_run: bool) -> str:
        """The lines the text output gives the function."""
        hint = ("Name the code to keep with --keep-code FINGERPRINT-PREFIX "
                "(f.cache_info()['code_fingerprint'] shows the code in use).")
        if self.undecided is not None:
            return (f"{self.function}: dropping no code version: {self.undecided}. {hint}")
        results, last, _ = self.fingerprints[self.keep]
        how = "named by --keep-code" if self.named else "the newest"
        lines = [f"{self.function}: keeping code {self.keep[:12]} ({how}; {results} stored "
                 f"results, last written {format_time(last)}) under every version=, and "
                 "results of unknown code"]
        verb = "would drop" if dry_run else "dropping"
        lines.extend(f"  {verb} code {fingerprint[:12]}: {count} stored results, last "
                     f"written {format_time(when)}"
                     for fingerprint, count, when in self.dropped())
        if len(lines) == 1:
            lines[0] += "; no other code to drop"
        return "\n".join(lines)


def _json_decision(decision: Optional[CodeDecision]) -> dict:
    if decision is None:
        return {"keep_fingerprint": None, "old_code_undecided": None, "dropped_code": []}
    return {"keep_fingerprint": decision.keep, "old_code_undecided": decision.undecided,
            "dropped_code": [{"fingerprint": fingerprint, "results": results,
                              "last_written": iso_time(last), "last_written_epoch": last}
                             for fingerprint, results, last in decision.dropped()]}


def decide_code_of_functions(leaves: List[str], storage: LocalStorage,
                             keep_prefix: Optional[str], now: float
                             ) -> Tuple[Dict[str, CodeDecision], List[CodeDecision],
                                        List[Tuple[str, str]]]:
    """For ``--drop-old-code``: ``({leaf: its function's decision}, [decision of each function
    with results of known code], [(leaf, why it is not compacted)])``; see the module
    docstring for the rules. ``now``: this machine's clock, to spot dates ahead of it.

    A function's codes are gathered over every groupby leaf it has (those below its folder
    that record the same function, compacted now or not), so that a leaf only old code wrote
    is cleaned too. If a store below its folder cannot be read (its description or its
    records), which code is newest is not known: none of its leaves is compacted, since
    dropping by a guess could drop the newest code's results.
    """
    root = targets.default_root()
    groups: Dict[Tuple[str, str], List[str]] = {}
    for leaf in leaves:
        groups.setdefault(_function_of(leaf, root, storage)[0], []).append(leaf)
    decisions: Dict[str, CodeDecision] = {}
    functions: List[CodeDecision] = []
    unreadable: List[Tuple[str, str]] = []
    for (function, folder), members in sorted(groups.items()):
        fingerprints, failed = _codes_of_function(function, folder, members, root, storage)
        if failed is not None:
            unreadable.extend(
                (leaf, f"the newest code version of its function is unknown, since a store "
                       f"below the function's folder could not be read ({failed})")
                for leaf in members)
            continue
        if not fingerprints:
            continue  # only results of unknown code: nothing to drop, nothing to say
        decision = CodeDecision(function or targets.display(folder), fingerprints,
                                as_of=max(last for _, last, _ in fingerprints.values()))
        if keep_prefix is not None:
            _keep_named(decision, keep_prefix)
        else:
            _keep_newest(decision, now)
        functions.append(decision)
        for leaf in members:
            decisions[leaf] = decision
    return decisions, functions, unreadable


def _codes_of_function(function: str, folder: str, members: List[str], root: str,
                       storage: LocalStorage) -> Tuple[Dict[str, list], Optional[str]]:
    """``({fingerprint: [results, last written, last current]}, None)`` over the function's
    groupby leaves, or ``({}, why)`` when one of them cannot be read."""
    from .stats import code_parts  # the API layer's reading of a code tag
    siblings = set(members)
    if os.path.isdir(folder):
        for path in storage.find_stores(folder):
            group, error = _function_of(path, root, storage)
            if error is not None:
                return {}, error
            if group == (function, folder):
                siblings.add(path)
    fingerprints: Dict[str, list] = {}
    for path in sorted(siblings):
        try:
            versions = storage.open_store(path).code_versions()
        except (EngineError, OSError) as err:
            return {}, f"{path}: {type(err).__name__}: {err}"
        for code, found in versions.items():
            fingerprint = code_parts(code)[0]
            if not fingerprint:
                continue  # unknown code: always kept
            tally = fingerprints.setdefault(fingerprint, [0, found.last_written,
                                                          found.last_current])
            tally[0] += found.records
            tally[1] = max(tally[1], found.last_written)
            tally[2] = max(tally[2], found.last_current)
    return fingerprints, None


def _keep_newest(decision: CodeDecision, now: float) -> None:
    """Keep the fingerprint that wrote last, or nothing if that cannot be told."""
    order = sorted(decision.fingerprints.items(), key=lambda item: (-item[1][2], item[0]))
    newest, (_, _, when) = order[0]
    tied = [fingerprint[:12] for fingerprint, (_, _, other) in order if other == when]
    if len(tied) > 1:
        decision.undecided = (f"codes {', '.join(tied)} each wrote a last result dated "
                              f"{format_time(when)}, so which is newer cannot be told")
    elif when > now and len(order) > 1:
        decision.undecided = (f"the newest code by date, {newest[:12]}, wrote a result dated "
                              f"{format_time(when)}, after this machine's clock "
                              f"({format_time(now)}): a clock ran ahead, so dates cannot tell "
                              "which code is newest")
    else:
        decision.keep = newest


def _keep_named(decision: CodeDecision, prefix: str) -> None:
    """Keep the one fingerprint ``prefix`` starts, or record why it names none or several."""
    matches = sorted(fingerprint for fingerprint in decision.fingerprints
                     if fingerprint.startswith(prefix))
    if len(matches) == 1:
        decision.keep, decision.named = matches[0], True
        return
    codes = ", ".join(f"{fingerprint[:12]} ({results} stored results, last written "
                      f"{format_time(last)})" for fingerprint, (results, last, _)
                      in sorted(decision.fingerprints.items(), key=lambda item: -item[1][1]))
    found = (f"{len(matches)} codes ({', '.join(m[:12] for m in matches)}): give more of "
             "the fingerprint" if matches else "no code")
    decision.mismatch = (f"--keep-code {prefix} matches {found}; the function's codes are "
                         f"{codes}")


def _function_of(leaf: str, root: str, storage: LocalStorage
                 ) -> Tuple[Tuple[str, str], Optional[str]]:
    """``((recorded function name, function folder), None)``: what groups stores by function;
    ``(("", leaf), why)`` when the store's description cannot be read."""
    try:
        meta = storage.open_store(leaf).read_meta()
    except (EngineError, OSError, ValueError) as err:
        return ("", leaf), f"{leaf}: {type(err).__name__}: {err}"
    described = targets.Leaf(leaf, root, meta)
    return (described.function_name or "", described.function_folder), None
