"""``ptd remote status|push|pull``: the shared cache (S3-compatible object storage) that machines
fill and read behind their local caches (README: "Sharing a cache between machines").

**Which results.** A result is shared as ``PREFIX/NAMESPACE/<relative leaf>/<digest>.ptd``,
where the relative leaf is its store's folder below the project's cache folder
(``config.get_project_persist_path()``): ``<module path>/<function>/[<groupby value>/...]``
(``locations.py``), the same on every machine whatever the absolute paths. A store's remote name
therefore depends on the project it belongs to, and the commands work on the project of the
working folder (or of ``PERSIST_TO_DISK_PROJECT_PATH``), whose namespace is
``remote_namespace`` (default: the project folder's name): run them from the project's folder,
as its jobs run. ``push PATH`` refuses a folder outside that project's cache folder rather than
share another project's results under this project's namespace.

**Naming a function for pull.** On a machine where a function never ran there is no local store
and so no metadata naming it; what the remote holds is folders. ``module.qualname`` (as the
decorator and ``ptd ls`` name it) is the folder ``<module, dots as folders>/<qualname>``: the
layout of a module inside the project (``pipeline.train.fit`` is ``pipeline/train/fit``). Since
a qualname may hold dots itself (``Model.fit``), every split of the name into module and
qualname is tried, with the other layouts of ``locations.py`` (``<package>/__init__/<qualname>``;
``_modules/<dotted module>/<qualname>`` for a module outside the project;
``_scripts/*/<qualname>`` and ``_interactive/<qualname>`` for ``__main__``). A name with ``/``
is a relative leaf path as ``ptd ls --remote`` prints it. Each names a folder and every leaf
below it (a function's groupby leaves; for a module's name, ``pipeline.train``, every function
of the module: the layout cannot tell a module's folder from a function's). Names match from
the start of the relative path, never as a suffix, so a groupby value that happens to equal a
function's name cannot pull another function's results; only folders the remote holds count,
and a name that fits two is refused, listing them. A folder of this project's cache works too.
Where the function has run here, its local stores (found by the name they record, as ``ptd
stats`` finds them, so a bare function name works) name its folder instead, and describe the
new leaves a pull creates (function, hashsize...: the hashsize decides where a result is
stored). Stores a pull creates for a function that never ran here carry no description until
the function's first miss here; their results go in the buckets of the configured hashsize, or
of ``--hashsize N`` for a function that sets its own.
"""

import argparse
import os
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple

from ..engine.errors import EngineError
from ..engine.interface import StorageTier
from . import output, targets
from .exit_codes import FAILURE, OK, USAGE
from .progress import progress_bar
from .targets import CommandError
from .units import format_bytes, format_time, iso_time

if TYPE_CHECKING:  # the shared tier is imported only by the commands that use it
    from ..remote import SharedStorage

EXAMPLES = """\
examples:
  ptd remote status                     reachable? conditional writes? objects, bytes, pending
  ptd remote push                       upload this project's results the remote lacks
  ptd remote pull pipeline.train.fit    prefetch a function's results before a run
  ptd remote pull pipeline/train/fit/MNIST
                                        one groupby leaf (as `ptd ls --remote` lists it)
  ptd ls --remote                       what the remote holds for this project

Run them from the project's folder: results are shared under its namespace (remote_namespace,
default: the project folder's name), by their folder below the project's cache folder.
"""

