"""Code fingerprints: which edits of a cached function count as a change of its code.

:func:`code_fingerprint` reduces a function and the project code it uses to 32 hex digits. It
is computed from the parsed code (the AST), never from the source text, so that edits that do
not change what the code does leave it alone, and edits of the code it calls in the same project
change it. The same code gives the same fingerprint in every process, under every hash seed and
on every Python from 3.9 to 3.13 (its own encoding of the AST, not ``ast.dump`` or bytecode).

What counts
-----------
* The function's own definition: its body, its parameters with their default values and
  annotations, and the decorators above it, except ``@persistf(...)`` (its options are not
  code; ``version=`` is recorded next to the fingerprint).
* The functions and classes it uses that are defined in the project: in a file under the project
  folder that is not under ``site-packages``/``dist-packages``, the Python installation or a
  virtual environment, and is not persist_to_disk's own. They are found by name through the
  globals of the module that defines the user: a name it reads (``helper(x)``), an attribute of
  a project module (``helpers.fn(x)``, ``pkg.sub.fn(x)``), a name in its decorators or default
  values, a function a closure captured, a method it reads on ``self`` or ``cls`` (looked up on
  its class and the classes that class derives from), the class of a project object held in a
  global. A helper counts by its definition (a class by its whole body, every method included;
  a class defined in several places of its file, both branches of an ``if``, by the definition
  its methods come from), and what it uses counts in turn, up to ``depth`` steps from the
  function (default 3). A helper reached through a decorator that sets ``__wrapped__``
  (``functools.wraps``, ``@persistf``) or a bound method counts by the function inside; a
  ``functools.partial`` by its function and its arguments (constants by value, functions and
  classes followed); a project decorator counts by its own definition.
* The module globals read by the function and by each helper that counts (and attributes of
  project modules, ``consts.BASE``), whatever their type (numbers, strings, dicts, lists,
  paths, tuples of functions, objects): a global assigned at the top level of its module (also
  inside top-level ``if``/``try``/``with`` blocks) and bound by no import there counts by the
  code of those assignments (``OFFSET = 1``, ``PARAMS = {"lr": 0.1}``,
  ``HOME = os.environ["HOME"]``), and the names that code reads count in turn like the
  function's own: ``SCALE = consts.BASE * 2`` counts ``consts.BASE``'s assignment,
  ``N = len(NAMES)`` the list's, ``K = _k()`` and ``STEPS = (inc, dbl)`` the functions'.
  Not the value: a value computed when the module is imported (a path, a host name, an
  environment variable) is the same code on every machine and in every checkout, so machines
  sharing a cache agree on the fingerprint. A global with no such assignment, or one an import
  binds too (``from x import NAME``, a ``try``/``except ImportError`` fallback, ``from x import
  *`` and then ``LR = LR * 2``), set through ``globals()``, a class attribute a method reads on
  ``self``: by name and value when its value is None, a bool, int, float, complex, str or
  bytes, or a tuple or frozenset of those (one longer than 10 000 characters by its type and
  length only), and followed when it is a function or class.
* The code that runs, when a file was edited after this process started (see below).

What does not count
-------------------
* Comments, docstrings, blank lines, indentation, line breaks, spacing, redundant parentheses,
  quotes (``'a'`` or ``"a"``): nothing that leaves the parsed code the same.
* The function's own name (it names the cache folder already), where it is in its file, the
  order of imports and of definitions at module level, ``@persistf``'s options.
* Code outside the project: the standard library and installed packages (record their versions
  with ``version=`` when they matter), and persist_to_disk itself.
* Values of globals with no assignment in the project that are not constants (a dict or an
  array imported from a module, an object made elsewhere): they are data, not code; nor
  ``__file__``, ``__name__`` and other dunder names (where a module is, not what it does), nor
  the conditions of the ``if`` blocks around an assignment (the assignments in every branch
  count). Values a closure captured are not either.
* Names imported inside a function's body (``from helpers import fn`` within the ``def``): at the
  first call the module may not be imported yet, and the fingerprint must not depend on that.
  Import helpers at module level for them to count. Names used only in annotations are not
  followed either (the annotations themselves are part of the definition).
* Code reached only at run time: ``getattr(obj, name)()``, a function passed as an argument, a
  method of an object that is passed in, a function inside a wrapper that does not set
  ``__wrapped__``.
* Helpers more than ``depth`` steps away.

Where the source cannot be read
-------------------------------
Source is read from the file the code object names (and from :mod:`linecache`, where IPython
and Jupyter keep notebook cells), so functions of scripts run as ``__main__`` and of notebooks
are fingerprinted from their source like any other; the script's or notebook's own helpers
count even when it is outside the project folder. Where there is no source (``python -c``,
``exec``, a deleted file, compiled-only modules), the code object stands in: its bytecode,
names, constants (nested code objects included) and default values, without file names and line
numbers. That fingerprint is stable across processes and hash seeds of one Python minor version,
but differs between Python versions (bytecode does), and docstring edits may count.

Scripts run as ``__main__`` are also ``__mp_main__`` (in multiprocessing spawn workers): both
are the script, with its own helpers, and give the same fingerprint.

Files are read when the fingerprint is computed (on the first call, not at import), and the
fingerprint must describe the code that runs. A module imported before its file was edited
(and not reloaded) runs the old code: a file modified after this process started
(:data:`PROCESS_START_NS`, from ``/proc/self/stat`` on Linux, else the time persist_to_disk was
imported) is compiled again, whole, and a function or class counts by its source only where that
gives the code it runs (the same bytecode, names and constants at the same line, the same
literal default values); else its code object counts (for a class, its methods'), as where there
is no source. A global assigned in such a file counts by its assignment only when every function
and class of the module still compiles to the code it runs and, for ``NAME = <literal>``, the
literal is the value; else by its value alone (when a constant). So a notebook kernel or a long
job that imports a module after an edit fingerprints it as every fresh process does; one that
imported it before records the old code it runs. Not seen: an edit, after the import, of only a
decorator's arguments, of a default value that is not a literal, or of an assignment that is not
a literal; and ``importlib.reload`` or ``%autoreload`` after the function's first call in a
process (the fingerprint is computed once per process: restart it to record the new code).

:func:`code_fingerprint` never raises: what it cannot read falls back to the code object, and
anything else to a substitute made of the function's qualified name (logged at DEBUG level on
the ``persist_to_disk`` logger).

Records carry a *code tag* (:func:`code_tag`): the fingerprint and, when the function has a
``version``, ``|`` and :func:`version_label`.
"""

import __future__

import ast
import dis
import functools
import io
import json
import linecache
import logging
import os
import re
import stat
import sys
import time
import tokenize
import types
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

# keying.py's _blake2b, imported again here: this module imports nothing of the package, so
# that other Pythons can load it alone (test_code_fingerprint's 3.9-3.13 comparison)
try:  # (hashlib.blake2b is this class; hashlib itself also loads OpenSSL, ~3 ms)
    from _blake2 import blake2b as _blake2b
except ImportError:
    from hashlib import blake2b as _blake2b

log = logging.getLogger("persist_to_disk")

#: Prefix of everything hashed: a change of the encoding must change every fingerprint.
_FORMAT = b"ptd-code-fingerprint-1\n"
#: Longest encoded constant counted by value (longer ones count by type and length).
MAX_CONSTANT_CHARS = 10_000
#: Longest code tag stored in a record.
MAX_TAG_CHARS = 200
#: Longest version label.
MAX_VERSION_LABEL_CHARS = 100
#: Fingerprint length in hex digits.
FINGERPRINT_CHARS = 32

_MISSING = object()


