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
import enum
import functools
import logging
import operator
import struct
import sys
import threading
import types
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Optional, Sequence, Tuple,
                    Union)

if TYPE_CHECKING:  # (annotations only: hashlib itself is not imported, see _blake2b)
    import hashlib

from .errors import UnkeyableArgumentError

try:  # hashlib.blake2b is this class; hashlib itself also loads OpenSSL (~3 ms of an import)
    from _blake2 import blake2b as _blake2b
except ImportError:  # (a Python built without it: hashlib's, whatever it is)
    from hashlib import blake2b as _blake2b

log = logging.getLogger("persist_to_disk")

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
    if isinstance(value, _loaded("pathlib", ("PurePath",))):
        out += _reference(cls) + _text(b"P", str(value))
        return
    dates = _loaded("datetime", ("date", "time", "timedelta"))
    if isinstance(value, dates):
        out += _reference(cls)
        if isinstance(value, dates[2]):
            out += _text(b"T", f"{value.days},{value.seconds},{value.microseconds}")
        else:
            out += _text(b"T", value.isoformat())
            tz = getattr(value, "tzinfo", None)
            out += _text(b"z", str(tz) if tz is not None else "")
        return
    if isinstance(value, _loaded("decimal", ("Decimal",)) + _loaded("fractions", ("Fraction",))
                  + _loaded("uuid", ("UUID",))):
        out += _reference(cls) + _text(b"v", str(value))
        return
    if type(value).__name__ == "Namespace" and module == "argparse":
        out += b"n"
        _encode(vars(value), out, active)
        return
    _encode_object(value, out, active)


#: Where the classes :func:`_loaded` names may live: the module, then its C twin (whose
#: classes are the module's). Not the pure-Python twins (``_pydecimal``, ``_pydatetime``):
#: their classes are other classes, keyed as any object, as when the module was imported
#: eagerly; taking them for the module's keyed the module's own values as objects for the
#: rest of a process that imported ``_pydecimal`` first.
_HOMES = {"datetime": ("datetime", "_datetime"), "decimal": ("decimal", "_decimal")}
_LOADED: Dict[str, tuple] = {}


def _loaded(module: str, names: Tuple[str, ...]) -> tuple:
    """The classes ``names`` of ``module`` when it is imported, else ``()``.

    These modules are not imported by keying (datetime, decimal, fractions, uuid and pathlib
    cost ~5 ms of ``import persist_to_disk``, ``python -X importtime``): a value of one of
    their classes, or of a subclass, exists only once the module defining the class has been
    imported, so a module not in ``sys.modules`` has no instance to key."""
    classes = _LOADED.get(module)
    if classes is not None:
        return classes
    for home in _HOMES.get(module, (module,)):
        loaded = sys.modules.get(home)
        found = tuple(getattr(loaded, name, None) for name in names) if loaded else ()
        if found and all(isinstance(kind, type) for kind in found):
            if home == module:  # (kept only once the module itself is complete)
                _LOADED[module] = found
            return found
    return ()


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
    out += _blake2b(buffer, digest_size=32).digest()


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
    cls = type(value)
    if cls is str:  # dict keys, mostly: _encode's branch without the buffer
        encoded = _STR_CODES.get(value) if len(value) <= _MEMO_STR_LENGTH else None
        return encoded if encoded is not None else _str_code(value)
    if cls is int:
        return _int_code(value)
    part = bytearray()
    _encode(value, part, active)
    return bytes(part)


# Encodings of short strings, memoised: parameter names come back on every call (and often
# string values too), and a dict lookup is several times cheaper than encoding. Only exact
# ``str`` values are looked up here (after a ``type(value) is str`` test), for which equal values
# have equal encodings; bounded, cleared when full.
_STR_CODES: dict = {}
_MEMO_LIMIT = 4096
_MEMO_STR_LENGTH = 256
_INT_HEADS = tuple(b"i" + _length(n) for n in range(64))  # tag + length of n-digit ints


