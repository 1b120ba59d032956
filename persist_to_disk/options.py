"""The decorator's options: listed once, validated at decoration time.

:class:`PersistOptions` is the one list of ``persistf``'s options. Each field says, besides
its validated type, what ``persistf`` accepts for it (its annotation and default there), how a
given value is checked and turned into the field's value, its aliases (``hash_size`` for
``hashsize``, as the seed spelled it), and the sentence that documents it. ``persistf``'s
visible signature (``inspect.signature``, ``help()``) and the ``Args`` section of its docstring
are built from these fields (:func:`signature`, :func:`args_doc`), so an option added here is
accepted, checked, shown and documented without being written anywhere else.

Everything is checked when the function is decorated, never at its first call: a typo in an
option name is Python's ``TypeError``, a bad value a :class:`~.errors.ConfigError` naming the
function, the option and what was given, and nothing has been written to disk.
"""

import dataclasses
import datetime
import inspect
import math
from dataclasses import dataclass
from typing import (Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union)

from .binding import CallBinder
from .code_identity import check_version, parse_code_changes
from .engine import Durability, LockScope
from .errors import ConfigError
from .identity import captured_names
from .modes import parse_mode
from .normalization import GroupSpec
from .settings import parse_hashsize

HASH_METHODS = ("pickle", "json")


# --- checking one option's value (a ValueError says what is wrong, without the function) -------
def _names(value, option: str) -> Tuple[str, ...]:
    """Argument names given as one string or an iterable of strings (ValueError otherwise)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise ValueError(f"{option} must be an argument name or a list of them; "
                         f"got {value!r}") from None
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"{option} must list argument names (strings); got {name!r}")
    return names


def _iterable(value, option: str) -> list:
    try:
        return list(value)
    except TypeError:
        raise ValueError(f"{option} must be an argument name or a list of them; "
                         f"got {value!r}") from None


def _groups(value, option: str) -> Tuple[GroupSpec, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    groups: List[GroupSpec] = []
    for spec in _iterable(value, option):
        if isinstance(spec, (tuple, list)):
            names = _names(spec, f"a {option} tuple")
            if not names:
                raise ValueError(f"{option} has an empty tuple (), which names no argument "
                                 "and would make an empty folder name")
            groups.append(names)
        elif isinstance(spec, str):
            groups.append(spec)
        else:
            raise ValueError(f"{option} must list argument names or tuples of them; "
                             f"got {spec!r}")
    return tuple(groups)


def _expanded(value, option: str) -> Union[str, Tuple[str, ...]]:
    return "all" if value == "all" else _names(value, option)


def _flag(value, option: str) -> bool:
    """A real boolean: ``local="no"`` would otherwise mean True."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"{option} must be True or False; got {value!r}")


def _keyword(value, option: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{option} must be a keyword name; got {value!r}")
    return value


def _hash_method(value, option: str) -> str:
    if value not in HASH_METHODS:
        raise ValueError(f"{option} must be 'pickle' or 'json'; got {value!r}")
    return value


def _seconds(value, option: str) -> Optional[float]:
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                              or not 0 <= value < math.inf):
        raise ValueError(f"{option} must be None (wait) or seconds >= 0; got {value!r}")
    return value