def _process_start_ns() -> int:
    """When this process started, in ``time.time_ns()`` nanoseconds, never later than it did:
    a source file modified after it may have been edited after its module was imported.

    On Linux: the start of the process in clock ticks since boot (``/proc/self/stat``, rounded
    down to a tick, and one more tick taken off) plus the boot time (``CLOCK_BOOTTIME`` read
    against the wall clock, else ``btime`` of ``/proc/stat``, whole seconds rounded down). Else
    the time this module was imported (persist_to_disk is imported before the first call)."""
    now = time.time_ns()
    try:
        with open("/proc/self/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()  # (the name may hold spaces)
        ticks = int(fields[19])  # (field 22, starttime; fields[0] is field 3)
        hertz = os.sysconf("SC_CLK_TCK")
        try:
            boot = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        except (AttributeError, OSError):
            with open("/proc/stat", "rb") as handle:
                boot = next(int(line.split()[1]) for line in handle
                            if line.startswith(b"btime ")) * 1_000_000_000
        start = boot + (ticks - 1) * 1_000_000_000 // hertz
        if 0 < start <= now:
            return start
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return now


#: See :func:`_process_start_ns`.
PROCESS_START_NS = _process_start_ns()


def code_fingerprint(func: Callable, project_root: str, depth: int = 3) -> str:
    """32 lowercase hex digits naming the code of ``func`` and of the project code it uses.

    ``func`` is looked at through its ``__wrapped__`` chain (the innermost function is the
    one whose code counts). ``project_root`` is the project folder: functions and classes
    defined in files below it count as helpers, to ``depth`` steps from ``func`` (0: the
    function alone). See the module documentation for what counts and what does not. Never
    raises: a fingerprint is always returned, for any callable.
    """
    try:
        return _Fingerprinter(project_root, max(0, int(depth))).fingerprint(func)
    except Exception as err:  # (RecursionError included: a deeply nested expression)
        log.debug("code fingerprint of %s: %s: %s; using its code object alone",
                  _name_of(func), type(err).__name__, err)
    try:
        target = _target(func)
        if isinstance(target, types.FunctionType):
            return _digest([_function_code_entry("", target)])
    except Exception as err:
        log.debug("code fingerprint of %s from its code object: %s: %s; using its name",
                  _name_of(func), type(err).__name__, err)
    return _digest(["unreadable:" + ascii(_name_of(func))])


def _name_of(func: Any) -> str:
    """``module.qualname`` of ``func`` (of its type when it has none), never raising."""
    try:
        return f"{func.__module__}.{func.__qualname__}"
    except Exception:
        return f"{type(func).__module__}.{type(func).__qualname__}"


def code_tag(fingerprint: str, version_label: Optional[str]) -> str:
    """The ASCII text records carry about the code that made them: ``fingerprint``, then
    ``|`` and ``version_label`` when there is one (cut to keep the tag within 200 characters).
    ``""`` when there is neither. The fingerprint never holds ``|``, so :func:`parse_code_tag`
    splits at the first one."""
    fingerprint = _ascii_text(fingerprint or "").replace("|", "")[:MAX_TAG_CHARS]
    if version_label is None:
        return fingerprint
    room = MAX_TAG_CHARS - len(fingerprint) - 1
    return f"{fingerprint}|{_ascii_text(version_label)[:max(room, 0)]}"


def parse_code_tag(tag: str) -> Tuple[str, Optional[str]]:
    """``(fingerprint, version label or None)`` from a :func:`code_tag` (``""`` gives
    ``("", None)``: a record of unknown code)."""
    if not tag:
        return "", None
    fingerprint, bar, label = tag.partition("|")
    return fingerprint, (label if bar else None)


def version_label(version: Any) -> str:
    """How a ``version`` value reads in records and ``ptd stats``: its ``ascii()``, at most
    100 characters. The same in every process: set and frozenset elements are sorted,
    and the memory addresses of default reprs (``<Obj object at 0x7f...>``) are dropped.
    A longer text keeps its first 88 characters, then ``...#`` and 8 hex digits of a hash of
    the whole text: two versions that begin alike still get different labels."""
    try:
        text = _stable_repr(version)
    except Exception:  # (a repr that raises)
        text = f"<{type(version).__qualname__}>"
    text = _ascii_text(re.sub(_ADDRESS, "", text))
    if len(text) > MAX_VERSION_LABEL_CHARS:
        digest = _blake2b(text.encode("ascii"), digest_size=4).hexdigest()
        text = text[:MAX_VERSION_LABEL_CHARS - 12] + "...#" + digest
    return text


_ADDRESS = r" at 0x[0-9A-Fa-f]+"  # (compiled by re when first used: ~0.1 ms off the import)


def _ascii_text(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _stable_repr(value: Any, depth: int = 0) -> str:
    """``ascii(value)`` with the elements of sets sorted (their order depends on the hash
    seed), in containers too."""
    if depth > 20:
        return "..."
    kind = type(value)
    if kind in (set, frozenset):
        items = sorted(_stable_repr(item, depth + 1) for item in value)
        inner = "{" + ", ".join(items) + "}" if items else ""
        return f"{kind.__name__}({inner})" if kind is frozenset or not items else inner
    if kind is tuple:
        items = [_stable_repr(item, depth + 1) for item in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if kind is list:
        return "[" + ", ".join(_stable_repr(item, depth + 1) for item in value) + "]"
    if kind is dict:
        return "{" + ", ".join(f"{_stable_repr(k, depth + 1)}: {_stable_repr(v, depth + 1)}"
                               for k, v in value.items()) + "}"
    return ascii(value)


# --- hashing ----------------------------------------------------------------------------------


def _digest(entries: Iterable[str]) -> str:
    """The fingerprint of a collection of entries: sorted, so that the order they were found
    in (the order of definitions and imports in a module) does not count."""
    hasher = _blake2b(_FORMAT, digest_size=FINGERPRINT_CHARS // 2)
    for entry in sorted(set(entries)):
        data = entry.encode("ascii", "backslashreplace")
        hasher.update(b"%d:" % len(data))
        hasher.update(data)
    return hasher.hexdigest()


# --- constants --------------------------------------------------------------------------------

_SCALARS = (bool, int, float, complex, str, bytes)


def _constant_text(value: Any) -> Optional[str]:
    """A deterministic text of a module constant (None when ``value`` is not one: only exact
    None, bool, int, float, complex, str, bytes, and tuples and frozensets of those count)."""
    budget = [MAX_CONSTANT_CHARS]
    try:
        return _constant_part(value, budget, 0)
    except _TooLarge:
        size = len(value) if isinstance(value, (str, bytes, tuple, frozenset)) else 0
        return f"{type(value).__name__}:large:{size}"


class _TooLarge(Exception):
    pass


def _constant_part(value: Any, budget: List[int], depth: int) -> Optional[str]:
    kind = type(value)
    if value is None:
        text = "None"
    elif kind is int:  # (hex: no limit on the number of digits)
        text = "int:" + hex(value)
    elif kind in _SCALARS:
        if kind in (str, bytes) and len(value) > budget[0]:
            raise _TooLarge
        text = kind.__name__ + ":" + ascii(value)
    elif kind is tuple or kind is frozenset:
        if depth > 50:
            raise _TooLarge
        parts = []
        for item in value:
            part = _constant_part(item, budget, depth + 1)
            if part is None:
                return None
            parts.append(part)
        if kind is frozenset:
            parts.sort()  # (iteration order follows the hash seed)
        text = kind.__name__ + "(" + ",".join(parts) + ")"
    else:
        return None
    budget[0] -= len(text)
    if budget[0] < 0:
        raise _TooLarge
    return text


# --- the AST encoding -------------------------------------------------------------------------

#: Fields that never count: the load/store context, type comments, the ``u`` prefix of strings.
_SKIPPED_FIELDS = frozenset({"ctx", "type_comment", "kind"})
_DOCSTRING_HOLDERS = frozenset({ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef})
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_FIELDS: Dict[type, Tuple[str, ...]] = {}


def _fields_of(kind: type) -> Tuple[str, ...]:
    fields = _FIELDS.get(kind)
    if fields is None:
        fields = _FIELDS[kind] = tuple(f for f in kind._fields if f not in _SKIPPED_FIELDS)
    return fields


def _without_docstring(body: List[ast.stmt]) -> List[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:]
    return body


def _fstring_parts(values: List[ast.expr]) -> List[ast.expr]:
    """The parts of an f-string with its literal text joined and empty literals dropped
    (Python 3.12.0/3.12.1 end a format spec with an empty one, other versions do not)."""
    parts: List[ast.expr] = []
    for value in values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            if not value.value:
                continue
            if parts and isinstance(parts[-1], ast.Constant):
                value = ast.Constant(value=parts.pop().value + value.value)
        parts.append(value)
    return parts


def _encode_node(node: ast.AST, keep_decorator: Callable[[ast.expr], bool],
                 top: bool = True) -> str:
    """Our own canonical text of an AST: node class names and fields, without positions,
    contexts, type comments, docstrings, fields that are None or empty (so the fields newer
    Pythons added, empty in older code, change nothing), the top definition's own name, and
    the decorators ``keep_decorator`` rejects."""
    out: List[str] = []
    _encode_into(node, out, keep_decorator, top)
    return "".join(out)


def _encode_into(node: ast.AST, out: List[str], keep_decorator: Callable[[ast.expr], bool],
                 top: bool = False) -> None:
    kind = node.__class__
    append = out.append
    append(kind.__name__)
    append("(")
    if kind is ast.Constant:
        value = node.value
        append(type(value).__name__)
        append(":")
        append(hex(value) if type(value) is int else ascii(value))
    else:
        docstring_holder = kind in _DOCSTRING_HOLDERS
        for name in _FIELDS.get(kind) or _fields_of(kind):
            if top and name == "name":
                continue
            value = getattr(node, name, None)
            if value is None:
                continue
            if docstring_holder:
                if name == "body":
                    value = _without_docstring(value)
                elif name == "decorator_list":
                    value = [item for item in value if keep_decorator(item)]
            elif kind is ast.JoinedStr:
                value = _fstring_parts(value)
            if value.__class__ is list:
                if not value:
                    continue
                append(name)
                append("[")
                for item in value:
                    if isinstance(item, ast.AST):
                        _encode_into(item, out, keep_decorator)
                    else:  # (None in kw_defaults, names in Global/Nonlocal)
                        append(ascii(item))
                    append(",")
                append("]")
            else:
                append(name)
                append("=")
                if isinstance(value, ast.AST):
                    _encode_into(value, out, keep_decorator)
                else:
                    append(ascii(value))
            append(";")
    append(")")


def _expression_names(expressions: Iterable[Optional[ast.AST]]
                      ) -> Tuple[Set[str], Set[Tuple[str, ...]]]:
    """Global-looking names read in ``expressions`` (decorators, default values: evaluated in
    the enclosing scope) and the attribute chains read on them (``helpers.fn``)."""
    names: Set[str] = set()
    chains: Set[Tuple[str, ...]] = set()
    for expression in expressions:
        if expression is None:
            continue
        for node in ast.walk(expression):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                chain = _attribute_chain(node)
                if chain is not None:
                    chains.add(chain)
    return names, chains


def _attribute_chain(node: ast.AST) -> Optional[Tuple[str, ...]]:
    """``("a", "b", "c")`` for the expression ``a.b.c``, None for anything else."""
    parts: List[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return tuple(reversed(parts))


# --- reading the names code objects use -------------------------------------------------------

_OPS = dis.opmap
_EXTENDED_ARG = dis.EXTENDED_ARG
_CACHE = _OPS.get("CACHE", -1)
_LOAD_GLOBAL = _OPS["LOAD_GLOBAL"]
_LOAD_NAME_OPS = frozenset(_OPS[name] for name in ("LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS")
                           if _OPS.get(name, 256) < 256)
_LOAD_ATTR = _OPS["LOAD_ATTR"]
_LOAD_METHOD = _OPS.get("LOAD_METHOD", 256)  # (up to 3.11; a pseudo instruction later)
_LOAD_SUPER_ATTR = _OPS.get("LOAD_SUPER_ATTR", 256)
_STORE_NAME = _OPS["STORE_NAME"]
_NEW_GLOBAL_ARG = sys.version_info >= (3, 11)  # LOAD_GLOBAL's lowest bit: push a NULL
_NEW_ATTR_ARG = sys.version_info >= (3, 12)  # LOAD_ATTR's lowest bit: load a method


class _CodeNames:
    """What a code object (and those nested in it) reads by name: ``globals`` (names read from
    the module), ``chains`` (attribute chains read on those: ``("helpers", "fn")``) and
    ``attributes`` (every attribute name read, for methods looked up on ``self``)."""
    __slots__ = ("globals", "chains", "attributes")

    def __init__(self) -> None:
        self.globals: Set[str] = set()
        self.chains: Set[Tuple[str, ...]] = set()
        self.attributes: Set[str] = set()


def _code_names(code: types.CodeType, into: Optional[_CodeNames] = None) -> _CodeNames:
    """Read the instructions of ``code`` and of the code objects nested in it (comprehensions,
    lambdas, nested functions and classes) directly from the bytecode (``dis`` would cost ten
    times more). In a class body (or a module), names it stores itself are not globals."""
    into = into if into is not None else _CodeNames()
    raw, names = code.co_code, code.co_names
    loaded: Set[str] = set()  # (LOAD_NAME: a global unless this code stores it too)
    stored: Set[str] = set()
    loaded_chains: Set[Tuple[str, ...]] = set()
    chain: Optional[List[str]] = None
    chains = into.chains
    argument = 0
    for offset in range(0, len(raw), 2):
        op = raw[offset]
        argument |= raw[offset + 1]
        if op == _EXTENDED_ARG:
            argument <<= 8
            continue
        if op == _CACHE:
            argument = 0
            continue
        if op == _LOAD_GLOBAL:
            name = names[argument >> 1 if _NEW_GLOBAL_ARG else argument]
            into.globals.add(name)
            chain, chains = [name], into.chains
        elif op in _LOAD_NAME_OPS:
            name = names[argument]
            loaded.add(name)
            chain, chains = [name], loaded_chains
        elif op in (_LOAD_ATTR, _LOAD_METHOD):
            name = names[argument >> 1 if (_NEW_ATTR_ARG and op == _LOAD_ATTR) else argument]
            into.attributes.add(name)
            if chain is not None:
                chain.append(name)
                chains.add(tuple(chain))
        elif op == _LOAD_SUPER_ATTR:
            into.attributes.add(names[argument >> 2])
            chain = None
        else:
            if op == _STORE_NAME:
                stored.add(names[argument])
            chain = None
        argument = 0
    into.globals.update(loaded - stored)
    into.chains.update(c for c in loaded_chains if c[0] not in stored)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_names(const, into)
    return into


def _code_text(code: types.CodeType, docstring: Optional[str] = None) -> str:
    """The stand-in for code without source: bytecode, argument counts, flags, names and
    constants (nested code objects encoded the same way), without the file name, the line
    numbers or the code's own name. Python-version specific (the bytecode is)."""
    consts = []
    for index, const in enumerate(code.co_consts):
        if isinstance(const, types.CodeType):
            consts.append(_code_text(const))
        elif index == 0 and docstring is not None and const == docstring:
            consts.append("<docstring>")
        else:
            text = _constant_text(const)
            consts.append(text if text is not None else type(const).__name__)
    parts = [str(getattr(code, attribute, 0)) for attribute in
             ("co_argcount", "co_posonlyargcount", "co_kwonlyargcount", "co_flags")]
    parts += [code.co_code.hex(), ascii(code.co_names), ascii(code.co_varnames),
              ascii(code.co_freevars), ascii(code.co_cellvars), "[" + ",".join(consts) + "]"]
    return "code(" + ";".join(parts) + ")"


def _value_text(value: Any) -> str:
    text = _constant_text(value)
    return text if text is not None else "<" + type(value).__qualname__ + ">"


def _function_code_entry(label: str, func: types.FunctionType) -> str:
    """A function's entry from its code object and default values (no source)."""
    doc = func.__doc__ if isinstance(func.__doc__, str) else None
    defaults = [_value_text(value) for value in (func.__defaults__ or ())]
    kwdefaults = [f"{name}={_value_text(value)}"
                  for name, value in sorted((func.__kwdefaults__ or {}).items())]
    return (f"function-code:{label}:{_code_text(func.__code__, doc)}"
            f":defaults({','.join(defaults)}):kwdefaults({','.join(kwdefaults)})")


# --- sources ----------------------------------------------------------------------------------


class _Source:
    """One parsed source: its lines, and (parsed once, when first needed) the whole file with
    its definitions indexed; plus the entries already encoded from it."""
    __slots__ = ("filename", "_lines", "_tree", "_defs", "_classes", "_lambdas", "encoded",
                 "snippets", "stale", "status", "memo")

    def __init__(self, filename: str, lines: Optional[List[str]], mtime_ns: Optional[int] = None,
                 status: Optional[os.stat_result] = None) -> None:
        """``lines`` None: read from the file ``filename`` when first needed (with a memo,
        a later process needs no line of an unchanged file: ~0.1 ms of a first call)."""
        self.filename = filename
        self._lines = lines
        #: its ``os.stat`` when it was read from disk (what its persistent memo is checked by)
        self.status = status
        self.memo: Optional["_FileMemo"] = None
        #: Modified after this process started: its module may have been imported before the
        #: edit (and runs the old code), so what is read from it is checked against the code
        #: that runs (:meth:`_Fingerprinter.trusted`).
        self.stale = mtime_ns is not None and mtime_ns > PROCESS_START_NS
        self._tree: Any = None
        self._defs: Optional[Dict[Tuple[str, int], ast.AST]] = None
        self._classes: Optional[Dict[str, List[ast.ClassDef]]] = None
        self._lambdas: Optional[Dict[int, List[ast.Lambda]]] = None
        self.encoded: Dict[Any, Any] = {}
        self.snippets: Dict[Tuple[str, int], Optional[ast.AST]] = {}

    @property
    def lines(self) -> List[str]:
        lines = self._lines
        if lines is None:
            lines, status = _read_lines(self.filename)
            known = self.status
            if known is not None and (status is None or status.st_mtime_ns != known.st_mtime_ns
                                      or status.st_size != known.st_size):
                self.stale = True  # (changed since it was looked at: check what is read)
            self._lines = lines
        return lines

    def tree(self) -> Optional[ast.Module]:
        if self._tree is None:
            try:
                self._tree = ast.parse("".join(self.lines), self.filename)
            except (SyntaxError, ValueError, MemoryError) as err:
                log.debug("code fingerprint: cannot parse %s (%s)", self.filename, err)
                self._tree = False
        return self._tree or None

    def _index(self) -> None:
        defs: Dict[Tuple[str, int], ast.AST] = {}
        classes: Dict[str, List[ast.ClassDef]] = {}
        tree = self.tree()

        def visit(body: Iterable[ast.AST], prefix: str) -> None:
            for node in body:
                if isinstance(node, _DEFS):
                    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    defs[(node.name, first)] = node
                    defs.setdefault((node.name, node.lineno), node)
                    if isinstance(node, ast.ClassDef):
                        classes.setdefault(prefix + node.name, []).append(node)
                        visit(node.body, prefix + node.name + ".")
                    else:
                        visit(node.body, prefix + node.name + ".<locals>.")
                elif isinstance(node, (ast.stmt, ast.excepthandler)) or \
                        type(node).__name__ == "match_case":
                    visit(ast.iter_child_nodes(node), prefix)

        if tree is not None:
            visit(tree.body, "")
        self._defs, self._classes = defs, classes

    def definition(self, name: str, first_line: int) -> Optional[ast.AST]:
        """The def or class ``name`` whose first line (its first decorator's) is
        ``first_line``, from the whole file."""
        if self._defs is None:
            self._index()
        return self._defs.get((name, first_line))

    def classes(self, qualname: str) -> List[ast.ClassDef]:
        if self._classes is None:
            self._index()
        return self._classes.get(qualname, [])

    def lambdas(self, line: int) -> List[ast.Lambda]:
        if self._lambdas is None:
            found: Dict[int, List[ast.Lambda]] = {}
            tree = self.tree()
            for node in ast.walk(tree) if tree is not None else ():
                if isinstance(node, ast.Lambda):
                    found.setdefault(node.lineno, []).append(node)
            self._lambdas = found
        return self._lambdas.get(line, [])

    def function_node(self, code: types.CodeType) -> Optional[ast.AST]:
        """The def of ``code``: parsed from its own lines when they can be cut out of the file
        (fast: only the function is parsed), else found in the whole file."""
        key = (code.co_name, code.co_firstlineno)
        if key in self.snippets:
            return self.snippets[key]
        node = self._snippet(code)
        if node is None:
            node = self.definition(*key)
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                node = None
        self.snippets[key] = node
        return node

    def _snippet(self, code: types.CodeType) -> Optional[ast.AST]:
        """Parse only the lines of the def of ``code``: from its first line (its first
        decorator's) to the last line any of its code objects names, and the more indented,
        blank or comment lines after it (the rest of a last statement over several lines).
        A cut in the wrong place cannot go unnoticed: it leaves a bracket, a string or a block
        open (a syntax error) or finds no def of that name."""
        lines, first = self.lines, code.co_firstlineno
        if not 1 <= first <= len(lines):
            return None
        last = _last_line(code)
        if last < first:
            return None
        head = lines[first - 1]
        indent = _indent(head)
        end = min(last, len(lines))
        while end < len(lines):
            line = lines[end]
            stripped = line.strip()
            if stripped and not stripped.startswith("#") and _indent(line) <= indent:
                break
            end += 1
        text = "".join(lines[first - 1:end])
        if indent:
            text = "if 1:\n" + text
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, MemoryError):
            return None
        body = tree.body
        if indent:
            if len(body) != 1 or not isinstance(body[0], ast.If):
                return None
            body = body[0].body
        if len(body) != 1 or not isinstance(body[0], (ast.FunctionDef, ast.AsyncFunctionDef)) \
                or body[0].name != code.co_name:
            return None
        return body[0]


def _indent(line: str) -> int:
    return len(line.expandtabs(8)) - len(line.expandtabs(8).lstrip())


def _last_line(code: types.CodeType) -> int:
    """The last line any instruction of ``code`` or of the code nested in it comes from."""
    last = max((line for _, line in dis.findlinestarts(code) if line is not None),
               default=code.co_firstlineno)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            last = max(last, _last_line(const))
    return last


def _split_lines(text: str) -> List[str]:
    """Lines as Python numbers them (``str.splitlines`` would also split at form feeds and
    other separators, and the line numbers of code objects would point elsewhere)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line + "\n" for line in text.split("\n")]
    if lines and lines[-1] == "\n":
        lines.pop()  # (the text ended with a line break)
    return lines


#: filename -> ((mtime_ns, size) or the text, its _Source or None)
_SOURCES: Dict[str, Tuple[Any, Optional[_Source]]] = {}


# --- the persistent memo of what is read from whole files -------------------------------------

_UNKNOWN = object()
#: Changed whenever what a memo holds, or how it is computed, changes (the stamps of this file
#: are part of every memo's header too, so an edited or upgraded fingerprint.py never reads a
#: memo an older one wrote).
MEMO_FORMAT = "ptd-fingerprint-memo-3"
#: The memos' folder, in the settings folder (``PERSIST_TO_DISK_HOME``, ~/.persist_to_disk).
MEMO_FOLDER_NAME = "fingerprints"
_dirty_memos: List["_FileMemo"] = []


def _stamp(status: os.stat_result) -> List[int]:
    """What says a file is unchanged, with the digest of its text (:class:`_FileMemo`): size,
    modification and change times (ns), inode and device. Stamps alone are not enough: images
    (squashfs, SIF) and reproducible builds give two texts the same ones."""
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino,
            status.st_dev]


@functools.lru_cache(maxsize=None)
def _memo_header() -> Tuple[Any, ...]:
    """What a memo must have been written by: this memo format and fingerprint format, this
    exact Python (its parser and its bytecode decide what is read) and this very
    fingerprint.py (its stamps)."""
    try:
        own = _stamp(os.stat(__file__))
    except OSError:
        own = None
    return (MEMO_FORMAT, _FORMAT.decode("ascii"), sys.version, sys.implementation.cache_tag,
            own)


def _memo_place() -> Optional[Tuple[str, Any]]:
    """``(folder, sharing)`` of the memos, or None when the settings folder is not one to
    read or write them in (missing, or failing the trust check of the settings: the memos
    decide fingerprints, and under ``recompute`` fingerprints decide which results are
    returned)."""
    from .engine import trust
    from .settings import settings_folder, settings_sharing
    sharing = settings_sharing()
    settings = settings_folder()
    folder = os.path.join(settings, MEMO_FOLDER_NAME)
    for place in (settings, folder):
        if trust.path_problem(place, sharing) is not None:
            return None
    return folder, sharing


class _FileMemo:
    """What the fingerprint read from the whole text of one source file, kept between processes
    in ``<settings folder>/fingerprints/`` (a JSON file per source file): for each global name,
    the code of the statements that assign it and the names they read
    (:meth:`_Fingerprinter.assigned_code`), which otherwise costs a parse of the whole module
    (~0.8 ms of a ~2.5 ms first fingerprint here; /tmp/b15A/fp.py).

    Only what is a function of the file's text alone is kept, and only for a file not
    modified since this process started (``_Source.stale``); a memo counts only when the file
    has the stamps (:func:`_stamp`) and the text (its blake2b digest) it was written for, and
    the same header
    (:func:`_memo_header`). Everything else the fingerprint looks at (the module's globals,
    which objects names are bound to, constants' values, closures, classes) is looked at
    again in every process: a memo never stands for the fingerprint itself. Memos are read
    and written under the settings folder's trust check (``projects.read_settings_file``);
    one that cannot be read, or does not match, is ignored and written again.
    """

    def __init__(self, source: "_Source") -> None:
        self.filename = source.filename
        self.stamp = _stamp(source.status)
        # The digest of the very text every entry is computed from (read now, once): stamps
        # alone let two texts pass for one where tools set them (read-only images such as
        # squashfs/SIF keep their files' times and inodes, reproducible builds fix the times):
        # a memo is used only for the text it was written from. ~0.1 ms of a first call.
        lines = source.lines
        self.digest = (_blake2b("".join(lines).encode("utf-8", "surrogatepass"),
                                digest_size=16).hexdigest()
                       if lines and not source.stale else None)
        self.entries: Dict[str, Any] = {}
        self.definitions: Dict[str, Any] = {}
        self.dirty = False

    @staticmethod
    def path_of(folder: str, filename: str) -> str:
        name = _blake2b(filename.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        return os.path.join(folder, name + ".json")

    def load(self) -> None:
        from .projects import read_settings_file
        if self.digest is None:
            return
        place = _memo_place()
        if place is None:
            return
        folder, sharing = place
        text = read_settings_file(self.path_of(folder, self.filename), sharing)
        if not text:
            return
        data = json.loads(text)
        if isinstance(data, dict) and data.get("header") == list(_memo_header()) \
                and data.get("file") == self.filename and data.get("stamp") == self.stamp \
                and data.get("digest") == self.digest \
                and isinstance(data.get("assigned"), dict) \
                and isinstance(data.get("definitions"), dict):
            self.entries = data["assigned"]
            self.definitions = data["definitions"]

    def assigned(self, name: str) -> Any:
        """``(text, names)`` or None as :meth:`_Fingerprinter.assigned_code` says, or
        :data:`_UNKNOWN`."""
        entry = self.entries.get(name, _UNKNOWN)
        if entry is _UNKNOWN or entry is None:
            return entry
        text, names = entry
        if names is None:
            return text, None
        found = _CodeNames()
        found.globals.update(names[0])
        found.chains.update(tuple(chain) for chain in names[1])
        found.attributes.update(names[2])
        return text, found

    def definition(self, key: str) -> Any:
        """A definition as :meth:`_Fingerprinter.definition` gives it, or :data:`_UNKNOWN`."""
        return self.definitions.get(key, _UNKNOWN)

    def learn_definition(self, key: str, found: Optional[List[Any]]) -> None:
        self.definitions[key] = found
        self._changed()

    def _changed(self) -> None:
        if not self.dirty:
            self.dirty = True
            _dirty_memos.append(self)

    def learn(self, name: str, found: Optional[Tuple[str, Optional[_CodeNames]]]) -> None:
        if found is None:
            entry = None
        else:
            text, names = found
            entry = [text, None if names is None else
                     [sorted(names.globals), sorted(list(chain) for chain in names.chains),
                      sorted(names.attributes)]]
        self.entries[name] = entry
        self._changed()

    def save(self) -> None:
        self.dirty = False
        if self.digest is None:  # (unreadable, or changed while read: never memoised)
            return
        place = _memo_place()
        if place is None:
            return
        folder, _ = place
        from .engine import make_private_dirs
        make_private_dirs(folder)
        text = json.dumps({"header": list(_memo_header()), "file": self.filename,
                           "stamp": self.stamp, "digest": self.digest,
                           "assigned": dict(self.entries),
                           "definitions": dict(self.definitions)})
        from .projects import write_settings_file
        # (not durable: a memo lost in a crash is made again)
        write_settings_file(self.path_of(folder, self.filename), text, durable=False)


def _file_memo(source: "_Source") -> _FileMemo:
    """The persistent memo of ``source`` (a file on disk not edited since the process
    started), read once per process and source version."""
    memo = source.memo
    if memo is None:
        memo = _FileMemo(source)
        try:
            memo.load()
        except Exception as err:  # (unreadable, untrusted, not JSON: computed and written again)
            log.debug("code fingerprint: memo of %s not read (%s: %s)", source.filename,
                      type(err).__name__, err)
        source.memo = memo
    return memo


def save_memos() -> None:
    """Write the memos fingerprints added to (never raises: a memo is an economy).

    Not done by :func:`code_fingerprint` itself: a call computes the fingerprint before it
    keys its arguments, and a call whose arguments cannot be keyed writes nothing, not even
    in the settings folder. The decorator saves them when it opens a store
    (``PersistedFunction.store_for``), where the settings folder is written anyway."""
    while _dirty_memos:
        try:
            memo = _dirty_memos.pop()
        except IndexError:  # (another thread took the last one)
            return
        try:
            memo.save()
        except Exception as err:
            log.debug("code fingerprint: memo of %s not written (%s: %s)", memo.filename,
                      type(err).__name__, err)


class _Bindings:
    """What the top level of a module (its top-level ``if``/``try``/``with`` blocks included)
    binds: ``assignments``, the statements that assign each name (``=``, annotated, augmented;
    a tuple target counts for each name in it), in source order; ``imported``, the names an
    ``import`` binds; ``star``, whether a ``from x import *`` binds names it does not list;
    ``imports``, those import statements (but ``from __future__``)."""
    __slots__ = ("assignments", "imported", "star", "imports")

    def __init__(self) -> None:
        self.assignments: Dict[str, List[ast.stmt]] = {}
        self.imported: Set[str] = set()
        self.star = False
        self.imports: List[ast.stmt] = []


def _bindings(source: _Source) -> _Bindings:
    found = source.encoded.get("bindings")
    if found is None:
        found = source.encoded["bindings"] = _module_bindings(source.tree())
    return found


def _module_bindings(tree: Optional[ast.Module]) -> _Bindings:
    found = _Bindings()

    def targets(node: ast.AST) -> Iterable[str]:
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, (ast.Tuple, ast.List)):
            for element in node.elts:
                yield from targets(element)
        elif isinstance(node, ast.Starred):
            yield from targets(node.value)

    def visit(body: Iterable[ast.stmt]) -> None:
        for statement in body:
            if isinstance(statement, ast.Assign):
                names = [n for target in statement.targets for n in targets(target)]
            elif isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
                names = list(targets(statement.target))
                if isinstance(statement, ast.AnnAssign) and statement.value is None:
                    names = []
            elif isinstance(statement, (ast.Import, ast.ImportFrom)):
                if getattr(statement, "module", None) != "__future__":
                    found.imports.append(statement)
                for alias in statement.names:
                    if alias.name == "*":
                        found.star = True
                    else:
                        found.imported.add(alias.asname or alias.name.split(".")[0])
                continue
            elif isinstance(statement, (ast.If, ast.Try, ast.With)) or \
                    type(statement).__name__ == "TryStar":
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(statement, field, None) or ())
                for handler in getattr(statement, "handlers", None) or ():
                    visit(handler.body)
                continue
            else:
                continue
            for name in set(names):
                found.assignments.setdefault(name, []).append(statement)

    if tree is not None:
        visit(tree.body)
    return found


def _reads_itself(name: str, statements: List[ast.stmt]) -> bool:
    """Whether the statements assigning ``name`` read its earlier value (``LR = LR * 2``,
    ``LR += 1``)."""
    for statement in statements:
        if isinstance(statement, ast.AugAssign):
            return True
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load):
                return True
    return False


def _compiled_codes(source: _Source) -> Dict[Tuple[str, int], List[types.CodeType]]:
    """The code objects the file compiles to now, as the import system compiles it (its own
    ``from __future__`` imports, this interpreter's optimization level), by name and first
    line (empty when it does not compile)."""
    found = source.encoded.get("compiled")
    if found is None:
        found = source.encoded["compiled"] = {}
        try:
            queue = [compile("".join(source.lines), source.filename, "exec", dont_inherit=True)]
        except (SyntaxError, ValueError, MemoryError, RecursionError) as err:
            log.debug("code fingerprint: cannot compile %s (%s)", source.filename, err)
            queue = []
        while queue:
            code = queue.pop()
            found.setdefault((code.co_name, code.co_firstlineno), []).append(code)
            queue.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return found


def _defaults_agree(arguments: ast.arguments, func: types.FunctionType) -> bool:
    """Whether the literal default values of the def are those ``func`` has (they are not in its
    code; other default expressions cannot be told from here: they are taken to agree)."""
    expected = list(arguments.defaults)
    actual = list(func.__defaults__ or ())
    kw_expected = [d for d in arguments.kw_defaults if d is not None]
    kw_actual = [(func.__kwdefaults__ or {}).get(a.arg, _MISSING)
                 for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d is not None]
    if len(expected) != len(actual) or len(kw_expected) != len(kw_actual):
        return False
    for node, value in zip(expected + kw_expected, actual + kw_actual):
        try:
            literal = ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        if not _same_value(literal, value):
            return False
    return True


def _same_value(literal: Any, value: Any) -> bool:
    """Whether a literal read from the source is the value the running code holds."""
    expected, actual = _constant_text(literal), _constant_text(value)
    if expected is not None or actual is not None:
        return expected == actual
    try:  # (lists, dicts, sets of literals)
        return type(literal) is type(value) and bool(literal == value)
    except Exception:
        return False


def _read_lines(filename: str) -> Tuple[List[str], Optional[os.stat_result]]:
    """The lines of the file ``filename`` (each ending with a line break) and its ``fstat``;
    ``[]`` when it cannot be read."""
    try:
        with open(filename, "rb") as handle:
            status = os.fstat(handle.fileno())
            data = handle.read()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        lines = _split_lines(data.decode(encoding))
    except (OSError, SyntaxError, UnicodeDecodeError, LookupError) as err:
        log.debug("code fingerprint: cannot read %s (%s)", filename, err)
        return [], None
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines, status


def _source(filename: str, module_globals: Optional[dict]) -> Optional[_Source]:
    """The parsed source of ``filename``, cached while the file keeps its modification time
    and size. A file that is not on disk is looked for in :mod:`linecache` (IPython and
    Jupyter keep cells there) or asked of its module's loader (zip imports)."""
    if not filename:
        return None
    try:
        status = os.stat(filename)
    except (OSError, ValueError):
        status = None
    if status is not None:
        stamp: Any = (status.st_mtime_ns, status.st_size)
        cached = _SOURCES.get(filename)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if not stat.S_ISREG(status.st_mode) or not status.st_size:
            lines = []
        else:  # (read when first needed: Source.lines)
            source = _Source(filename, None, status.st_mtime_ns, status)
            _SOURCES[filename] = (stamp, source)
            return source
    else:
        if filename in linecache.cache:
            lines = list(linecache.getlines(filename))  # (a copy: linecache's own is cached)
        elif filename.startswith("<"):  # (<string>, <stdin>: nothing to read)
            lines = []
        else:
            lines = list(linecache.getlines(filename, module_globals))
        stamp = "".join(lines)
        cached = _SOURCES.get(filename)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    source = _Source(filename, lines, status.st_mtime_ns if status is not None else None,
                     status) if lines else None
    _SOURCES[filename] = (stamp, source)
    return source


# --- which code is the project's --------------------------------------------------------------


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # (different drives, relative and absolute)
        return False


@functools.lru_cache(maxsize=None)
def _installation_folders() -> Tuple[str, ...]:
    """Folders of the Python installation, its virtual environment and its package folders
    (their code is never the project's, even when the project folder holds them)."""
    # (the standard library is where os is; package folders are named site-packages or
    # dist-packages, wherever they are: sysconfig would cost a millisecond to say so)
    folders = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
               os.path.dirname(os.__file__)}
    return tuple(sorted(os.path.realpath(folder) for folder in folders if folder))


_own_folders_known: Dict[Tuple[str, ...], Tuple[str, ...]] = {}


def _own_folders() -> Tuple[str, ...]:
    """The folders of persist_to_disk's own packages (the API layer, the engine, the shared
    tier): never project code, also in a development checkout inside the project. Resolved
    once per process for each set of package folders (``realpath`` costs ~30 µs a folder)."""
    paths: List[str] = []
    for name in [name for name in list(sys.modules) if name.startswith("persist_to_disk")]:
        if name == "persist_to_disk" or name.startswith("persist_to_disk."):
            module = sys.modules.get(name)
            paths.extend(getattr(module, "__path__", None) or ())
    key = tuple(paths)
    known = _own_folders_known.get(key)
    if known is None:
        known = _own_folders_known[key] = tuple(sorted({os.path.realpath(folder)
                                                         for folder in paths}))
    return known


class _Project:
    """Decides which files hold project code, caching the answer per file name."""

    def __init__(self, project_root: str, home: Optional[dict]) -> None:
        self.root = os.path.realpath(project_root) if project_root else ""
        self.home = home  # the globals of __main__ when the function is defined there
        self.excluded = tuple(folder for folder in _installation_folders()
                              if not _inside(self.root, folder)) + _own_folders()
        self._files: Dict[str, bool] = {}

    def file(self, filename: Optional[str]) -> bool:
        if not filename or not self.root:
            return False
        answer = self._files.get(filename)
        if answer is None:
            path = os.path.realpath(filename)
            answer = (_inside(path, self.root)
                      and not {"site-packages", "dist-packages"}.intersection(
                          os.path.relpath(path, self.root).split(os.sep))
                      and not any(_inside(path, folder) for folder in self.excluded))
            self._files[filename] = answer
        return answer

    def function(self, func: types.FunctionType) -> bool:
        return (self.home is not None and func.__globals__ is self.home) or \
            self.file(func.__code__.co_filename)

    def module(self, module: types.ModuleType) -> bool:
        try:
            namespace = vars(module)
        except TypeError:
            return False
        return (self.home is not None and namespace is self.home) or \
            self.file(namespace.get("__file__"))

    def cls(self, cls: type) -> bool:
        name = getattr(cls, "__module__", None)
        module = sys.modules.get(name) if isinstance(name, str) else None
        return module is not None and self.module(module)


# --- following what the code uses -------------------------------------------------------------


def _target(value: Any) -> Any:
    """What a value names as code: the function inside wrapper decorators (``__wrapped__``),
    partials, bound methods, static and class methods."""
    for _ in range(100):
        if isinstance(value, functools.partial):
            value = value.func
        elif isinstance(value, (types.MethodType, staticmethod, classmethod)):
            value = value.__func__
        elif isinstance(value, (type, types.ModuleType)) or not callable(value):
            return value
        else:
            try:
                wrapped = getattr(value, "__wrapped__", None)
            except Exception:
                return value
            if wrapped is None or wrapped is value:
                return value
            value = wrapped
    return value


def _is_ours(value: Any) -> bool:
    """Whether a decorator (or what makes one, ``persistf(...)``) is persist_to_disk's."""
    try:
        module = getattr(value, "__module__", None)
    except Exception:  # (an object whose attributes raise: not ours)
        return False
    return isinstance(module, str) and (module == "persist_to_disk"
                                        or module.startswith("persist_to_disk."))


class _Fingerprinter:
    """One fingerprint: walks from the function to the project code it uses, breadth first
    (each object once, at its smallest distance, so the result does not depend on the order
    things are found in), collecting one text entry per piece of code and per constant."""

    def __init__(self, project_root: str, depth: int) -> None:
        self.project_root = project_root
        self.depth = depth
        self.project: Optional[_Project] = None
        #: (id of a module's globals, name, constants_only): assignments already followed
        self.followed: Set[Tuple[int, str, bool]] = set()
        #: id of a code object -> (the code, whether its source on disk compiles to it)
        self.verified: Dict[int, Tuple[types.CodeType, bool]] = {}
        #: file name -> whether every function and class of its module is the file's code
        self.files_trusted: Dict[str, bool] = {}

    def fingerprint(self, func: Callable) -> str:
        chain = _layers(func)
        root = _target(chain[-1])
        home = None
        if isinstance(root, types.FunctionType) and \
                root.__globals__.get("__name__") in _MAIN_NAMES:
            home = root.__globals__
        self.project = _Project(self.project_root, home)
        entries: Set[str] = set()
        seen: Dict[int, Any] = {id(root): root}  # (values kept: ids stay unique meanwhile)
        frontier = [root]
        # wrapper layers around the function that are project code count as its helpers
        pending: List[Any] = [layer for layer in chain[:-1]
                              if isinstance(layer, types.FunctionType)]
        entries.add(self.entry(root, ""))
        for level in range(self.depth + 1):
            found: List[Any] = []
            for obj in frontier:
                helpers = self.guarded_uses(obj, entries, constants_only=level == self.depth)
                if level == 0:
                    helpers = helpers + pending
                for helper in helpers:
                    if id(helper) not in seen and level < self.depth and self.is_project(helper):
                        seen[id(helper)] = helper
                        found.append(helper)
                        entries.add(self.guarded_entry(helper))
            frontier = found
        return _digest(entries)

    def guarded_entry(self, helper: Any) -> str:
        """A helper's entry; one that cannot be read (whatever the reason, the same every
        time) counts by its name, and the rest of the fingerprint is unaffected."""
        label = _label(helper)
        try:
            return self.entry(helper, label)
        except Exception as err:
            log.debug("code fingerprint: cannot read %s (%s: %s); its name counts",
                      _name_of(helper), type(err).__name__, err)
            return f"unreadable:{label}:{ascii(_name_of(helper))}"

    def guarded_uses(self, obj: Any, entries: Set[str], constants_only: bool) -> List[Any]:
        try:
            return self.uses(obj, entries, constants_only)
        except Exception as err:
            log.debug("code fingerprint: cannot tell what %s uses (%s: %s)",
                      _name_of(obj), type(err).__name__, err)
            return []

    # -- which objects count
    def is_project(self, obj: Any) -> bool:
        if isinstance(obj, types.FunctionType):
            return self.project.function(obj)
        if isinstance(obj, type):
            return self.project.cls(obj)
        return False

    def helper_of(self, value: Any) -> Optional[Any]:
        """The code a global value stands for (a function, a class), or None."""
        value = _target(value)
        if isinstance(value, (types.FunctionType, type)):
            return value
        if isinstance(value, types.ModuleType) or value is None:
            return None
        kind = type(value)
        if kind.__module__ not in ("builtins", "__builtin__") and self.project.cls(kind):
            return kind  # (an object of a project class: its class's code counts)
        return None

    # -- entries
    def entry(self, obj: Any, label: str) -> str:
        if isinstance(obj, types.FunctionType):
            return self.function_entry(obj, label)
        if isinstance(obj, type):
            return self.class_entry(obj, label)
        # (a builtin or another callable without Python code: its name stands for it)
        qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
        return f"opaque:{label}:{ascii(getattr(obj, '__module__', None))}.{ascii(qualname)}"

    def function_entry(self, func: types.FunctionType, label: str) -> str:
        code = func.__code__
        definition = self.definition(func)
        if definition is None:
            log.debug("code fingerprint: no source for %s (%s:%s); its code object counts",
                      func.__qualname__, code.co_filename, code.co_firstlineno)
            return _function_code_entry(label, func)
        return f"{label}:{definition[0]}"

    def definition(self, func: types.FunctionType) -> Optional[List[Any]]:
        """What the fingerprint reads from the definition of ``func`` in its source, None
        when that is not the code that runs (no source, edited since the import):
        ``[text, keeps, decorators, defaults]``, ``text`` its encoded code (``function:`` or
        ``lambda:`` and :func:`_encode_node`), ``keeps`` the answers of :func:`_keeps` that
        text was encoded with (``[[chain, kept], ...]``), ``decorators`` (None for a lambda)
        each decorator of the def as ``[chain, names, chains]`` (what it reads, taken when it
        is kept) and ``defaults`` ``[names, chains]`` of its default values.

        For a file not edited since this process started this depends only on the file's
        text, the code's name and its first and last lines, and the answers in ``keeps``
        (asked again of this process's module globals, :func:`_keeps`): it is kept in the
        file's persistent memo (:class:`_FileMemo`) and used when every answer is the same.
        """
        code = func.__code__
        namespace = func.__globals__
        memo = key = None
        source = _source(code.co_filename, namespace)
        if source is not None and not source.stale and source.status is not None:
            memo = _file_memo(source)
            key = f"def:{code.co_name}:{code.co_firstlineno}:{_last_line(code)}"
            known = memo.definition(key)
            if known is None or (known is not _UNKNOWN and all(
                    _keeps(namespace, tuple(chain)) == kept for chain, kept in known[1])):
                return known
        source, node = self.source_node(func)
        if node is None:
            found = None
        else:
            cached = ("definition", id(node))
            parts = source.encoded.get(cached)
            if parts is None:
                decorators = None
                defaults = None
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    decorators = [[_decorator_chain(d)] + _names_entry(*_expression_names([d]))
                                  for d in node.decorator_list]
                    defaults = _names_entry(*_expression_names(
                        list(node.args.defaults) + list(node.args.kw_defaults)))
                parts = source.encoded[cached] = (_decorator_chains(node), decorators, defaults)
            chains, decorators, defaults = parts
            keeps = [[list(chain), _keeps(namespace, chain)] for chain in chains]
            # The text depends on which decorators are persistf in this namespace (the same
            # file may run as __main__ and as a module, with other bindings): keyed by them.
            key_text = ("entry", id(node), tuple(repr(kept) for _, kept in keeps))
            text = source.encoded.get(key_text)
            if text is None:
                kind = "lambda" if isinstance(node, ast.Lambda) else "function"
                text = kind + ":" + _encode_node(node, self.decorator_filter(namespace))
                source.encoded[key_text] = text
            found = [text, keeps,
                     None if decorators is None else
                     [[None if d[0] is None else list(d[0]), d[1], d[2]] for d in decorators],
                     defaults]
        if memo is not None and not source.stale:
            memo.learn_definition(key, found)
        return found

    def source_node(self, func: types.FunctionType) -> Tuple[Optional[_Source], Optional[ast.AST]]:
        """The source of ``func`` and its definition there, when that is the code that runs
        (``(source, None)`` when it is not: the file was edited after the import)."""
        code = func.__code__
        source = _source(code.co_filename, func.__globals__)
        node = self.function_node(source, code) if source is not None else None
        if node is not None and source.stale and not self.trusted(source, None, [func]):
            log.debug("code fingerprint: %s was edited after this process started and its "
                      "%s is not the code that runs; its code object counts", code.co_filename,
                      func.__qualname__)
            node = None
        return source, node

    def trusted(self, source: _Source, namespace: Optional[dict],
                functions: Iterable[types.FunctionType]) -> bool:
        """Whether what is read from ``source`` (a file edited after this process started) is
        the code that runs: ``functions``, and when ``namespace`` (its module's globals) is
        given every function and class of the module, compile to the code they run, at the
        lines they run from (:meth:`verify`). Files not edited since the process started are
        trusted without a look."""
        if not source.stale:
            return True
        if namespace is not None and not self.file_trusted(source, namespace):
            return False
        return all(self.verify(source, func) for func in functions)

    def file_trusted(self, source: _Source, namespace: dict) -> bool:
        known = self.files_trusted.get(source.filename)
        if known is not None:
            return known
        self.files_trusted[source.filename] = True  # (meanwhile: a class of it is verified)
        functions: List[types.FunctionType] = []
        module_name = namespace.get("__name__")
        for value in list(namespace.values()):
            try:
                value = _target(value)
                if isinstance(value, types.FunctionType):
                    functions.append(value)
                elif isinstance(value, type) and value.__module__ == module_name:
                    functions.extend(_own_methods(value))
            except Exception:  # (an object whose attributes raise: not code of this file)
                continue
        answer = all(self.verify(source, func) for func in functions
                     if func.__code__.co_filename == source.filename)
        self.files_trusted[source.filename] = answer
        return answer

    def verify(self, source: _Source, func: types.FunctionType) -> bool:
        """Whether ``source`` compiles, at the line the code of ``func`` starts at, to the code
        it runs (bytecode, names, constants, nested code: :func:`_code_text`), with the literal
        default values it has."""
        code = func.__code__
        known = self.verified.get(id(code))
        if known is not None and known[0] is code:
            return known[1]
        answer = False
        if code.co_filename == source.filename:
            text = _code_text(code)
            compiled = _compiled_codes(source).get((code.co_name, code.co_firstlineno), ())
            answer = any(_code_text(candidate) == text for candidate in compiled)
            if answer and (func.__defaults__ or func.__kwdefaults__):
                node = self.function_node(source, code)
                answer = node is None or _defaults_agree(node.args, func)
        self.verified[id(code)] = (code, answer)
        return answer

    def function_node(self, source: _Source, code: types.CodeType) -> Optional[ast.AST]:
        if code.co_name == "<lambda>":
            found = source.lambdas(code.co_firstlineno)
            return found[0] if len(found) == 1 else None
        return source.function_node(code)

    def class_nodes(self, cls: type) -> Tuple[Optional[_Source], List[ast.ClassDef]]:
        """The source of ``cls`` and its ``class`` statement there (``[]`` when it cannot be
        told or is not the code that runs). A class defined in several places of its file
        (both branches of an ``if``) is the statement that holds the lines its methods start
        at; one without methods counts by every statement of its name."""
        namespace = _module_globals(cls)
        filename = namespace.get("__file__") if namespace is not None else None
        if not filename:
            filename = next((f.__code__.co_filename for f in _class_functions(cls)), None)
        source = _source(filename, namespace) if filename else None
        if source is None:
            return None, []
        methods = [f for f in _own_methods(cls) if f.__code__.co_filename == source.filename]
        if source.stale and not self.trusted(source, None, methods):
            log.debug("code fingerprint: %s was edited after this process started and class "
                      "%s there is not the code that runs; its methods' code objects count",
                      source.filename, cls.__qualname__)
            return source, []
        first = getattr(cls, "__firstlineno__", None)  # (3.13)
        if isinstance(first, int):
            node = source.definition(cls.__name__, first)
            if isinstance(node, ast.ClassDef):
                return source, [node]
        candidates = source.classes(cls.__qualname__)
        if not candidates and "<locals>" in cls.__qualname__:
            candidates = [node for name, nodes in source._classes.items()
                          if name.rsplit(".", 1)[-1] == cls.__name__ for node in nodes]
        lines = [f.__code__.co_firstlineno for f in methods]
        if len(candidates) > 1 and lines:
            candidates = [node for node in candidates
                          if all(node.lineno <= line <= (getattr(node, "end_lineno", None)
                                                         or line) for line in lines)][-1:]
        return source, candidates

    def class_entry(self, cls: type, label: str) -> str:
        source, nodes = self.class_nodes(cls)
        if not nodes:
            log.debug("code fingerprint: no source for class %s; its methods' code objects "
                      "count", cls.__qualname__)
            methods = [_function_code_entry(name, func)
                       for name, func in sorted(_class_members(cls))]
            return f"{label}:class-code:" + "|".join(methods)
        key = ("entry",) + tuple(id(node) for node in nodes)
        text = source.encoded.get(key)
        if text is None:
            keep = self.decorator_filter(_module_globals(cls))
            text = "class:" + "|".join(_encode_node(node, keep) for node in nodes)
            source.encoded[key] = text
        return f"{label}:{text}"

    def decorator_filter(self, namespace: Optional[dict]) -> Callable[[ast.expr], bool]:
        """Which decorators count: all but persist_to_disk's (``@persistf``, ``@ptd.persistf(...)``,
        a ``cache = ptd.persistf(...)`` made once), found by what the name means in the module,
        or, where that cannot be told (a name local to a function), by the name ``persistf``."""
        namespace = namespace or {}

        def keep(decorator: ast.expr) -> bool:
            chain = _decorator_chain(decorator)
            return chain is None or _keeps(namespace, chain)
        return keep

    # -- what an object uses
    def uses(self, obj: Any, entries: Set[str], constants_only: bool = False) -> List[Any]:
        """The helpers ``obj`` uses (candidates: not yet checked to be project code); the
        constants it reads are added to ``entries``."""
        if isinstance(obj, types.FunctionType):
            return self.function_uses(obj, entries, constants_only)
        if isinstance(obj, type):
            return self.class_uses(obj, entries, constants_only)
        return []

    def function_uses(self, func: types.FunctionType, entries: Set[str],
                      constants_only: bool) -> List[Any]:
        code = func.__code__
        names = _code_names(code)
        namespace = func.__globals__
        definition = self.definition(func)
        if definition is not None and definition[2] is not None:  # (a def, not a lambda)
            kept = [definition[3]] + [
                [read, chains] for chain, read, chains in definition[2]
                if chain is None or _keeps(namespace, tuple(chain))]
            for read, chains in kept:
                names.globals.update(read)
                names.chains.update(tuple(chain) for chain in chains)
        helpers = self.resolve(names, namespace, entries, constants_only)
        if constants_only:
            return helpers
        for cell in func.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:  # (an empty cell)
                continue
            helper = self.helper_of(value)
            if helper is not None:
                helpers.append(helper)
        helpers.extend(self.method_uses(func, names.attributes, entries))
        return helpers

    def class_uses(self, cls: type, entries: Set[str], constants_only: bool) -> List[Any]:
        namespace = _module_globals(cls)
        if namespace is None:
            return []
        source, nodes = self.class_nodes(cls)
        names = None
        if nodes:
            key = ("names",) + tuple(id(node) for node in nodes)
            names = source.encoded.get(key)
            if names is None:
                try:
                    module = ast.Module(body=list(nodes), type_ignores=[])
                    code = compile(module, source.filename, "exec",
                                   flags=_ANNOTATIONS_FLAG, dont_inherit=True)
                    names = _code_names(code)
                except (SyntaxError, ValueError, TypeError) as err:
                    log.debug("code fingerprint: cannot compile class %s alone (%s)",
                              cls.__qualname__, err)
                    names = None
                source.encoded[key] = names
        if names is None:
            names = _CodeNames()
            for _, func in _class_members(cls):
                _code_names(func.__code__, names)
        return self.resolve(names, namespace, entries, constants_only)

    def method_uses(self, func: types.FunctionType, attributes: Set[str],
                    entries: Set[str]) -> List[Any]:
        """Methods a method reads on its class (``self.prepare()``, ``cls.make``,
        ``super().fit``): the definitions of those names in its class and the classes it
        derives from; constants among them (``self.scale`` for ``scale = 2`` in the class
        body) are added to ``entries``."""
        qualname = func.__qualname__
        if "." not in qualname or "<locals>" in qualname or not attributes:
            return []
        path = qualname.split(".")[:-1]
        owner = func.__globals__.get(path[0], _MISSING)
        for part in path[1:]:
            owner = vars(owner).get(part, _MISSING) if isinstance(owner, type) else _MISSING
        if not isinstance(owner, type):
            return []
        found = []
        for name in sorted(attributes):
            if name.startswith("__") and name.endswith("__"):
                continue  # (__doc__, __module__, __dict__: not the class's code)
            for klass in owner.__mro__:
                if klass is object:
                    continue
                value = vars(klass).get(name, _MISSING)
                if value is _MISSING:
                    continue
                if isinstance(value, property):
                    found.extend(f for f in (value.fget, value.fset, value.fdel) if f)
                    continue
                constant = _constant_text(value)
                if constant is not None:
                    if self.project.cls(klass):
                        entries.add(f"constant:{klass.__qualname__}.{name}={constant}")
                else:
                    found.append(_target(value))
        return [f for f in found if isinstance(f, (types.FunctionType, type))]

    def resolve(self, names: _CodeNames, namespace: dict, entries: Set[str],
                constants_only: bool) -> List[Any]:
        """Look the names up in the module's globals (:meth:`take` says what counts of each),
        following attribute chains through project modules."""
        helpers: List[Any] = []
        for name in sorted(names.globals):
            if name.startswith("__") and name.endswith("__"):
                continue  # (__file__, __name__: where the module is, not what it does)
            value = namespace.get(name, _MISSING)
            if value is not _MISSING and not isinstance(value, types.ModuleType):
                self.take(name, value, namespace, name, entries, helpers, constants_only)
        for chain in sorted(names.chains):
            value = namespace.get(chain[0], _MISSING)
            home = namespace
            index = 1
            while isinstance(value, types.ModuleType) and index < len(chain) \
                    and self.project.module(value):
                home = vars(value)
                value = home.get(chain[index], _MISSING)
                index += 1
            if index > 1 and value is not _MISSING and not isinstance(value, types.ModuleType) \
                    and not (chain[index - 1].startswith("__") and chain[index - 1].endswith("__")):
                self.take(".".join(chain[:index]), value, home, chain[index - 1], entries,
                          helpers, constants_only)
        return helpers

    def take(self, label: str, value: Any, home: dict, name: str, entries: Set[str],
             helpers: List[Any], constants_only: bool) -> None:
        """What counts of the global ``name`` of the module whose globals are ``home``, read as
        ``label``, whose value is ``value``: the code of the statements at the top level of
        its module that assign it, and what they read in turn (its value is computed by that
        code: the same code gives the same fingerprint on every machine, whatever the value);
        else (no such statement, a name an import binds, a file edited since the import) its
        value when it is a constant. A function or class value is followed as a helper."""
        found = self.assigned_code(home, name, value)
        if found is not None:
            text, names = found
            entries.add(f"assigned:{label}={text}")
            visit = (id(home), name, constants_only)
            if visit not in self.followed:
                self.followed.add(visit)
                if names is not None:
                    helpers.extend(self.resolve(names, home, entries, constants_only))
        else:
            constant = _constant_text(value)
            if constant is not None:
                entries.add(f"constant:{label}={constant}")
                return
        found = self.value_helpers(label, value, entries)
        if not constants_only:
            helpers.extend(found)

    def assigned_code(self, home: dict, name: str, value: Any
                      ) -> Optional[Tuple[str, Optional[_CodeNames]]]:
        """``(text, names)`` of the statements that assign the global ``name`` of the module
        whose globals are ``home`` (:meth:`assigned`): their encoded code and the names they
        read (None: they could not be compiled alone); None when they do not count.

        For a file not edited since this process started, this is a function of the file's
        text and ``name`` alone, and is kept in the file's persistent memo (:class:`_FileMemo`):
        a later process whose file has the same stamps does not parse the whole module for it.
        """
        filename = home.get("__file__")
        source = _source(filename, home) if isinstance(filename, str) else None
        if source is None:
            return None
        memo = None
        if not source.stale and source.status is not None:
            memo = _file_memo(source)
            known = memo.assigned(name)
            if known is not _UNKNOWN:
                return known
        statements = self.assigned(home, name, value)
        found = None
        if statements is not None:
            source, nodes = statements
            key = ("assigned", name)
            text = source.encoded.get(key)
            if text is None:
                text = source.encoded[key] = "".join(
                    _encode_node(node, lambda decorator: True, top=False) for node in nodes)
            found = (text, self.statement_names(source, name, nodes))
        if memo is not None and not source.stale:
            memo.learn(name, found)
        return found

    def assigned(self, home: dict, name: str, value: Any
                 ) -> Optional[Tuple[_Source, List[ast.stmt]]]:
        """The statements at the top level of the module (globals ``home``) that assign
        ``name``, when they say what its value is: not when an import binds the name too
        (``from x import NAME`` with a fallback assignment; ``from x import *`` and then
        ``NAME = NAME * 2``), nor when the file was edited after the import (unless the
        module's functions and classes are unchanged and a literal assigned is the value)."""
        filename = home.get("__file__")
        source = _source(filename, home) if isinstance(filename, str) else None
        if source is None:
            return None
        bindings = _bindings(source)
        nodes = bindings.assignments.get(name)
        if not nodes or name in bindings.imported or \
                (bindings.star and _reads_itself(name, nodes)):
            return None
        if source.stale:
            literal = nodes[-1].value if len(nodes) == 1 and isinstance(nodes[0], ast.Assign) \
                else None
            try:
                same = literal is None or _same_value(ast.literal_eval(literal), value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                same = True  # (not a literal: the module's code is the evidence)
            if not same or not self.trusted(source, home, ()):
                log.debug("code fingerprint: %s was edited after this process started and "
                          "its code is not all the code that runs; %s counts by value",
                          source.filename, name)
                return None
        return source, nodes

    def statement_names(self, source: _Source, name: str, nodes: List[ast.stmt]
                        ) -> Optional[_CodeNames]:
        """The names the statements assigning ``name`` read (compiled to find them as the
        code of a function is read), without ``name`` itself."""
        key = ("assigned-names", name)
        if key in source.encoded:
            return source.encoded[key]
        try:
            code = compile(ast.Module(body=list(nodes), type_ignores=[]), source.filename,
                           "exec", flags=_ANNOTATIONS_FLAG, dont_inherit=True)
            names: Optional[_CodeNames] = _code_names(code)
        except (SyntaxError, ValueError, TypeError, RecursionError) as err:
            log.debug("code fingerprint: cannot compile the assignments of %s in %s (%s)",
                      name, source.filename, err)
            names = None
        source.encoded[key] = names
        return names

    def value_helpers(self, label: str, value: Any, entries: Set[str]) -> List[Any]:
        """The code a global value stands for: a function or class (:meth:`helper_of`); for a
        ``functools.partial``, its function, and its arguments count (constants by value,
        functions and classes followed, anything else by its type)."""
        if not isinstance(value, functools.partial):
            helper = self.helper_of(value)
            return [helper] if helper is not None else []
        found: List[Any] = []
        parts = []
        arguments = [("", item) for item in value.args] + \
            sorted((key + "=", item) for key, item in (value.keywords or {}).items())
        for key, item in arguments:
            constant = _constant_text(item)
            if constant is None:
                helper = self.helper_of(item)
                if helper is not None:
                    found.append(helper)
                    constant = "code:" + _label(helper)
                else:
                    constant = "<" + type(item).__qualname__ + ">"
            parts.append(key + constant)
        entries.add(f"partial:{label}=(" + ",".join(parts) + ")")
        return found + self.value_helpers(label + ".func", value.func, entries)


#: Compile class bodies with annotations left as text: names in annotations are not followed
#: (as for functions, whose annotations are not in their code).
_ANNOTATIONS_FLAG = __future__.annotations.compiler_flag


def _decorator_chain(decorator: ast.expr) -> Optional[Tuple[str, ...]]:
    """The name a decorator is looked up by (``persistf`` in ``@ptd.persistf(...)``: the
    chain ``("ptd", "persistf")``), or None when it is no name (always kept)."""
    return _attribute_chain(decorator.func if isinstance(decorator, ast.Call) else decorator)


def _keeps(namespace: dict, chain: Tuple[str, ...]) -> bool:
    """Whether the decorator named by ``chain`` in a module whose globals are ``namespace``
    counts (:meth:`_Fingerprinter.decorator_filter`): all but persist_to_disk's."""
    value = namespace.get(chain[0], _MISSING)
    for attribute in chain[1:]:
        if not isinstance(value, types.ModuleType):
            value = _MISSING
            break
        value = vars(value).get(attribute, _MISSING)
    if value is not _MISSING:
        return not _is_ours(value)
    return chain[-1] != "persistf"


def _decorator_chains(node: ast.AST) -> List[Tuple[str, ...]]:
    """The chains of every decorator inside ``node`` (its own and its nested definitions'):
    every decorator the encoding of ``node`` asks :func:`_keeps` about."""
    chains = set()
    for inner in ast.walk(node):
        for decorator in getattr(inner, "decorator_list", None) or ():
            chain = _decorator_chain(decorator)
            if chain is not None:
                chains.add(chain)
    return sorted(chains)


def _names_entry(names: Set[str], chains: Set[Tuple[str, ...]]) -> List[Any]:
    return [sorted(names), sorted(list(chain) for chain in chains)]


def _layers(func: Any) -> List[Any]:
    """``func`` and what it wraps (``__wrapped__``), outermost first."""
    chain, seen = [func], {id(func)}
    while len(chain) < 100:
        try:
            wrapped = getattr(chain[-1], "__wrapped__", None)
        except Exception:
            break
        if wrapped is None or id(wrapped) in seen:
            break
        seen.add(id(wrapped))
        chain.append(wrapped)
    return chain


def _label(obj: Any) -> str:
    try:
        name = obj.__qualname__
    except Exception:
        name = None
    return ascii(name if isinstance(name, str) else type(obj).__qualname__)


def _module_globals(cls: type) -> Optional[dict]:
    name = getattr(cls, "__module__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    try:
        return vars(module) if module is not None else None
    except TypeError:
        return None


def _class_members(cls: type) -> List[Tuple[str, types.FunctionType]]:
    """The functions defined in a class's body, by attribute name."""
    members = []
    for name, value in list(vars(cls).items()):
        values = (value.fget, value.fset, value.fdel) if isinstance(value, property) \
            else (_target(value),)
        for index, item in enumerate(values):
            if isinstance(item, types.FunctionType):
                members.append((f"{name}.{index}" if isinstance(value, property) else name, item))
    return members


def _class_functions(cls: type) -> Iterable[types.FunctionType]:
    return (func for _, func in _class_members(cls))


def _own_methods(cls: type) -> List[types.FunctionType]:
    """The functions defined in the body of ``cls`` (not those it only holds:
    ``run = staticmethod(helper)``)."""
    prefix = cls.__qualname__ + "."
    return [func for func in _class_functions(cls) if func.__qualname__.startswith(prefix)]


#: The module names of a script run as a program: ``__main__``, and ``__mp_main__`` where
#: multiprocessing's spawn workers import it.
_MAIN_NAMES = ("__main__", "__mp_main__")