NOT_CONFIGURED = (
    "No shared cache is configured (the setting `remote` is empty). To share results between "
    "machines, set `remote = s3://BUCKET/PREFIX` under [global_settings] in {config_ini} (or "
    "the environment variable PERSIST_TO_DISK_REMOTE), give every machine the same team secret "
    "(the environment variable PERSIST_TO_DISK_REMOTE_SECRET, or `remote_secret_file = PATH` "
    "naming an owner-only file), and point boto3 at the server as usual (AWS_ENDPOINT_URL, "
    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, or ~/.aws). README: "
    "\"Sharing a cache between machines\".")


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "remote", help="the shared cache: status, push local results, pull a function's",
        description=output.paragraph(
            "Work with the shared cache (S3-compatible storage, the setting `remote`) of "
            "the project in the working folder: check it (status), upload the results "
            "this machine has and it lacks (push), or fetch a function's results into "
            "the local cache before a run (pull)."),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(remote=True)  # main() then gives these commands the shared tier
    action = parser.add_subparsers(dest="remote_command", metavar="ACTION", required=True)

    status = action.add_parser(
        "status", help="reachable, conditional writes enforced, namespace, objects and bytes",
        description=output.paragraph(
            "Check the shared cache: its URL, endpoint and namespace, whether it can be "
            "reached, whether it enforces conditional writes (needed to compute each call "
            "once across machines), whether results are signed, how many result objects "
            "and bytes the namespace holds, how many uploads are still owed by this "
            "machine, and where leases live. Exit status 1 when it cannot be reached."))
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(run=run_status)

    push = action.add_parser(
        "push", help="upload the local results the remote lacks",
        description=output.paragraph(
            "Upload every local result of this project (or of the stores under PATH) that "
            "the shared cache lacks, and the uploads owed since the server was last "
            "unreachable. What is already there is left as it is (the first result "
            "uploaded for a call is the one every machine uses). Exit status 1 when "
            "something could not be uploaded or the server cannot be reached."))
    push.add_argument("path", nargs="?", metavar="PATH",
                      help="a folder of this project's cache (default: the whole project)")
    push.add_argument("--json", action="store_true", help="print one JSON object")
    push.set_defaults(run=run_push)

    pull = action.add_parser(
        "pull", help="prefetch a function's or leaf's results into the local cache",
        description=output.paragraph(
            "Fetch every result the shared cache holds for a function (all its groupby "
            "leaves) or one leaf and the local cache lacks, so that the calls after it "
            "are local hits (on a compute node before a job array, say). Each result's "
            "signature is checked before it is stored. Exit status 1 when a result could "
            "not be fetched or did not verify."))
    pull.add_argument("target", metavar="FUNCTION-OR-LEAF",
                      help="module.qualname, a leaf path as `ptd ls --remote` lists it, or a "
                           "folder of this project's cache")
    pull.add_argument("--hashsize", type=int, metavar="N",
                      help="the function's hashsize option, for a function that has never run "
                           "on this machine and sets one (default: the configured hashsize)")
    pull.add_argument("--json", action="store_true", help="print one JSON object")
    pull.set_defaults(run=run_pull)


# --- the tier and the project ------------------------------------------------------------
def shared_tier(storage: StorageTier) -> "SharedStorage":
    """``storage`` when it is the shared tier; else a usage error saying how to set one up."""
    from ..remote import SharedStorage
    if isinstance(storage, SharedStorage):
        return storage
    from .. import config
    raise CommandError(NOT_CONFIGURED.format(config_ini=config.config_path), USAGE)


def project_roots() -> List[str]:
    """The project's cache folders, which remote names are relative to: the one under the
    persist path, and the one under ``persist_path_local`` (functions with ``local=True``)
    when that is set."""
    from .. import config
    roots = [config.get_project_persist_path()]
    local = config.get_project_persist_path(local=True)
    if local != roots[0]:
        roots.append(local)
    return roots


def root_of(path: str, roots: Sequence[str]) -> Optional[str]:
    """The innermost of ``roots`` that holds ``path`` (None if none does)."""
    inside = [root for root in roots if _inside(path, root)]
    return max(inside, key=len) if inside else None


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) \
            == os.path.abspath(folder)
    except ValueError:  # different drives
        return False


def relative_leaf(leaf: str, root: str) -> str:
    """A leaf's remote folder name: its path below ``root`` with ``/`` separators."""
    relative = os.path.relpath(leaf, root)
    return "" if relative == "." else relative.replace(os.sep, "/")


def _unreachable(shared: "SharedStorage", err: Exception, doing: str) -> str:
    return (f"the shared cache {shared.settings.url} cannot be reached while {doing}: {err}. "
            "Check the endpoint and credentials (`ptd remote status`); the local cache is "
            "untouched.")