def max_age_seconds(value, option: str) -> Optional[float]:
    """Seconds (a number or a ``datetime.timedelta``) a stored result stays good, or None
    (for ever). The one parser of the option and of the per-call keyword."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value < math.inf:
        raise ValueError(f"{option} must be None (never expires), seconds >= 0 or a "
                         f"datetime.timedelta; got {value!r}")
    return float(value)


def _unless_none(parse: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """``parse``, letting None (the option left to the settings) through."""
    def parse_given(value, option: str):
        return None if value is None else parse(value, option)
    return parse_given


def option(accepts: Any, default: Any, parse: Callable[[Any, str], Any], doc: str,
           aliases: Tuple[str, ...] = ()) -> Any:
    """A field of :class:`PersistOptions`: ``persistf`` accepts ``accepts`` (its annotation
    there) with ``default``; ``parse(given, option name)`` checks a given value and returns the
    field's value, raising ValueError with what is wrong; ``doc`` is its entry in ``Args``;
    ``aliases`` are other names ``persistf`` accepts for it (given both, they must agree)."""
    return dataclasses.field(metadata={"accepts": accepts, "default": default, "parse": parse,
                                       "doc": doc, "aliases": aliases})


@dataclass(frozen=True)
class PersistOptions:
    """The decorator's options, validated: the one place they are listed (module docstring)."""

    groupby: Tuple[GroupSpec, ...] = option(
        Optional[Sequence[Union[str, Sequence[str]]]], None, _groups,
        "argument names (or tuples of names, joined with ``$$``) whose values become "
        "sub-folders of the function's folder; each leaf folder is one store.")
    expand_dict_kwargs: Union[str, Tuple[str, ...]] = option(
        Optional[Union[str, Sequence[str]]], None, _expanded,
        "dict arguments stored as ``\"arg|key\"`` entries (``'all'``: every dict, "
        "recursively), as persist-to-disk 0.0.7 did. Dicts are keyed correctly without this; "
        "it only shapes the stored key tuple.")
    skip_kwargs: Tuple[str, ...] = option(
        Optional[Sequence[str]], None, _names,
        "arguments that do not change the result (device, verbosity, ...).")
    hashsize: Optional[int] = option(
        Optional[int], None, _unless_none(parse_hashsize),
        "number of hash buckets (default from config, 500). With ``lock_granularity='call'`` "
        "each bucket has its own lock.",
        aliases=("hash_size",))
    lock_granularity: Optional[LockScope] = option(
        Optional[str], None, _unless_none(lambda value, _: LockScope.parse(value)),
        "``'call'`` (default: one lock per bucket), ``'func'`` (per leaf) or ``'global'`` "
        "(per project) -- which computing calls wait for each other.")
    switch_kwarg: str = option(
        str, "cache_switch", _keyword,
        "name of the call-time keyword that selects the mode (NOCACHE, CACHE, RECACHE, "
        "READONLY, CHECKONLY); it is removed before the function is called.")
    cache: Optional[int] = option(
        Optional[int], None, _unless_none(parse_mode),
        "a mode for every call of this function (overrides the call-time keyword).")
    hash_method: str = option(
        str, "pickle", _hash_method,
        "``'pickle'`` or ``'json'``, the 0.0.7 bucket formula recorded for exports to 0.0.7; "
        "lookups here always use a stable digest of the arguments.")
    local: bool = option(
        bool, False, _flag,
        "store under ``persist_path_local`` instead of ``persist_path``.")
    durability: Optional[Durability] = option(
        Optional[str], None, _unless_none(lambda value, _: Durability.parse(value)),
        "``'standard'`` (default), ``'full'`` or ``'fast'``; see README.")
    lock_timeout: Optional[float] = option(
        Optional[float], None, _seconds,
        "seconds to wait for another process computing the same call before computing anyway "
        "(the result is still stored); ``None`` waits.")
    remote: bool = option(
        bool, True, _flag,
        "``False`` keeps this function's results on this machine even when a shared cache "
        "(``remote = s3://...``) is configured.")
    version: Any = option(
        Any, None, lambda value, name: check_version(value, name),
        "any value that can be keyed (``\"v2\"``, ``3``, a tuple): part of every call's "
        "identity. Bump it to compute anew after changing what the function computes; set it "
        "back to find the old results again. Nothing is deleted.")
    code_changes: Optional[str] = option(
        Optional[str], None, _unless_none(parse_code_changes),
        "what an edit of the function's code (or of a project helper it calls) does: "
        "``'warn'`` (default from config: results are returned, and a hit on a result stored "
        "by other code warns once), ``'recompute'`` (the code is part of the identity: edited "
        "code computes anew, reverted code hits its old results) or ``'ignore'``.")
    max_age: Optional[float] = option(
        Optional[Union[float, datetime.timedelta]], None, _unless_none(max_age_seconds),
        "seconds (or a ``timedelta``) a stored result stays good; an older one is computed "
        "again and stored as the newest version. ``None``: for ever.")
    max_age_kwarg: str = option(
        str, "cache_max_age", _keyword,
        "name of the call-time keyword that overrides ``max_age`` for one call (``None`` "
        "there: never expires); it is removed before the function is called.")


#: The option fields, in ``persistf``'s order.
FIELDS = dataclasses.fields(PersistOptions)
#: Every keyword ``persistf`` accepts besides ``func``, aliases included, with its default.
DEFAULTS: Dict[str, Any] = {name: field.metadata["default"] for field in FIELDS
                            for name in (field.name,) + field.metadata["aliases"]}


def check_names(given: Mapping[str, Any], caller: str = "persistf") -> None:
    """Python's own TypeError for a keyword that is no option (a typo must not pass)."""
    for name in given:
        if name not in DEFAULTS:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")


def signature(func_parameter: inspect.Parameter, returns: Any) -> inspect.Signature:
    """``persistf``'s signature: ``func_parameter``, then every option (and alias) as a
    keyword-only parameter with its annotation and default."""
    parameters = [func_parameter]
    for field in FIELDS:
        for name in (field.name,) + field.metadata["aliases"]:
            parameters.append(inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=field.metadata["default"],
                annotation=field.metadata["accepts"]))
    return inspect.Signature(parameters, return_annotation=returns)


def args_doc(indent: int = 8, width: int = 96) -> str:
    """The ``Args`` entries of ``persistf``'s docstring, one per option (aliases named with
    it: ``hashsize / hash_size: ...``), indented by ``indent`` and wrapped at ``width``."""
    entries = []
    for field in FIELDS:
        names = " / ".join((field.name,) + field.metadata["aliases"])
        entries.append(fill(f"{names}: {field.metadata['doc']}", width, " " * indent,
                            " " * (indent + 4)))
    return "\n".join(entries)




