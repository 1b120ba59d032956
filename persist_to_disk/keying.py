"""Stable digests of call keys.

The same call must give the same digest in every process and every run, and different calls
must never share one. So the key is encoded canonically, byte by byte, before hashing:

* every value carries a type tag, so ``1``, ``1.0`` and ``True`` stay distinct;
* dicts are ordered by their encoded keys and sets by their encoded elements, so equal dicts
  built in another insertion order, and equal sets, give one digest (pickle would not);
* numpy arrays are keyed by dtype, shape and their whole buffer (a ``repr`` is truncated past
  1,000 elements and would make different arrays collide), without importing numpy;
* classes and functions are keyed by their import path; other objects by their class and the
  state pickle would save (``__reduce_ex__``), so a method's ``self`` keys by its state;
* nothing uses ``hash()`` (salted per process) or ``repr()``.

Anything that has no stable encoding (a lambda, an open file, a lock, a reference cycle) raises
:class:`UnkeyableArgumentError` naming the argument.
"""

import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import hashlib
import pathlib
import struct
import sys
import types
import uuid
from typing import Any, Iterable, Tuple

from .errors import UnkeyableArgumentError

DIGEST_SIZE = 16
_FLOAT = struct.Struct("<d")
_NAN = b"d" + _FLOAT.pack(float("nan"))


class UnkeyableValue(Exception):
    """Why a value (somewhere inside an argument) cannot be keyed; the API layer turns it into
    an :class:`UnkeyableArgumentError` that names the argument."""


_length = struct.Struct("<Q").pack  # length prefix of every variable-size field


