"""Our key tuple in 0.0.7's spelling.

Both libraries build the key tuple ``((name, value), ...)`` sorted by name from the same bound
arguments (defaults, ``skip_kwargs``, ``expand_dict_kwargs``, groupby values popped), with one
difference: 0.0.7 replaces an ``argparse.Namespace`` value by ``json.dumps(vars(ns))``
(``persister.convert_kwarg``: default separators, attributes in their own order), after
expanding dicts, so only top-level values are converted. We keep the Namespace itself.

0.0.7 keeps the key tuple as a dict key, so it must be hashable; and it cannot call functions
with ``*args``, which we key under a ``"*name"`` entry.

:func:`to_legacy_key` lives in the core (:mod:`persist_to_disk.imported`), whose look-up of
imported entries needs it too; legacy builds on the core, never the reverse.
"""

from ..imported import NotRepresentable, to_legacy_key

__all__ = ["NotRepresentable", "check_exportable", "is_legacy_key", "to_legacy_key"]


def check_exportable(key: tuple) -> None:
    """Raise :class:`NotRepresentable` unless 0.0.7 could have stored and looked up ``key``."""
    for name, _ in key:
        if name.startswith("*"):
            raise NotRepresentable(
                "*args", f"the function takes *args ({name!r}), which 0.0.7 does not support")
    try:
        hash(key)
    except TypeError as err:
        unhashable = next((name for name, value in key if not _hashable(value)), "?")
        raise NotRepresentable(
            "unhashable", f"argument {unhashable!r} is unhashable ({err})") from None


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def is_legacy_key(key) -> bool:
    """Whether ``key`` has the shape of a 0.0.7 key tuple: ``((str, value), ...)``."""
    return isinstance(key, tuple) and all(
        isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) for item in key)
