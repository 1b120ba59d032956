"""Finding entries imported from 0.0.7 that a call spells differently.

An imported entry is stored under the digest of 0.0.7's key tuple *without groupby values*
(``call_digest((), key)``): 0.0.7's folder names keep only ``str(value)`` of those, so their
types are gone, and within one leaf folder they are the same for every entry anyway. For a
function without groupby and without ``argparse.Namespace`` arguments that is exactly the
digest our decorator computes, so its first lookup hits. Otherwise (groupby values are part of
our digest; a Namespace is keyed by its attributes, not 0.0.7's JSON text) the decorator's miss
path asks :func:`find_imported`, which looks under 0.0.7's spelling and accepts only records
marked as imported: a result our decorator stored for ``"20"`` is never returned for ``20``.
Imported records are bucketed with the hashsize the store was created with, which the
look-up reads from the store's metadata, so an import with another ``--hashsize`` than the
decorator's is still found. The decorator then stores the result again under the call's own
digest and bucket, so the next call is a plain hit.
"""

from typing import Optional

from ..engine import Record, Store
from ..keying import bucket_of, call_digest
from .keys import to_legacy_key

#: Appended to the serializer tag of imported records (``"pickle:5+ptd-0.0.7"``); the tag
#: still starts with the serializer's name, which is all loading looks at.
IMPORTED_TAG = "+ptd-0.0.7"
#: The hashsize each store was created with (its metadata never changes once written), so a
#: miss does not read and parse the metadata every time.
_STORED_HASHSIZE = {}


def imported_serializer(serializer: str) -> str:
    return serializer + IMPORTED_TAG


def is_imported(record: Record) -> bool:
    return record.serializer.endswith(IMPORTED_TAG)


def legacy_digest(key: tuple) -> bytes:
    """Digest an imported entry is stored under (raises for keys we cannot digest)."""
    return call_digest((), key)


def find_imported(store: Store, key: tuple, hashsize: int, grouped: bool) -> Optional[Record]:
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