# --- status --------------------------------------------------------------------------------
def run_status(args, storage: StorageTier) -> int:
    shared = shared_tier(storage)
    status = shared.status()
    settings = shared.settings
    document = {**status._asdict(), "bucket": settings.bucket, "prefix": settings.prefix,
                "root": f"{settings.root}/", "machine": settings.machine}
    if args.json:
        output.print_json(document)
    else:
        conditional = {True: "enforced",
                       False: "NOT enforced: machines do not wait for each other, so a call "
                              "missing everywhere may be computed on several at once",
                       None: "unknown"}[status.conditional_writes]
        lines = [
            ("url", status.url),
            ("endpoint", status.endpoint or "-"),
            ("namespace", f"{status.namespace} (objects under {settings.bucket}/"
                          f"{settings.root}/)"),
            ("reachable", "yes" if status.reachable else f"NO: {status.error}"),
            ("conditional writes", conditional),
            ("signed", "yes (HMAC-SHA256 with the team secret)" if status.signed else
                       "NO (remote_unsigned = yes: whoever can write to the bucket can run "
                       "code in your jobs)"),
            ("results", f"{status.objects} objects, {format_bytes(status.bytes)}"
                        if status.reachable else "-"),
            ("pending uploads", f"{status.pending}" + (" (`ptd remote push` uploads them)"
                                                       if status.pending else "")),
            ("lock service", status.lock_service),
        ]
        width = max(len(label) for label, _ in lines)
        print("Shared cache")
        for label, value in lines:
            print(f"  {label + ':':<{width + 1}} {value}")
    if not status.reachable:
        output.warn(f"ptd remote status: {status.url} cannot be reached ({status.error}). "
                    "Check AWS_ENDPOINT_URL (or the endpoint in ~/.aws), the credentials and "
                    "the bucket name; calls meanwhile compute and cache locally.")
        return FAILURE
    return OK


# --- push ----------------------------------------------------------------------------------
def _stores_to_push(args, storage: StorageTier, roots: List[str]) -> List[Tuple[str, str]]:
    """``(leaf, project root)`` of every store to push, sorted."""
    if args.path:
        path = targets.existing_folder(args.path)
        if root_of(path, roots) is None:
            raise CommandError(
                f"PATH {path} is not inside this project's cache folder "
                f"({' or '.join(roots)}): results are shared under the namespace of the project "
                "they belong to, by their folder below its cache folder. Run `ptd remote push` "
                "from that project's folder (or set PERSIST_TO_DISK_PROJECT_PATH to it).")
        folders = [path]
    else:
        folders = [root for root in roots if os.path.isdir(root)]
    leaves: Dict[str, str] = {}
    for folder in folders:
        for leaf in storage.find_stores(folder):
            root = root_of(leaf, roots)
            if root is not None and leaf != root:
                leaves[leaf] = root
    return sorted(leaves.items())


def run_push(args, storage: StorageTier) -> int:
    shared = shared_tier(storage)
    from ..remote.client import RemoteUnavailable
    roots = project_roots()
    leaves = _stores_to_push(args, storage, roots)
    rows: List[dict] = []
    pending = None
    unreachable = None
    with progress_bar("uploading", unit="results") as advance:
        try:
            for leaf, root in leaves:
                row = {"path": leaf, "leaf": relative_leaf(leaf, root), "copied": 0,
                       "present": 0, "failed": 0, "skipped": None, "errors": []}
                rows.append(row)
                try:
                    store = shared.open_store(leaf, lock_root=root)
                    if store.read_meta().get("remote") is False:
                        # written by a function decorated with persistf(remote=False): it
                        # keeps its results on this machine, and so does push
                        row["skipped"] = "local only (remote=False)"
                        continue
                    report = shared.push(store, advance)
                except (EngineError, OSError, ValueError) as err:
                    if isinstance(err, RemoteUnavailable):
                        raise
                    row["failed"] += 1
                    row["errors"].append(f"{type(err).__name__}: {err}")
                    continue
                row.update(copied=report.copied, present=report.present,
                           failed=report.failed + report.rejected,
                           errors=list(report.errors))
            pending = shared.push_pending(advance)
        except RemoteUnavailable as err:
            unreachable = _unreachable(shared, err, "uploading")
    owed = (pending._asdict() if pending is not None else None)
    if owed is not None:
        owed["errors"] = list(pending.errors)
    totals = {key: sum(row[key] for row in rows) + (owed[key] if owed else 0)
              for key in ("copied", "present", "failed")}
    errors = [error for row in rows for error in row["errors"]] + (owed["errors"] if owed else [])
    if args.json:
        output.print_json({"url": shared.settings.url, "namespace": shared.settings.namespace,
                           "stores": len(rows), **totals, "errors": errors,
                           "unreachable": unreachable, "pending": owed, "per_store": rows})
    else:
        where = targets.display(targets.existing_folder(args.path) if args.path else roots[0])
        print(f"{len(rows)} store(s) under {where} pushed to {shared.settings.url} "
              f"(namespace {shared.settings.namespace}):")
        print(f"  {totals['copied']} uploaded, {totals['present']} already there, "
              f"{totals['failed']} failed" + (f" ({owed['copied']} of the uploads were owed "
                                              "from earlier)" if owed and owed["copied"] else ""))
        skipped = [row for row in rows if row["skipped"]]
        if skipped:
            print(f"  {len(skipped)} store(s) skipped: local only (remote=False)")
    for error in errors:
        output.warn(f"ptd remote push: {error}")
    if unreachable:
        output.warn(f"ptd remote push: {unreachable} What was not uploaded stays owed; run "
                    "`ptd remote push` again once the server is back.")
    return FAILURE if unreachable or totals["failed"] else OK