def _str_code(value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    encoded = b"s" + _length(len(data)) + data
    if len(value) <= _MEMO_STR_LENGTH and type(value) is str:
        if len(_STR_CODES) >= _MEMO_LIMIT:
            _STR_CODES.clear()
        _STR_CODES[value] = encoded
    return encoded


def _int_code(value: int) -> bytes:
    """Not memoised: integer arguments rarely repeat (an index, a seed), and a memo would make
    small caches look faster than large ones."""
    data = b"%d" % value
    size = len(data)
    return (_INT_HEADS[size] if size < 64 else b"i" + _length(size)) + data


def _encode(value: Any, out: bytearray, active: set) -> None:
    cls = type(value)
    if cls is str:
        # Long strings skip the memo: hashing one for the lookup would cost as much as encoding
        encoded = _STR_CODES.get(value) if len(value) <= _MEMO_STR_LENGTH else None
        out += encoded if encoded is not None else _str_code(value)
    elif cls is int:
        out += _int_code(value)
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
    return _blake2b(encode_value(value), digest_size=DIGEST_SIZE).digest()


_HASHER = _blake2b(digest_size=DIGEST_SIZE)  # copied per digest: cheaper than a new one


def call_digest(group_values: Tuple[Any, ...], key: Tuple[Tuple[str, Any], ...],
                function_name: str = "the function", group_names: Tuple[str, ...] = (),
                hasher: Optional["hashlib._Hash"] = None) -> bytes:
    """16-byte blake2b digest of a call: its groupby values and its sorted key tuple.

    The groupby values are part of the digest (not only of the folder name), so ``1`` and
    ``"1"``, which share the folder ``1``, never share a result. ``hasher``: the blake2b the
    bytes go into (copied, never updated), :func:`salted_hasher`'s for a function whose
    ``version`` or code is part of its calls' identity; the plain one by default.
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
            encoded_name = _STR_CODES.get(name)
            out += encoded_name if encoded_name is not None else _str_code(name)
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
    hasher = (_HASHER if hasher is None else hasher).copy()
    hasher.update(out)
    return hasher.digest()


def salted_hasher(salt: bytes) -> "hashlib._Hash":
    """The blake2b every call digest of a function starts from: keyed with ``salt`` (at most
    64 bytes) when the function's ``version`` or code fingerprint is part of its identity, so
    that the same arguments name another record in each version, at no cost per call (the
    keyed hasher is copied as the plain one is). An empty salt gives the plain hasher: the
    digests of a function without a version are those of every earlier release."""
    return _blake2b(digest_size=DIGEST_SIZE, key=salt) if salt else _HASHER


_EMPTY = object()  # what an empty cell (a variable not assigned yet) holds for CapturedValues
_IMMUTABLE = frozenset({str, int, float, bool, bytes, complex, type(None)})
_MUTABLE = frozenset({dict, list, set, bytearray})
_PLAIN = _IMMUTABLE | _MUTABLE | {tuple, frozenset}  # never a function, nor wrapping one
_DIGEST_HEAD = b"b" + _length(DIGEST_SIZE)  # a digest (bytes) as _encode writes it


def _keyed_for_good(value: Any) -> bool:
    """Whether ``value``'s digest can never change while the object lives, so that a digest
    cached for it stays right as long as the variable still holds this very object: exact
    immutable built-ins, tuples and frozensets of them, enum members, and classes, functions,
    modules and module-level built-ins (keyed by where they are imported from)."""
    cls = type(value)
    if cls in _IMMUTABLE:
        return True
    if cls in _MUTABLE:
        return False
    if cls is tuple or cls is frozenset:
        try:
            return all(_keyed_for_good(item) for item in value)
        except RecursionError:
            return False
    return isinstance(value, (type, types.FunctionType, types.ModuleType, enum.Enum)) or (
        isinstance(value, types.BuiltinFunctionType)
        and isinstance(getattr(value, "__self__", None), (type(None), types.ModuleType)))


def _holding(cells: tuple, values: tuple) -> Callable[[], bool]:
    """A test that each cell still holds the very object in ``values`` (``ValueError`` for a
    cell emptied since); unrolled for up to three cells, a fifth of a microsecond less per hit
    than a loop."""
    if len(cells) == 1:
        (c0,), (v0,) = cells, values
        return lambda: c0.cell_contents is v0
    if len(cells) == 2:
        (c0, c1), (v0, v1) = cells, values
        return lambda: c0.cell_contents is v0 and c1.cell_contents is v1
    if len(cells) == 3:
        (c0, c1, c2), (v0, v1, v2) = cells, values
        return lambda: (c0.cell_contents is v0 and c1.cell_contents is v1
                        and c2.cell_contents is v2)
    return lambda: all(cell.cell_contents is value for cell, value in zip(cells, values))


class CapturedValueChanging(Exception):
    """A captured variable whose value another thread kept changing while it was keyed, so that
    no digest of it could be read whole (:meth:`CapturedValues.current`). The call it was
    keyed for must neither read nor write the cache: keyed without the variable, or by a state
    half-way through a change, it could return the result of another state. The API layer
    catches it and computes the call; it never reaches the caller."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the captured variable {name!r} kept changing while it was keyed")
        self.name = name


