"""Our key tuple in 0.0.7's spelling.

Both libraries build the key tuple ``((name, value), ...)`` sorted by name from the same bound
arguments (defaults, ``skip_kwargs``, ``expand_dict_kwargs``, groupby values popped), with one
difference: 0.0.7 replaces an ``argparse.Namespace`` value by ``json.dumps(vars(ns))``
(``persister.convert_kwarg``: default separators, attributes in their own order), after
expanding dicts, so only top-level values are converted. We keep the Namespace itself.

0.0.7 keeps the key tuple as a dict key, so it must be hashable; and it cannot call functions
with ``*args``, which we key under a ``"*name"`` entry.
"""

import argparse
import json
from typing import Tuple


class NotRepresentable(Exception):
    """A key 0.0.7 cannot hold; ``reason`` is a short label for counting, the message says
    which argument and why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def to_legacy_key(key: tuple) -> Tuple[tuple, bool]:
    """``(0.0.7's key tuple, whether it differs from ours)``; raises :class:`NotRepresentable`
    for a Namespace that JSON cannot hold (0.0.7 would have raised on that call)."""
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