# --- pull ----------------------------------------------------------------------------------
def _qualname_folder(qualname: str) -> str:
    """``locations.function_folder_name`` of a qualname given as text."""
    return qualname.replace("<locals>", "locals").replace("<lambda>", "lambda") \
        .replace(os.sep, "_")


def name_layouts(spec: str) -> List[List[str]]:
    """The folder sequences (from the project's cache folder down; ``*`` is any one folder)
    that ``spec`` may name in the remote layout (see the module docstring)."""
    text = spec.strip()
    if "/" in text or os.sep in text:
        return [[part for part in text.replace(os.sep, "/").split("/") if part]]
    parts = text.split(".")
    layouts = [[text]] if len(parts) == 1 else []  # a top-level module (or its folder)
    for split in range(1, len(parts)):
        module, qualname = parts[:split], _qualname_folder(".".join(parts[split:]))
        if module[0] in ("__main__", "__mp_main__") and split == 1:
            layouts += [["_interactive", qualname], ["_scripts", "*", qualname]]
            continue
        layouts += [module + [qualname], module + ["__init__", qualname],
                    ["_modules", ".".join(module), qualname]]
    return [layout for layout in layouts if layout and all(layout)]


def _match(components: Sequence[str], layout: Sequence[str]) -> bool:
    return len(components) >= len(layout) and all(
        want in ("*", have) for want, have in zip(layout, components))


def _listing_prefixes(layouts: Iterable[List[str]]) -> List[str]:
    """Remote prefixes to list to see every leaf ``layouts`` may match (up to a wildcard)."""
    prefixes = set()
    for layout in layouts:
        fixed = []
        for part in layout:
            if part == "*":
                break
            fixed.append(part)
        prefixes.add("/".join(fixed) + "/")
    # a prefix that another one contains is listed with it
    return sorted(prefix for prefix in prefixes
                  if not any(prefix != other and prefix.startswith(other) for other in prefixes))


def remote_leaves(shared: "SharedStorage", spec: str, local_folders: Sequence[str]
                  ) -> Dict[str, int]:
    """``{relative leaf: objects}`` of every remote leaf ``spec`` names: below one of the
    function folders the local stores gave (``local_folders``, relative), or matching one of
    its layouts. Refuses a name that fits several function folders."""
    layouts = ([folder.split("/") for folder in local_folders] if local_folders
               else name_layouts(spec))
    found: Dict[str, int] = {}
    folders: Dict[str, List[str]] = {}
    for prefix in _listing_prefixes(layouts):
        for entry in shared.remote_objects(prefix):
            components = entry.relative_leaf.split("/")
            matching = [layout for layout in layouts if _match(components, layout)]
            if not matching:
                continue
            found[entry.relative_leaf] = found.get(entry.relative_leaf, 0) + 1
            # the function folder this leaf is under, by the shortest layout that matches it
            folder = "/".join(components[:min(len(layout) for layout in matching)])
            folders.setdefault(folder, []).append(entry.relative_leaf)
    if len(folders) > 1 and not local_folders:
        listed = "\n  ".join(sorted(folders))
        raise CommandError(f"{spec!r} fits several folders of the shared cache; give one of "
                           f"them (a path with '/'):\n  {listed}")
    return found


def _project_folder(spec: str, storage: StorageTier, roots: List[str]
                    ) -> Optional[Tuple[str, str]]:
    """``(folder, project root)`` when ``spec`` is a folder of this project's cache; None when
    it is a name (a leaf path like ``pipeline/train/fit`` may also be a source folder of the
    project, in the working folder: that is read as a name). A folder of another cache with
    stores is refused: its results are not this project's to share."""
    if not os.path.isdir(spec):
        return None
    path = os.path.abspath(os.path.expanduser(spec))
    root = root_of(path, roots)
    if root is not None and path != root:
        return path, root
    if os.path.isabs(spec) or root is not None or any(True for _ in storage.find_stores(path)):
        raise CommandError(
            f"{path} is not a folder inside this project's cache folder "
            f"({' or '.join(roots)}): only the stores of the project in the working folder "
            "have names in its shared cache. Give a function or leaf of this project, or run "
            "the command from that project's folder (or set PERSIST_TO_DISK_PROJECT_PATH).")
    return None


