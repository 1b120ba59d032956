"""What a command works on: the stores under a path, or those of a function named on the
command line, and how to describe each (project, function, groupby leaf, size, last write).

The storage tier finds and opens stores (``storage.find_stores``, ``storage.open_store``);
what function a store belongs to comes from the metadata the decorator writes with its first
record (``function``, and ``leaf``: the groupby path of the store below the function's
folder).
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..engine.interface import StorageTier
from .exit_codes import USAGE

#: Files that change when a store is read or locked, not when it is written.
_LOCK_NAMES = ("lock.mdb",)
_LOCK_FOLDERS = ("locks",)


class CommandError(Exception):
    """Stops a command with a message for the user and an exit code (see ``exit_codes``)."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


def default_root() -> str:
    """The configured persist path (``persist_to_disk.config.get_persist_path()``)."""
    from .. import config
    return config.get_persist_path()


def display(path: str) -> str:
    """``path`` relative to the configured persist path when it is inside it (shorter lines
    for people; ``--json`` always gives absolute paths)."""
    root = default_root()
    try:
        inside = os.path.commonpath([root, path]) == root and path != root
    except ValueError:
        inside = False
    return os.path.relpath(path, root) if inside else path


def existing_folder(path: str, what: str = "PATH") -> str:
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise CommandError(f"{what} {path} is not a folder. Give a cache folder (the persist path, "
                           "a project, a function or a leaf folder); `ptd ls` lists them.")
    return path


def stores_under(path: str, storage: StorageTier) -> List[str]:
    """Leaf folders holding a store under ``path`` (which must exist), sorted."""
    return list(storage.find_stores(existing_folder(path)))


@dataclass
class Leaf:
    """One store, as ``ls`` and ``stats`` describe it."""

    path: str
    root: str
    meta: dict

    @property
    def function_folder(self) -> str:
        leaf = self.meta.get("leaf")
        if isinstance(leaf, str) and leaf not in ("", "."):
            parts = os.path.normpath(leaf).split(os.sep)
            if self.path.split(os.sep)[-len(parts):] == parts:
                return os.path.join(os.sep, *self.path.split(os.sep)[:-len(parts)])
        return self.path

    @property
    def leaf(self) -> str:
        """The groupby path below the function folder ('' without groupby)."""
        relative = os.path.relpath(self.path, self.function_folder)
        return "" if relative == "." else relative

    @property
    def relative(self) -> str:
        return os.path.relpath(self.path, self.root)

    @property
    def project(self) -> str:
        """First folder below the root: the project (``<name>-<id>``) when the root is a persist
        path."""
        first = os.path.relpath(self.function_folder, self.root).split(os.sep)[0]
        return "" if first == "." else first

    @property
    def function_label(self) -> str:
        """The function's folder below its project (``pipeline/train/train_a_model``)."""
        base = os.path.join(self.root, self.project) if self.project else self.root
        relative = os.path.relpath(self.function_folder, base)
        return "." if relative == "." else relative

    @property
    def function_name(self) -> Optional[str]:
        """``module.qualname`` as the decorator recorded it (None for imported stores)."""
        return self.meta.get("function")


def describe(leaf: str, root: str, storage: StorageTier) -> Leaf:
    try:
        meta = storage.open_store(leaf).read_meta()
    except Exception:  # a damaged store is described by its path; `ptd verify` says more
        meta = {}
    return Leaf(leaf, root, meta)


def usage(leaf: str, storage: StorageTier) -> Tuple[int, Optional[float]]:
    """``(bytes of every file under the leaf, time of its last write)``.

    Stores below this one (leaves of a function whose groupby changed) are not counted, and
    lock files are ignored for the last write, since readers touch them.
    """
    nested = {path for path in storage.find_stores(leaf) if path != leaf}
    total, last = 0, None
    for folder, subfolders, files in os.walk(leaf):
        subfolders[:] = [name for name in subfolders
                         if os.path.join(folder, name) not in nested]
        in_lock_folder = os.path.basename(folder) in _LOCK_FOLDERS
        for name in files:
            try:
                info = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue  # removed meanwhile (an old generation, a temporary file)
            total += info.st_size
            if not (in_lock_folder or name in _LOCK_NAMES or name.endswith(".lock")):
                last = info.st_mtime if last is None else max(last, info.st_mtime)
    return total, last


def _dotted_names(leaf: Leaf) -> List[str]:
    """The dotted names a function is known by: the one the decorator recorded, and, for a
    store recorded under ``__main__`` (a script run as ``python pipeline/train.py`` before
    scripts were named by their path) or with no name (imported from 0.0.7), the one its
    folder spells (``pipeline/train/train_a_model``: ``pipeline.train.train_a_model``)."""
    function = leaf.function_name or ""
    names = [function] if function else []
    if function.split(".", 1)[0] in ("", "__main__", "__mp_main__"):
        label = leaf.function_label
        if label != ".":
            names.append(".".join(label.split(os.sep)))
    return names


def _matches_name(leaf: Leaf, name: str) -> bool:
    folder = os.path.relpath(leaf.function_folder, leaf.root)
    return (any(name == known or known.endswith("." + name) for known in _dotted_names(leaf))
            or name == folder or folder.endswith(os.sep + name))


def _matches_leaf(leaf: Leaf, name: str) -> bool:
    return leaf.relative == name or leaf.relative.endswith(os.sep + name.strip(os.sep))


def resolve(spec: str, root: str, storage: StorageTier) -> List[Leaf]:
    """The stores ``spec`` names: a folder (every store under it), or a function (its dotted
    name, its name, or the end of its folder path) or a leaf (the end of its path) under
    ``root``. A name that fits several functions is refused, listing them."""
    if os.path.exists(spec):
        path = existing_folder(spec, "FUNCTION-OR-LEAF")
        leaves = [describe(leaf, root, storage) for leaf in storage.find_stores(path)]
        if not leaves:
            raise CommandError(f"{path} holds no cache store. `ptd ls` lists the stores.")
        return leaves
    root = existing_folder(root, "the persist path")
    every = [describe(leaf, root, storage) for leaf in storage.find_stores(root)]
    leaves = [leaf for leaf in every if _matches_name(leaf, spec)]
    if not leaves:
        leaves = [leaf for leaf in every if _matches_leaf(leaf, spec)]
    if not leaves:
        raise CommandError(f"No function or leaf named {spec!r} under {root}, and no such "
                           "folder. `ptd ls` lists the functions and leaves; give one of them, "
                           "or a folder path.")
    by_function: Dict[str, List[Leaf]] = {}
    for leaf in leaves:
        by_function.setdefault(leaf.function_folder, []).append(leaf)
    if len(by_function) > 1:
        listed = "\n  ".join(sorted(by_function))
        raise CommandError(f"{spec!r} names several functions; give one of their folders:\n  "
                           f"{listed}")
    return leaves