def _changed_meanwhile(err: BaseException) -> bool:
    """Whether ``err`` is what iterating a container another thread changes raises (``dict
    changed size during iteration``, its ``set``, ``OrderedDict`` and ``deque`` variants);
    RecursionError, also a RuntimeError, is not."""
    return type(err) is RuntimeError and "during iteration" in str(err)


_SNAPSHOT = frozenset({dict, list, set, bytearray})  # copied without running Python code


class CapturedValues:
    """The key entries of the variables a closure captures, as they are at each call.

    A variable may be assigned after the ``def`` (``model = load(name)`` below it), rebound
    (``nonlocal``) or hold a dict filled later, so its value is read from its cell at every call,
    never only at decoration. Keying a value costs as much as keying an argument, so an entry is
    reused while the cell still holds the very object it was made from (one identity test) and
    that object's key cannot change (:func:`_keyed_for_good`); a mutable value (a dict, a list,
    an object) is keyed again at every call. An empty cell has no entry; a value that cannot be
    keyed has none either and is reported once through ``on_unkeyable(name, error)``; values
    for which ``ignore(value)`` is true (the function itself, for recursion) have none.

    What the function itself does to a captured mutable value while it runs (a list of calls
    it appends to, a dict it memoizes into) must not change the key of later calls, or nothing
    it stores would be found again; what the caller does between runs (fills the dict, changes
    an entry) must. So every run of the function is bracketed by :meth:`begin_run` and
    :meth:`end_run`: a value the run changed in place (the cell still holds the same object)
    gets an *alias*, its digest after the run -> the digest it was keyed by before the run, and
    later calls key that state by the digest before the run (``[] -> run -> [1]`` is keyed as
    ``[]``: a second identical call hits). Aliases chain back to the first state (``[1, 1]``
    -> ``[]``, not ``[1]``), belong to the object they were made for (a rebinding of the
    variable is keyed by its own digest, never aliased) and to this function (another cached
    function capturing the same dict sees the change as the caller's: its result may depend
    on it, ``load()`` filling a model that ``predict()`` reads), and are at most
    ``MAX_ALIASES`` per variable (the oldest go first; a dropped alias costs a miss, never a
    wrong result). While a
    run is under way, calls (recursive ones, say) key the value as it was when the run began.
    A value the run made unkeyable (a lock appended to a list) is keyed as before the run, with
    no warning. Limits: a change another thread makes during a run is taken for the run's, and
    a state the caller produces that equals one a run produced is keyed as before that run.

    Another thread may change a captured value while it is being keyed (its own run of the
    function memoizing into the dict); iterating it then raises ``RuntimeError``. Its digest is
    read again, from a copy of it (a plain container is copied without running Python code,
    so without another thread getting in), up to ``DIGEST_ATTEMPTS`` times; if it never holds
    still, :meth:`current` raises :class:`CapturedValueChanging` (reported once per variable
    through ``on_changing(name)``) and the call computes without the cache. Any other
    exception keying a value raises (a ``__getattr__`` that fails, say) makes it a value that
    cannot be keyed. Nothing done after a run (:meth:`end_run`) raises.

    ``current()`` gives ``(number of entries, their encoding as call_digest writes it, the
    entries ((label, digest), ...))``; the digests are those of earlier versions, which keyed
    the values once, at decoration.
    """

    MAX_ALIASES = 4096  # per variable: a long-lived process must not grow without bound
    DIGEST_ATTEMPTS = 5  # reads of a value another thread is changing, before giving up

    __slots__ = ("names", "labels", "cells", "function_name", "_codes", "_ignore",
                 "_on_unkeyable", "_on_changing", "_warned", "_memo", "_last", "_aliases",
                 "_active", "_lock")

    def __init__(self, captured: Sequence[Tuple[str, str, Any]], ignore: Callable[[Any], bool],
                 on_unkeyable: Callable[[str, Exception], None],
                 function_name: str = "the function",
                 on_changing: Optional[Callable[[str], None]] = None) -> None:
        self.names = tuple(name for name, _, _ in captured)     # variable names
        self.labels = tuple(label for _, label, _ in captured)  # their key names, <closure>...
        self.cells = tuple(cell for _, _, cell in captured)
        self.function_name = function_name  # for the debug log of aliases
        self._codes = tuple(_text(b"s", label) for label in self.labels)
        self._ignore = ignore
        self._on_unkeyable = on_unkeyable
        self._on_changing = on_changing
        self._warned: set = set()
        count = len(self.cells)
        # Per cell, (value, entry, encoding) while the value is keyed for good (else None).
        self._memo: list = [None] * count
        # (test, result) of the last call when every value was keyed for good: the next call
        # with the same objects in every cell (``test()``) returns that result.
        self._last: Optional[Tuple[Callable[[], bool], tuple]] = None
        # Per cell, (the object, {digest after a run: digest before it}) or None.
        self._aliases: list = [None] * count
        # Per cell, {id(object): [object, digest before the first run, {thread id: runs}]}
        # for the objects that runs under way (recursive, or in several threads) started with.
        self._active: list = [{} for _ in range(count)]
        self._lock = threading.Lock()  # guards _active and the tables; reset after a fork

    def __len__(self) -> int:
        return len(self.cells)

    def current(self) -> Tuple[int, bytes, Tuple[Tuple[str, bytes], ...]]:
        """Raises :class:`CapturedValueChanging` (reported once per variable) when another
        thread kept changing a captured value while it was keyed: the call must then compute
        without the cache."""
        last = self._last
        if last is not None:
            try:
                if last[0]():
                    return last[1]
            except ValueError:  # a cell emptied by ``del``
                pass
        try:
            return self._refresh()
        except CapturedValueChanging as err:
            self._report_changing(err.name)
            raise

    def _refresh(self) -> Tuple[int, bytes, Tuple[Tuple[str, bytes], ...]]:
        values, entries, codes, stable = [], [], [], True
        memos = self._memo
        for index, cell in enumerate(self.cells):
            try:
                value = cell.cell_contents
            except ValueError:  # not assigned yet: no entry (and nothing to keep)
                values.append(_EMPTY)
                stable = False
                continue
            values.append(value)
            memo = memos[index]
            if memo is None or memo[0] is not value:
                if _keyed_for_good(value):
                    memo = memos[index] = self._entry(index, value)
                else:
                    memos[index] = None
                    stable = False
                    if (type(value) in _PLAIN and not self._active[index]
                            and self._aliases[index] is None):
                        # The common case, inlined: a dict or list no run ever changed.
                        try:
                            try:
                                digest = value_digest(value)
                            except UnkeyableValue:
                                raise
                            except Exception:  # changed by another thread meanwhile, mostly
                                digest = self._digest(index, value)
                            memo = (value, (self.labels[index], digest),
                                    self._codes[index] + _DIGEST_HEAD + digest)
                        except UnkeyableValue as err:
                            self._report(index, err)
                            memo = (value, None, b"")
                    else:
                        memo = self._changing_entry(index, value)
            if memo[1] is not None:
                entries.append(memo[1])
                codes.append(memo[2])
        result = (len(entries), b"".join(codes), tuple(entries))
        self._last = (_holding(self.cells, tuple(values)), result) if stable else None
        return result

    def _entry(self, index: int, value: Any) -> Tuple[Any, Optional[Tuple[str, bytes]], bytes]:
        """``(value, (label, digest) or None, its encoding)`` for the value of cell ``index``."""
        if type(value) not in _PLAIN and self._ignored(value):
            return value, None, b""
        try:
            digest = self._digest(index, value)
        except UnkeyableValue as err:
            self._report(index, err)
            return value, None, b""
        return value, (self.labels[index], digest), self._codes[index] + _DIGEST_HEAD + digest

    def _ignored(self, value: Any) -> bool:
        """``ignore(value)``, which reads ``__wrapped__``: an object whose ``__getattr__``
        raises is no layer of the function (and is keyed, or reported as unkeyable)."""
        try:
            return bool(self._ignore(value))
        except Exception:
            return False

    def _digest(self, index: int, value: Any) -> bytes:
        """``value_digest(value)`` for cell ``index``, read whole although another thread may
        be changing the value (see the class docstring): raises ``UnkeyableValue`` for a value
        that cannot be keyed (whatever keying it raised, RecursionError included) and
        :class:`CapturedValueChanging` when it never held still."""
        snapshot = value
        for _ in range(self.DIGEST_ATTEMPTS):
            try:
                return value_digest(snapshot)
            except UnkeyableValue:
                raise
            except RecursionError:
                raise UnkeyableValue("it is nested too deeply to be keyed") from None
            except Exception as err:
                if not _changed_meanwhile(err):
                    raise UnkeyableValue(
                        f"keying it raised {type(err).__name__}: {err}") from None
            # Changed by another thread meanwhile: key a copy, taken in one step (the items
            # inside it may still change, hence a few attempts).
            if type(value) in _SNAPSHOT:
                try:
                    snapshot = value.copy()
                except Exception:
                    snapshot = value
        raise CapturedValueChanging(self.names[index])

    def _report_changing(self, name: str) -> None:
        first = ("changing", name) not in self._warned
        if first:
            self._warned.add(("changing", name))
        log.debug("persistf on %s: another thread kept changing the captured variable %r "
                  "while it was keyed (%d attempts); this call computes without the cache",
                  self.function_name, name, self.DIGEST_ATTEMPTS)
        if first and self._on_changing is not None:
            self._on_changing(name)

    def _report(self, index: int, err: Exception) -> None:
        name = self.names[index]
        if name not in self._warned:
            self._warned.add(name)
            self._on_unkeyable(name, err)

    def _changing_entry(self, index: int, value: Any
                        ) -> Tuple[Any, Optional[Tuple[str, bytes]], bytes]:
        """:meth:`_entry` for a value whose digest may change (keyed at every call): the digest
        it had when a run under way began, else its own digest through the alias table."""
        if type(value) not in _PLAIN and self._ignored(value):
            return value, None, b""
        active = self._active[index]
        run = active.get(id(value)) if active else None
        digest = run[1] if run is not None and run[0] is value else self._canonical(index, value)
        if digest is _CHANGING:  # the run under way began while another thread changed it
            raise CapturedValueChanging(self.names[index])
        if digest is None:
            return value, None, b""
        return value, (self.labels[index], digest), self._codes[index] + _DIGEST_HEAD + digest

    def _canonical(self, index: int, value: Any) -> Optional[bytes]:
        """The digest ``value`` is keyed by: its own, or through the aliases the function's
        runs made for this object, the one it had before the first of those runs (None: no
        entry, the value cannot be keyed; raises :class:`CapturedValueChanging`)."""
        try:
            raw = self._digest(index, value)
        except UnkeyableValue as err:
            return self._through_aliases(index, value, _UNKEYABLE, err)
        return self._through_aliases(index, value, raw, None)

    def _through_aliases(self, index: int, value: Any, raw: Any, err: Optional[Exception]
                         ) -> Optional[bytes]:
        aliases = self._aliases[index]
        if aliases is not None:
            if aliases[0] is value:
                digest = _resolve(aliases[1], raw)
                if digest is not _UNKEYABLE:
                    return digest
            else:  # the variable was rebound: those aliases were another object's
                self._aliases[index] = None
        if err is not None:
            self._report(index, err)
            return None
        return raw

    # --- runs of the function -------------------------------------------------------------
    def begin_run(self) -> Tuple[Tuple[int, Any], ...]:
        """Note the captured mutable values as a run of the function starts; pass what this
        returns to :meth:`end_run` when it ends (also when it raises). Never raises: a value
        that another thread kept changing meanwhile is noted as such (calls during the run
        then compute without the cache, and the run's changes are not aliased)."""
        started = []
        for index, cell in enumerate(self.cells):
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            if _keyed_for_good(value) or (type(value) not in _PLAIN and self._ignored(value)):
                continue
            run = self._active[index].get(id(value))
            # Hashed again, not taken from the call's key: a NOCACHE run is not keyed first,
            # and a stale digest here would alias the caller's changes.
            try:
                digest = (run[1] if run is not None and run[0] is value
                          else self._canonical(index, value))
            except CapturedValueChanging:
                log.debug("persistf on %s: another thread kept changing the captured variable "
                          "%r as a run began; calls during the run compute without the cache",
                          self.function_name, self.names[index])
                digest = _CHANGING
            thread = threading.get_ident()
            with self._lock:
                run = self._active[index].get(id(value))
                if run is not None and run[0] is value:  # recursion, another thread: same key
                    run[2][thread] = run[2].get(thread, 0) + 1
                else:
                    self._active[index][id(value)] = [value, digest, {thread: 1}]
            started.append((index, value))
        return tuple(started)

    def end_run(self, started: Tuple[Tuple[int, Any], ...]) -> None:
        """After a run: alias what the last run under way on each value changed in it. Never
        raises for a value (its alias is then not made: a later call of that state computes
        again, never returns another state's result), since the run's result is returned."""
        thread = threading.get_ident()
        for index, value in started:
            with self._lock:
                run = self._active[index].get(id(value))
                if run is None or run[0] is not value or thread not in run[2]:
                    continue  # dropped in a forked child (after_fork)
                run[2][thread] -= 1
                if not run[2][thread]:
                    del run[2][thread]
                if run[2]:
                    continue
            try:
                if self.cells[index].cell_contents is value:  # rebound: never aliased
                    self._alias(index, value, run[1])
            except ValueError:  # emptied by ``del``
                pass
            except Exception:  # the run's result must be returned whatever happens here
                log.debug("persistf on %s: could not note what a run changed in the captured "
                          "variable %r; a later call of its new state computes again",
                          self.function_name, self.names[index], exc_info=True)
            finally:
                with self._lock:
                    if not run[2]:  # no run began again meanwhile
                        self._active[index].pop(id(value), None)

    def after_fork(self) -> None:
        """In a forked child: a new lock, and only the runs of the thread that forked (the
        others' never end there, and would key their values as before those runs for good)."""
        self._lock = threading.Lock()
        thread = threading.get_ident()
        for active in self._active:
            for key, run in list(active.items()):
                run[2] = {thread: run[2][thread]} if thread in run[2] else {}
                if not run[2]:
                    del active[key]

    def _alias(self, index: int, value: Any, before: Any) -> None:
        """Key ``value``'s state after a run as ``before``, its key when the run began."""
        if before is _CHANGING:  # no key to go back to: the new state is keyed by itself
            return
        try:
            after: Any = self._digest(index, value)
        except UnkeyableValue:
            after = _UNKEYABLE
        except CapturedValueChanging:  # changed on by another thread: keyed by itself later
            return
        with self._lock:
            aliases = self._aliases[index]
            table = aliases[1] if aliases is not None and aliases[0] is value else {}
            now = _resolve(table, after)
            if (None if now is _UNKEYABLE else now) == before:
                return  # unchanged, or already keyed so (no table for a value never changed)
            if not table:
                self._aliases[index] = (value, table)
            table.pop(after, None)  # (re)inserted last: the oldest aliases are dropped first
            full = len(table) >= self.MAX_ALIASES
            if full:
                del table[next(iter(table))]
            table[after] = before
        if full:
            log.debug("persistf on %s: more than %d states of the captured variable %r made "
                      "by its runs; dropping the oldest alias (a later call of that state "
                      "computes again)", self.function_name, self.MAX_ALIASES,
                      self.names[index])
        log.debug("persistf on %s: a run changed the captured variable %r in place; later "
                  "calls key its new state as the state before the run",
                  self.function_name, self.names[index])