class LocalMatch:
    """What the local stores say a FUNCTION-OR-LEAF is (empty when nothing local fits: a
    function that has not run here)."""

    def __init__(self) -> None:
        #: relative function folders (or leaves, for a leaf's name or folder)
        self.folders: List[str] = []
        #: relative leaf of each local store -> its project root
        self.roots: Dict[str, str] = {}
        #: relative function folder -> the description its stores carry (function, hashsize,
        #: groupby...), given to the stores a pull creates for other leaves of the function
        self.metas: Dict[str, dict] = {}

    def meta_for(self, relative: str) -> Optional[dict]:
        """The description of a new store at the relative leaf ``relative`` (None when no
        local store of its function says what the function is)."""
        for folder, meta in self.metas.items():
            if relative == folder or relative.startswith(folder + "/"):
                below = relative[len(folder) + 1:]
                return {**meta, "leaf": below.replace("/", os.sep) if below else "."}
        return None


def _local_match(spec: str, storage: StorageTier, roots: List[str]) -> LocalMatch:
    match = LocalMatch()
    given = _project_folder(spec, storage, roots)
    if given is not None:
        path, root = given
        match.folders.append(relative_leaf(path, root))
        for leaf in storage.find_stores(path):
            match.roots[relative_leaf(leaf, root)] = root
        return match
    for root in roots:
        if not os.path.isdir(root):
            continue
        try:
            found = targets.resolve(spec, root, storage)
        except CommandError:
            continue  # not here: the remote listing decides
        for leaf in found:
            match.roots[relative_leaf(leaf.path, root)] = root
            if not targets._matches_name(leaf, spec):  # named as a leaf: that leaf only
                match.folders.append(relative_leaf(leaf.path, root))
                continue
            # named as a function: every remote leaf of the function counts
            folder = relative_leaf(leaf.function_folder, root)
            match.folders.append(folder)
            if leaf.meta.get("function") and "leaf" in leaf.meta:
                match.metas.setdefault(folder, {key: value for key, value in leaf.meta.items()
                                                if key not in ("store_format", "created")})
    match.folders = sorted(set(match.folders))
    return match


def run_pull(args, storage: StorageTier) -> int:
    shared = shared_tier(storage)
    from .. import config
    from ..keying import bucket_of
    from ..remote.client import RemoteUnavailable
    if args.hashsize is not None and args.hashsize < 1:
        raise CommandError(f"--hashsize {args.hashsize}: give the function's hashsize (a "
                           "positive number).")
    roots = project_roots()
    local = _local_match(args.target, storage, roots)
    try:
        found = remote_leaves(shared, args.target, local.folders)
    except RemoteUnavailable as err:
        output.warn(f"ptd remote pull: {_unreachable(shared, err, 'listing results')}")
        return FAILURE
    if not found:
        if local.folders:  # a function of this project that nobody has shared yet
            if args.json:
                output.print_json({"url": shared.settings.url, "target": args.target,
                                   "leaves": 0, "copied": 0, "present": 0, "rejected": 0,
                                   "failed": 0, "errors": [], "unreachable": None,
                                   "per_leaf": []})
            else:
                print(f"The shared cache {shared.settings.url} holds no results for "
                      f"{args.target!r} (namespace {shared.settings.namespace}): nothing to "
                      "pull.")
            return OK
        raise CommandError(
            f"No function or leaf named {args.target!r} in the shared cache "
            f"{shared.settings.url} (namespace {shared.settings.namespace}), nor in this "
            "project's local cache. Give the function as module.qualname "
            "(pipeline.train.fit), or a leaf path as `ptd ls --remote` lists it.")
    default_hashsize = args.hashsize or config.get_hashsize()
    rows: List[dict] = []
    unreachable = None
    with progress_bar("fetching", unit="results", total=sum(found.values())) as advance:
        for relative in sorted(found):
            root = local.roots.get(relative, roots[0])
            leaf = os.path.join(root, *relative.split("/"))
            row = {"leaf": relative, "path": leaf, "copied": 0, "present": 0, "rejected": 0,
                   "failed": 0, "errors": []}
            rows.append(row)
            try:
                # a new leaf of a function that has run here is described like its others
                # (the decorator describes a store with its first record; a pull brings none)
                meta = local.meta_for(relative) if relative not in local.roots else None
                store = shared.open_store(leaf, lock_root=root, meta=meta)
                hashsize = ((meta or store.read_meta()).get("hashsize")
                            or default_hashsize)
                report = shared.pull(store, lambda digest, size=hashsize: bucket_of(digest, size),
                                     advance)
            except RemoteUnavailable as err:
                unreachable = _unreachable(shared, err, "fetching results")
                break
            except (EngineError, OSError, ValueError) as err:
                row["failed"] += 1
                row["errors"].append(f"{leaf}: {type(err).__name__}: {err}")
                continue
            row.update(copied=report.copied, present=report.present, rejected=report.rejected,
                       failed=report.failed, errors=list(report.errors))
    totals = {key: sum(row[key] for row in rows)
              for key in ("copied", "present", "rejected", "failed")}
    errors = [error for row in rows for error in row["errors"]]
    if args.json:
        output.print_json({"url": shared.settings.url, "target": args.target,
                           "leaves": len(rows), **totals, "errors": errors,
                           "unreachable": unreachable, "per_leaf": rows})
    else:
        print(f"Pulled {args.target} from {shared.settings.url} (namespace "
              f"{shared.settings.namespace}), {len(rows)} leaf(s):")
        print(f"  {totals['copied']} fetched, {totals['present']} already here, "
              f"{totals['rejected']} rejected (signature), {totals['failed']} failed")
        if len(rows) > 1:
            print(output.table(["LEAF", "FETCHED", "ALREADY HERE", "FAILED"],
                               [[row["leaf"], row["copied"], row["present"],
                                 row["failed"] + row["rejected"]] for row in rows],
                               right=("FETCHED", "ALREADY HERE", "FAILED")))
    for error in errors:
        output.warn(f"ptd remote pull: {error}")
    if unreachable:
        output.warn(f"ptd remote pull: {unreachable}")
    return FAILURE if unreachable or totals["failed"] or totals["rejected"] else OK


