"""Results imported from persist-to-disk 0.0.7: how the decorator finds them, and which folders
still hold 0.0.7's own files.

``ptd import-pkl`` (:mod:`.legacy`) stores each entry of a 0.0.7 ``.pkl`` bucket file as a
record whose ``origin`` is :data:`IMPORTED_ORIGIN`, under the digest of 0.0.7's key tuple
*without groupby values* (:func:`legacy_digest`, ``call_digest((), key)``): 0.0.7's folder
names keep only ``str(value)`` of those, so their types are gone, and within one leaf folder
they are the same for every entry anyway. For a function without groupby and without
``argparse.Namespace`` arguments that is exactly the digest the decorator computes, so its
first lookup hits. Otherwise (groupby values are part of our digest; a Namespace is keyed by
its attributes, not 0.0.7's JSON text) the decorator's miss path asks :func:`find_imported`,
which looks under 0.0.7's spelling and accepts only records marked as imported: a result the
decorator stored for ``"20"`` is never returned for ``20``. Imported records are bucketed
with the hashsize the store was created with, which the look-up reads from the store's
metadata, so an import with another ``--hashsize`` than the decorator's is still found. The
decorator then stores the result again under the call's own digest and bucket, so the next
call is a plain hit.

This module is part of the core (the decorator's miss path and the settings use it), so it
imports neither the call module nor :mod:`.legacy`; the batch import and export build on it.
"""

import json
import sys
from typing import Optional, Tuple

from .engine import Record
from .engine.generations import list_folder
from .engine.interface import CallStore
from .keying import bucket_of, call_digest

#: The ``origin`` of a record imported from a 0.0.7 bucket file. The engine's record codec
#: keeps it on disk as it always did (a ``+ptd-0.0.7`` suffix of the serializer tag); nothing
#: above the engine spells that suffix.
IMPORTED_ORIGIN = "ptd-0.0.7"
#: The hashsize each store was created with (its metadata never changes once written), so a
#: miss does not read and parse the metadata every time.
_STORED_HASHSIZE = {}


class NotRepresentable(Exception):
    """A key 0.0.7 cannot hold; ``reason`` is a short label for counting, the message says
    which argument and why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def to_legacy_key(key: tuple) -> Tuple[tuple, bool]:
    """``(0.0.7's key tuple, whether it differs from ours)``; raises :class:`NotRepresentable`
    for a Namespace that JSON cannot hold (0.0.7 would have raised on that call).

    Both libraries build the key tuple ``((name, value), ...)`` sorted by name from the same
    bound arguments, with one difference: 0.0.7 replaces a top-level ``argparse.Namespace``
    value by ``json.dumps(vars(ns))`` (default separators, attributes in their own order),
    where we keep the Namespace itself. (``argparse`` is not imported for this: no argument
    can be a Namespace before a program has imported it, and the decorator's import stays
    lean.)
    """
    argparse = sys.modules.get("argparse")
    if argparse is None:
        return key, False
    changed = False
    converted = []
    for name, value in key:
        if isinstance(value, argparse.Namespace):
            try:
                value = json.dumps(vars(value))
            except (TypeError, ValueError) as err:
                raise NotRepresentable(
                    "Namespace not JSON",
                    f"argument {name!r} is an argparse.Namespace that JSON cannot hold ({err})"
                ) from None
            changed = True
        converted.append((name, value))
    return (tuple(converted) if changed else key), changed


def is_imported(record: Record) -> bool:
    """Whether ``record`` holds a result imported from 0.0.7 (not one computed here)."""
    return record.origin == IMPORTED_ORIGIN


def legacy_digest(key: tuple) -> bytes:
    """Digest an imported entry is stored under (raises for keys we cannot digest)."""
    return call_digest((), key)


def find_imported(store: CallStore, key: tuple, hashsize: int, grouped: bool
                  ) -> Optional[Record]:
    """The imported record of this call, or None (also on anything unexpected: a miss is
    always safe).

    Looks only where the decorator's own lookup did not: under 0.0.7's spelling of the call if
    it differs from ours, and in the bucket given by the hashsize the store was created with
    (``ptd import-pkl --hashsize``), if that is not the decorator's.
    """
    try:
        legacy_key, changed = to_legacy_key(key)
        stored_hashsize = _STORED_HASHSIZE.get(store.path)
        if stored_hashsize is None:
            stored = store.read_meta().get("hashsize")
            stored_hashsize = int(stored or hashsize)
            if stored:
                _STORED_HASHSIZE[store.path] = stored_hashsize
        if not (grouped or changed or stored_hashsize != hashsize):
            return None  # the decorator's own lookup already looked exactly there
        digest = legacy_digest(legacy_key)
        record = store.latest(bucket_of(digest, stored_hashsize), digest)
    except Exception:
        return None
    return record if record is not None and is_imported(record) else None


def legacy_buckets_message(folder: str) -> Optional[str]:
    """Why ``folder``, which holds no store yet, must not get one: it holds 0.0.7's ``.pkl``
    bucket files (a store created beside them would hide them and look like a fresh cache).
    None for any other folder, and for one that does not exist.

    The engine runs this before it creates a store (``EngineSettings.foreign_folder``). The
    folder is listed with the engine's ``list_folder``, not ``glob``: glob takes a listing
    that runs out of descriptors for an empty folder, and a folder of buckets would be taken
    for a new store; ``list_folder`` closes idle stores and lists again. Hidden files are
    not 0.0.7's.
    """
    try:
        names = list_folder(folder)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not any(name.endswith(".pkl") and not name.startswith(".") for name in names):
        return None
    return (f"{folder} holds .pkl bucket files of persist-to-disk 0.0.7, not a store of this "
            "version. Nothing was changed. Move that folder aside (or import it with "
            "`ptd import-pkl`), or use another persist_path.")