_UNKEYABLE = object()  # the digest of a value that has none, in alias tables
_CHANGING = object()  # the digest a run began with, for a value another thread kept changing
_NO_ALIAS = object()


def _resolve(table: Dict[Any, Optional[bytes]], digest: Any) -> Any:
    """``digest`` through an alias table, to the first state of its chain (tables are acyclic:
    every alias points at a digest that was no alias when it was made)."""
    seen = 0
    while True:
        target = table.get(digest, _NO_ALIAS)
        if target is _NO_ALIAS or seen > len(table):
            return digest
        digest, seen = target, seen + 1


class _Slot:
    """Stands for input ``index`` (of ``args + tuple(kwargs.values())``) while a call shape is
    bound once, to learn which input or default feeds each parameter."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _encode_one(value: Any):
    """The canonical encoding of one top-level argument value (raises ``UnkeyableValue``)."""
    cls = type(value)
    if cls is str:
        encoded = _STR_CODES.get(value) if len(value) <= _MEMO_STR_LENGTH else None
        return encoded or _str_code(value)
    if cls is int:
        return _int_code(value)
    out = bytearray()
    _encode(value, out, set())
    return out


# What a compiled encoder writes for a value of a speculated type (see _compile_encoder); each
# expression is _encode's branch for that type, and encodings are never empty (so ``or`` works).
_SPECIALISED = {
    str: "(_str_get(v) if len(v) <= _MEMO_STR_LENGTH else None) or _str_code(v)",
    int: "_int_code(v)",
    float: "_NAN if v != v else b'd' + _pack_float(v)",
    bool: "b't' if v else b'f'",
    type(None): "b'N'",
}
_ENCODER_GLOBALS = {
    "_str_get": _STR_CODES.get, "_str_code": _str_code, "_MEMO_STR_LENGTH": _MEMO_STR_LENGTH,
    "_int_code": _int_code, "_NAN": _NAN, "_pack_float": _FLOAT.pack, "_encode_one": _encode_one,
    "str": str, "int": int, "float": float, "bool": bool, "NoneType": type(None),
}
_MAX_COMPILED_ARGUMENTS = 32


def _compile_encoder(header: bytes, codes: Tuple[bytes, ...], indices: Tuple[int, ...],
                     suffix: bytes, types: Sequence[type],
                     captured: Optional["CapturedValues"] = None,
                     headers: Tuple[bytes, ...] = ()) -> Callable[[tuple], bytes]:
    """A function ``inputs -> the bytes call_digest hashes``, for one call shape.

    Unrolled, with the type each value had in the first call tested first (one comparison
    instead of a chain); a value of another type goes through :func:`_encode_one`, so the
    bytes never depend on the guess, only the speed does. This roughly halves the cost of
    keying a call of a few scalar arguments, which is a third of a hit.

    With ``captured`` (a closure), the entries of its captured variables are read at each
    call: the header (which counts them) is ``headers[number of entries]`` and they replace
    the constant ``suffix``.
    """
    namespace = dict(_ENCODER_GLOBALS, header=header, suffix=suffix)
    lines = ["def encode(inputs):"]
    parts = ["header"]
    if captured is not None:
        namespace.update(_captured=captured.current, headers=headers)
        lines.append("    k = _captured()")
        parts = ["headers[k[0]]"]
    for position, (code, index, cls) in enumerate(zip(codes, indices, types)):
        namespace[f"c{position}"] = code
        lines.append(f"    v = inputs[{index}]")
        expression = _SPECIALISED.get(cls)
        if expression is None:
            lines.append(f"    e{position} = _encode_one(v)")
        else:
            name = "NoneType" if cls is type(None) else cls.__name__
            lines.append(f"    e{position} = ({expression}) if type(v) is {name} "
                         "else _encode_one(v)")
        parts += [f"c{position}", f"e{position}"]
    parts.append("suffix" if captured is None else "k[1]")
    lines.append(f"    return b''.join(({', '.join(parts)},))")
    exec(compile("\n".join(lines), "<persist_to_disk call encoder>", "exec"), namespace)
    return namespace["encode"]


class _Plan:
    """How calls of one shape are keyed: see :class:`CallKeyer`."""

    __slots__ = ("names", "codes", "indices", "constants", "header", "suffix", "encode",
                 "captured", "headers")

    def __init__(self, names, codes, indices, constants, header, suffix, captured=None,
                 headers=()) -> None:
        self.names: Tuple[str, ...] = names      # the key's parameter names, sorted
        self.codes: Tuple[bytes, ...] = codes    # their encodings
        self.indices: Tuple[int, ...] = indices  # where each value is in inputs + constants
        self.constants: tuple = constants        # defaults, appended to the inputs
        self.header = header                     # what call_digest writes before the names
        self.suffix = suffix                     # encoded extra entries (captured variables)
        self.captured: Optional[CapturedValues] = captured  # or entries read at each call,
        self.headers: Tuple[bytes, ...] = headers           # with a header per entry count
        self.encode: Optional[Callable[[tuple], bytes]] = None  # compiled at the first call

    def values(self, inputs: tuple) -> tuple:
        indices = self.indices
        if len(indices) > 1:
            return operator.itemgetter(*indices)(inputs)
        return tuple(inputs[index] for index in indices)

    def slow_encode(self, inputs: tuple) -> bytes:
        captured = self.captured.current() if self.captured is not None else None
        out = bytearray(self.header if captured is None else self.headers[captured[0]])
        for code, index in zip(self.codes, self.indices):
            out += code
            _encode(inputs[index], out, set())
        out += self.suffix if captured is None else captured[1]
        return out


class CallKeyer:
    """The digest of a call without building a bound dict and a sorted key tuple per call.

    Which input or default feeds each parameter depends only on the call's *shape* (how many
    positional arguments, which keyword names in which order), never on the values. So the
    first call of each shape is bound once, with placeholders, by the same ``bind`` every call
    goes through; the result (sorted names, their encodings, where each value comes from) is
    kept, and later calls of that shape pick their values by index and encode them straight
    into the digest. The bytes hashed are exactly those :func:`call_digest` hashes for the same
    call, so both paths name the same records (the tests compare them call by call).

    ``extra``: key entries appended to every call's, constant (a tuple of ``(name, value)``)
    or a closure's :class:`CapturedValues`, read at each call (plain functions pay nothing for
    it).

    ``digest`` returns ``None`` where the general path must run instead: normalisations that
    depend on values (``groupby``, ``expand_dict_kwargs``: pass ``plannable=False``), extra
    ``*args``, calls Python would reject, and values that cannot be keyed (the general path
    raises the error that names the argument).

    ``hasher``: the blake2b the digest starts from (:func:`salted_hasher`), as for
    :func:`call_digest`.
    """

    MAX_SHAPES = 64  # functions taking **kwargs can be called with endless keyword sets

    def __init__(self, bind: Callable[[tuple, dict], Dict[str, Any]], skip: Sequence[str] = (),
                 extra: Union[Tuple[Tuple[str, Any], ...], "CapturedValues"] = (),
                 plannable: bool = True, hasher: Optional["hashlib._Hash"] = None) -> None:
        self._hasher = _HASHER if hasher is None else hasher
        self._bind = bind
        self._skip = tuple(skip)
        self._captured = extra if isinstance(extra, CapturedValues) else None
        self._extra = () if self._captured is not None else tuple(extra)
        self._plannable = plannable
        self._plans: Dict[Any, Any] = {}

    def digest(self, args: tuple, kwargs: dict) -> Optional[bytes]:
        if kwargs:
            shape = (len(args), *kwargs)
            plan = self._plans.get(shape)
            if plan is None:
                if len(self._plans) >= self.MAX_SHAPES:
                    return None
                plan = self._learn(shape, len(args), tuple(kwargs))
            if not plan:
                return None
            inputs = args + tuple(kwargs.values()) + plan.constants
        else:
            plan = self._plans.get(len(args))
            if plan is None:
                if len(self._plans) >= self.MAX_SHAPES:
                    return None
                plan = self._learn(len(args), len(args), ())
            if not plan:
                return None
            inputs = args + plan.constants
        encode = plan.encode
        try:
            if encode is None:
                encode = _compiled(plan, inputs)
            data = encode(inputs)
        except (UnkeyableValue, RecursionError):
            return None
        hasher = self._hasher.copy()
        hasher.update(data)
        return hasher.digest()

    def key(self, args: tuple, kwargs: dict) -> Tuple[Tuple[str, Any], ...]:
        """The key tuple of a call whose ``digest`` was not None (what the miss path stores)."""
        if kwargs:
            shape = (len(args), *kwargs)
            inputs = args + tuple(kwargs.values())
        else:
            shape = len(args)
            inputs = args
        plan = self._plans.get(shape) or self._learn(shape, len(args), tuple(kwargs))
        return tuple(zip(plan.names, plan.values(inputs + plan.constants)))

    def _learn(self, shape: Any, n_args: int, keywords: Tuple[str, ...]):
        plan = self._plan(n_args, keywords) if self._plannable else False
        if len(self._plans) < self.MAX_SHAPES:
            self._plans[shape] = plan
        return plan

    def _plan(self, n_args: int, keywords: Tuple[str, ...]):
        slots = [_Slot(index) for index in range(n_args + len(keywords))]
        try:
            bound = self._bind(tuple(slots[:n_args]), dict(zip(keywords, slots[n_args:])))
        except Exception:  # a call Python rejects: the general path raises its own error
            return False
        for name in self._skip:
            bound.pop(name, None)
        names = tuple(sorted(bound))
        indices, constants = [], []
        for name in names:
            value = bound[name]
            if type(value) is _Slot:
                indices.append(value.index)
            elif type(value) is tuple and any(type(item) is _Slot for item in value):
                return False  # extra *args: a slice of the call, not one input
            else:  # a default: the very object the general path would key
                indices.append(len(slots) + len(constants))
                constants.append(value)
        suffix = bytearray()
        for label, value in self._extra:
            suffix += _text(b"s", label)
            _encode(value, suffix, set())
        header = b"(" + _length(0) + b"(" + _length(len(names) + len(self._extra))
        headers: Tuple[bytes, ...] = ()
        if self._captured is not None:
            headers = tuple(b"(" + _length(0) + b"(" + _length(len(names) + count)
                            for count in range(len(self._captured) + 1))
        return _Plan(names, tuple(_text(b"s", name) for name in names), tuple(indices),
                     tuple(constants), header, bytes(suffix), self._captured, headers)


def _compiled(plan: _Plan, inputs: tuple) -> Callable[[tuple], bytes]:
    """Give ``plan`` its encoder, speculating on the types of this first call's values."""
    if len(plan.indices) > _MAX_COMPILED_ARGUMENTS:
        plan.encode = plan.slow_encode
    else:
        plan.encode = _compile_encoder(plan.header, plan.codes, plan.indices, plan.suffix,
                                       [type(inputs[index]) for index in plan.indices],
                                       plan.captured, plan.headers)
    return plan.encode


def bucket_of(digest: bytes, hashsize: int) -> int:
    """The hash bucket of a digest: which lock (scope ``call``) and key prefix it uses.

    Duplicated inline in ``call.PersistedFunction.fast_path`` (the hit path): change both."""
    return int.from_bytes(digest[:8], "big") % hashsize