# --- ls --remote ---------------------------------------------------------------------------
def list_remote(args, storage: StorageTier) -> int:
    """``ptd ls --remote [PATH]``: the leaves the shared cache holds for this project's
    namespace, with their objects, bytes and newest upload (PATH: a leaf path prefix, as
    listed, or a folder of this project's cache)."""
    shared = shared_tier(storage)
    from ..remote.client import RemoteUnavailable
    roots = project_roots()
    prefix = ""
    if args.path:
        given = _project_folder(args.path, storage, roots)
        prefix = (relative_leaf(*given) if given is not None
                  else "/".join(part for part in args.path.split("/") if part))
    leaves: Dict[str, dict] = {}
    try:
        with progress_bar("listing", unit="objects") as advance:
            for entry in shared.remote_objects(prefix + "/" if prefix else ""):
                advance(1)
                row = leaves.get(entry.relative_leaf)
                if row is None:
                    row = leaves[entry.relative_leaf] = {
                        "leaf": entry.relative_leaf,
                        "path": os.path.join(roots[0], *entry.relative_leaf.split("/")),
                        "objects": 0, "bytes": 0, "newest_upload_epoch": None}
                row["objects"] += 1
                row["bytes"] += entry.size
                newest = row["newest_upload_epoch"]
                row["newest_upload_epoch"] = (entry.last_modified if newest is None
                                              else max(newest, entry.last_modified))
    except RemoteUnavailable as err:
        output.warn(f"ptd ls: {_unreachable(shared, err, 'listing results')}")
        return FAILURE
    rows = [leaves[key] for key in sorted(leaves)]
    for row in rows:
        row["newest_upload"] = iso_time(row["newest_upload_epoch"])
    where = f"{shared.settings.url} (namespace {shared.settings.namespace})"
    if args.json:
        output.print_json(rows)
    elif not rows:
        print(f"No results in the shared cache {where}" + (f" under {prefix}." if prefix
                                                            else "."))
    else:
        print(f"Results in the shared cache {where}:")
        print(output.table(["LEAF", "OBJECTS", "SIZE", "NEWEST UPLOAD"],
                           [[row["leaf"], row["objects"], format_bytes(row["bytes"]),
                             format_time(row["newest_upload_epoch"])] for row in rows],
                           right=("OBJECTS", "SIZE")))
        print(f"{len(rows)} leaf(s), {sum(r['objects'] for r in rows)} objects, "
              f"{format_bytes(sum(r['bytes'] for r in rows))}")
    return OK