def _text(tag: bytes, value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    return tag + _length(len(data)) + data


def _module_name(module: str) -> str:
    """The importable name of a module: the main script is ``__main__`` in the parent but
    ``__mp_main__`` in a multiprocessing spawn worker, and a script run with ``python -m pkg.mod``
    is also importable as ``pkg.mod``; all spellings must give one key."""
    if module in ("__main__", "__mp_main__"):
        spec = getattr(sys.modules.get(module), "__spec__", None)
        name = getattr(spec, "name", None)
        if name and name not in ("__main__", "__mp_main__"):
            return name
        return "__main__"
    return module


def _reference(obj: Any) -> bytes:
    """Key a class, function or module by where it is imported from."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if qualname is None or module is None:
        if type(obj).__name__ == "module":
            return _text(b"M", obj.__name__)
        raise UnkeyableValue(f"{obj!r:.80} has no importable name")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise UnkeyableValue(
            f"{qualname} is a lambda or a function/class defined inside another function; its "
            "behaviour is not captured by its name. Pass a module-level function or class, or "
            "a plain value (for example its name) instead"
        )
    return _text(b"G", f"{_module_name(module)}:{qualname}")


def _encode_scalar_fallback(value: Any, out: bytearray, active: set) -> None:
    """Everything that is not an exact built-in type: subclasses, numpy, dataclasses, ..."""
    cls = type(value)
    module = getattr(cls, "__module__", "")
    if module == "numpy" and (cls.__name__ == "ndarray" or _is_numpy_scalar(value)):
        _encode_array(value, out, active)
        return
    if isinstance(value, (type, types.FunctionType, types.ModuleType)) or (
            isinstance(value, types.BuiltinFunctionType)
            and isinstance(getattr(value, "__self__", None), (type(None), types.ModuleType))):
        # Bound methods are not here: they reduce to (getattr, (self, name)), keying self's state.
        out += _reference(value)
        return
    if isinstance(value, enum.Enum):
        out += _reference(cls) + _text(b"E", value.name)
        return
    if "__dataclass_fields__" in cls.__dict__ and _only_fields(value):
        out += b"D" + _reference(cls)
        fields = dataclasses.fields(value)
        out += _length(len(fields))
        for field in fields:
            out += _text(b"s", field.name)
            _encode(getattr(value, field.name), out, active)
        return
    if isinstance(value, pathlib.PurePath):
        out += _reference(cls) + _text(b"P", str(value))
        return
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta)):
        out += _reference(cls)
        if isinstance(value, datetime.timedelta):
            out += _text(b"T", f"{value.days},{value.seconds},{value.microseconds}")
        else:
            out += _text(b"T", value.isoformat())
            tz = getattr(value, "tzinfo", None)
            out += _text(b"z", str(tz) if tz is not None else "")
        return
    if isinstance(value, (decimal.Decimal, fractions.Fraction, uuid.UUID)):
        out += _reference(cls) + _text(b"v", str(value))
        return
    if type(value).__name__ == "Namespace" and module == "argparse":
        out += b"n"
        _encode(vars(value), out, active)
        return
    _encode_object(value, out, active)


def _only_fields(value: Any) -> bool:
    """Whether a dataclass instance holds nothing but its fields (a subclass or ``__init__``
    may add attributes, which must then be keyed too, through ``__reduce_ex__``). Values cached
    by ``functools.cached_property`` are derived from the fields and do not count: equal
    instances must give one key whether or not someone read the property."""
    state = getattr(value, "__dict__", None)
    if state is None:
        return True
    cls = type(value)
    extra = set(state) - set(cls.__dataclass_fields__)
    return all(isinstance(getattr(cls, name, None), functools.cached_property)
               for name in extra)


def _is_numpy_scalar(value: Any) -> bool:
    return any(base.__name__ == "generic" and base.__module__ == "numpy"
               for base in type(value).__mro__)


def _encode_array(array: Any, out: bytearray, active: set) -> None:
    dtype = array.dtype
    shape = ",".join(str(n) for n in getattr(array, "shape", ()))
    if dtype.hasobject:
        out += _text(b"A", f"object|{shape}")
        _encode(array.tolist(), out, active)
        return
    descriptor = dtype.str if dtype.fields is None else str(dtype.descr)
    out += _reference(type(array)) + _text(b"A", f"{descriptor}|{shape}")
    buffer = array.tobytes()  # C order, whatever the array's memory layout
    # Hash large buffers on their own: keeps the key small and avoids one more copy.
    out += hashlib.blake2b(buffer, digest_size=32).digest()


def _encode_object(value: Any, out: bytearray, active: set) -> None:
    """Key an arbitrary object by its class and the state pickle would save."""
    try:
        reduced = value.__reduce_ex__(4)
    except Exception as err:  # objects that refuse pickling: locks, files, generators, ...
        raise UnkeyableValue(f"{type(value).__qualname__} object cannot be keyed ({err})") from None
    if isinstance(reduced, str):
        out += _text(b"G", f"{_module_name(getattr(value, '__module__', ''))}:{reduced}")
        return
    parts = tuple(reduced) + (None,) * (5 - len(reduced))
    constructor, args, state, list_items, dict_items = parts[:5]
    out += b"O" + _reference(type(value))
    out += _reference(constructor)
    _encode(args, out, active)
    _encode(state, out, active)
    _encode(list(list_items) if list_items is not None else None, out, active)
    # Items in their own order: for an OrderedDict the order is part of equality.
    _encode(list(dict_items) if dict_items is not None else None, out, active)


def _encode_sequence(tag: bytes, value: Iterable, n: int, out: bytearray, active: set) -> None:
    out += tag + _length(n)
    for item in value:
        _encode(item, out, active)


def _encoded(value: Any, active: set) -> bytes:
    part = bytearray()
    _encode(value, part, active)
    return bytes(part)


def _encode(value: Any, out: bytearray, active: set) -> None:
    cls = type(value)
    if cls is str:
        data = value.encode("utf-8", "surrogatepass")
        out += b"s" + _length(len(data)) + data
    elif cls is int:
        data = b"%d" % value
        out += b"i" + _length(len(data)) + data
    elif cls is float:
        out += _NAN if value != value else b"d" + _FLOAT.pack(value)
    elif value is None:
        out += b"N"
    elif cls is bool:
        out += b"t" if value else b"f"
    elif cls is bytes:
        out += b"b" + _length(len(value)) + value
    elif cls in (tuple, list, dict, set, frozenset, bytearray, complex):
        if cls is complex:
            out += b"c" + _FLOAT.pack(value.real) + _FLOAT.pack(value.imag)
            return
        if cls is bytearray:
            out += b"y" + _length(len(value)) + bytes(value)
            return
        marker = id(value)
        if marker in active:
            raise UnkeyableValue("it contains a reference to itself (a cycle)")
        active.add(marker)
        try:
            if cls is tuple:
                _encode_sequence(b"(", value, len(value), out, active)
            elif cls is list:
                _encode_sequence(b"[", value, len(value), out, active)
            elif cls is dict:
                pairs = sorted((_encoded(k, active), _encoded(v, active)) for k, v in value.items())
                out += b"{" + _length(len(pairs))
                for key_bytes, value_bytes in pairs:
                    out += key_bytes + value_bytes
            else:
                items = sorted(_encoded(item, active) for item in value)
                out += (b"<" if cls is set else b">") + _length(len(items))
                for item in items:
                    out += item
        finally:
            active.discard(marker)
    else:
        marker = id(value)
        if marker in active:
            raise UnkeyableValue("it contains a reference to itself (a cycle)")
        active.add(marker)
        try:
            _encode_scalar_fallback(value, out, active)
        finally:
            active.discard(marker)


def encode_value(value: Any) -> bytes:
    """Canonical bytes of one value (raises ``UnkeyableValue``; used by tests and tools)."""
    return _encoded(value, set())


def value_digest(value: Any) -> bytes:
    """Digest of one value's canonical bytes (raises ``UnkeyableValue``)."""
    return hashlib.blake2b(encode_value(value), digest_size=DIGEST_SIZE).digest()


_NAMES: dict = {}  # parameter name -> its encoding; names are few and repeat on every call
_MAX_NAMES = 10_000


def call_digest(group_values: Tuple[Any, ...], key: Tuple[Tuple[str, Any], ...],
                function_name: str = "the function", group_names: Tuple[str, ...] = ()
                ) -> bytes:
    """16-byte blake2b digest of a call: its groupby values and its sorted key tuple.

    The groupby values are part of the digest (not only of the folder name), so ``1`` and
    ``"1"``, which share the folder ``1``, never share a result.
    """
    out = bytearray(b"(")
    out += _length(len(group_values))
    name = "groupby value"
    try:
        for index, value in enumerate(group_values):
            if index < len(group_names):
                name = group_names[index]
            _encode(value, out, set())
        out += b"(" + _length(len(key))
        active: set = set()
        for name, value in key:
            encoded_name = _NAMES.get(name)
            if encoded_name is None:
                encoded_name = _text(b"s", name)
                if len(_NAMES) < _MAX_NAMES:  # generated **kwargs names must not grow it forever
                    _NAMES[name] = encoded_name
            out += encoded_name
            _encode(value, out, active)
    except UnkeyableValue as err:
        raise UnkeyableArgumentError(
            f"Argument {name!r} of {function_name} cannot be used as a cache key: {err}. "
            f"Pass a value that can be keyed, or list {name!r} in skip_kwargs if it does not "
            "change the result."
        ) from None
    except RecursionError:
        raise UnkeyableArgumentError(
            f"Argument {name!r} of {function_name} is nested too deeply to be used as a cache "
            "key."
        ) from None
    return hashlib.blake2b(out, digest_size=DIGEST_SIZE).digest()


def bucket_of(digest: bytes, hashsize: int) -> int:
    """The hash bucket of a digest: which lock (scope ``call``) and key prefix it uses."""
    return int.from_bytes(digest[:8], "big") % hashsize