def fill(text: str, width: int, initial_indent: str, subsequent_indent: str) -> str:
    """``textwrap.fill(text, width, initial_indent=..., subsequent_indent=...,
    break_on_hyphens=False, break_long_words=False)``, the same text (tests/test_options_doc.py
    compares them) at a fifth of the cost: ``persistf``'s docstring is made at import, where
    ``textwrap.fill`` cost ~0.3 ms. It splits words with textwrap's own pattern."""
    import textwrap  # (its pattern, compiled already: logging's traceback imports textwrap)
    chunks = [chunk for chunk in textwrap.TextWrapper.wordsep_simple_re.split(
        text.expandtabs().translate(_SPACES)) if chunk]
    chunks.reverse()
    lines: List[str] = []
    while chunks:
        indent = subsequent_indent if lines else initial_indent
        room = width - len(indent)
        if lines and not chunks[-1].strip():
            del chunks[-1]  # (whitespace at the start of a line but the first)
        line: List[str] = []
        length = 0
        while chunks and length + len(chunks[-1]) <= room:
            length += len(chunks[-1])
            line.append(chunks.pop())
        if chunks and len(chunks[-1]) > room and not line:
            line.append(chunks.pop())  # (a word longer than a line: alone, unbroken)
        if line and not line[-1].strip():
            del line[-1]
        if line:
            lines.append(indent + "".join(line))
    return "\n".join(lines)


_SPACES = {ord(character): " " for character in "\t\n\x0b\x0c\r"}


def make_options(func: Callable, binder: CallBinder, **given: Any) -> PersistOptions:
    """Validate the decorator's options (``given`` as ``persistf`` received them, defaults
    left out) against ``func``'s signature, at decoration time."""
    check_names(given)
    where = f"persistf on {func.__qualname__}"
    values = {}
    for field in FIELDS:  # an option and its aliases: one value, or the same one twice
        name, default = field.name, field.metadata["default"]
        value = given.get(name, default)
        for alias in field.metadata["aliases"]:
            other = given.get(alias, default)
            if other is default:
                continue
            if value is not default and value != other:
                raise ConfigError(f"{where}: {name}={value} and {alias}={other} disagree; "
                                  "pass only one")
            value = other
        values[name] = value
    try:
        options = PersistOptions(**{field.name: field.metadata["parse"](values[field.name],
                                                                        field.name)
                                    for field in FIELDS})
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    _check_against_signature(func, binder, options, where)
    return options


def _check_against_signature(func: Callable, binder: CallBinder, options: PersistOptions,
                             where: str) -> None:
    """The options that name arguments must name ``func``'s parameters (unless it takes
    ``**kwargs``), each at most once; the mode keyword must not be one of them."""
    expand = options.expand_dict_kwargs
    listed = {"groupby": [n for spec in options.groupby
                          for n in (spec if isinstance(spec, tuple) else (spec,))],
              "skip_kwargs": list(options.skip_kwargs),
              "expand_dict_kwargs": [] if expand == "all" else list(expand)}
    everything: List[str] = []
    captured = set(captured_names(func))
    for option_name, names in listed.items():
        if binder.var_keyword is None:
            allowed = binder.names | captured if option_name == "skip_kwargs" else binder.names
            unknown = [n for n in names if n not in allowed]
            if unknown:
                what = ("a parameter or captured variable" if option_name == "skip_kwargs"
                        else "a parameter")
                raise ConfigError(f"{where}: {option_name} names {unknown}, which "
                                  f"{'is' if len(unknown) == 1 else 'are'} not {what} of "
                                  f"{func.__qualname__}{binder.signature}")
        everything.extend(names)
    repeated = sorted({n for n in everything if everything.count(n) > 1})
    if repeated:
        raise ConfigError(f"{where}: {repeated} appear in more than one of groupby, skip_kwargs "
                          "and expand_dict_kwargs; each argument may be listed once")
    switch_kwarg = options.switch_kwarg
    if switch_kwarg in binder.names:
        raise ConfigError(f"{where}: {func.__qualname__} has a parameter named {switch_kwarg!r}, "
                          "which is the keyword that selects the cache mode; pass "
                          "switch_kwarg='<another name>' to persistf")
    max_age_kwarg = options.max_age_kwarg
    if max_age_kwarg in binder.names:
        raise ConfigError(f"{where}: {func.__qualname__} has a parameter named "
                          f"{max_age_kwarg!r}, which is the keyword that sets a call's max_age; "
                          "pass max_age_kwarg='<another name>' to persistf")
    if max_age_kwarg == switch_kwarg:
        raise ConfigError(f"{where}: switch_kwarg and max_age_kwarg are both {switch_kwarg!r}; "
                          "give them different names")
