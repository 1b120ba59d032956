"""From bound arguments to the key tuple and the groupby values, as persist-to-disk 0.0.7.

Steps, in 0.0.7's order: drop ``skip_kwargs``; expand the dicts named in ``expand_dict_kwargs``
(or every dict, with ``'all'``) into ``"arg|sub"`` entries; pop the ``groupby`` values (they become
folder names); sort the rest into the key tuple ``((name, value), ...)``. The same normalisation
means caches can be exported to 0.0.7.

Where 0.0.7 is ambiguous we keep calls apart instead, so two different calls never share a key:

* a dict whose expansion would be ambiguous (``{1: x}`` and ``{"1": x}`` both give ``"arg|1"``; a
  key containing ``|``; an empty dict, which would vanish) is kept whole;
* with expansion on, an extra keyword (``**kwargs``) whose name contains ``|`` is refused, since
  it could spell an expanded entry;
* an ``argparse.Namespace`` stays a Namespace (keyed by its attributes, in any order); 0.0.7
  keyed its ``json.dumps`` text, under which ``(1, 2)`` and ``[1, 2]`` collide. Its JSON form
  is produced when exporting to 0.0.7.
"""

from typing import Any, Dict, List, Sequence, Tuple, Union

from .engine import FREE_NAME_MARK, is_internal_name
from .errors import UnkeyableArgumentError

GroupSpec = Union[str, Tuple[str, ...]]


def _expandable(value: Any) -> bool:
    return (type(value) is dict and bool(value)
            and all(type(k) is str and "|" not in k for k in value))


def _expand(name: str, value: Dict[str, Any], recursive: bool, out: Dict[str, Any]) -> None:
    for sub_name, sub_value in value.items():
        full_name = f"{name}|{sub_name}"
        if recursive and _expandable(sub_value):
            _expand(full_name, sub_value, recursive, out)
        else:
            out[full_name] = sub_value


class Normalizer:
    def __init__(self, skip_kwargs: Sequence[str], expand_dict_kwargs: Union[str, Sequence[str]],
                 groupby: Sequence[GroupSpec]) -> None:
        self.skip = tuple(skip_kwargs)
        self.expand_all = expand_dict_kwargs == "all"
        self.expand = () if self.expand_all else tuple(expand_dict_kwargs)
        self.groupby = tuple(groupby)
        self.trivial = not (self.skip or self.expand_all or self.expand or self.groupby)

    def normalize(self, bound: Dict[str, Any]
                  ) -> Tuple[Tuple[Any, ...], Tuple[Tuple[str, Any], ...]]:
        """Return ``(groupby values, key tuple)``; ``bound`` is consumed."""
        if self.trivial:
            return (), tuple(sorted(bound.items()))
        for name in self.skip:
            bound.pop(name, None)
        if self.expand_all or self.expand:
            for name in bound:
                if "|" in name:
                    raise UnkeyableArgumentError(
                        f"keyword argument {name!r}: with expand_dict_kwargs, names containing "
                        "'|' are reserved for expanded dict entries. Rename it.")
        if self.expand_all:
            expanded: Dict[str, Any] = {}
            for name, value in bound.items():
                if _expandable(value):
                    _expand(name, value, True, expanded)
                else:
                    expanded[name] = value
            bound = expanded
        else:
            for name in self.expand:
                if name in bound and _expandable(bound[name]):
                    _expand(name, bound.pop(name), False, bound)
        groups: List[Any] = []
        for spec in self.groupby:
            if isinstance(spec, tuple):
                groups.append(tuple(bound.pop(name, None) for name in spec))
            else:
                groups.append(bound.pop(spec, None))
        return tuple(groups), tuple(sorted(bound.items()))


def group_folder_names(groupby: Sequence[GroupSpec], values: Tuple[Any, ...]) -> Tuple[str, ...]:
    """Texts of the groupby values: ``str(value)``, tuple groups joined with ``$$`` (their folder
    names, once :func:`escape_folder_name` has kept them off the store's own names)."""
    names = []
    for spec, value in zip(groupby, values):
        if isinstance(spec, tuple):
            names.append("$$".join(str(v) for v in value))
        else:
            names.append(str(value))
    return tuple(names)


def _needs_escape(text: str) -> bool:
    """Whether ``text`` is escaped: it is one of a store's own names, or it is the escaped
    spelling of one (``%lock.mdb``, ``%%lock.mdb``, ...), which must then be escaped in turn."""
    while text.startswith(FREE_NAME_MARK):
        text = text[len(FREE_NAME_MARK):]
    return is_internal_name(text)


def escape_folder_name(text: str) -> str:
    """The leaf folder name of a groupby value's text: the text itself, except for names the
    storage engine keeps for itself (``lock.mdb``, ``data.mdb``, ``CURRENT``, ``locks``,
    ``gen-1``, ``func.lock``, ``*.tmp``: :func:`~engine.generations.is_internal_name`), which get
    a ``%`` in front. A leaf named like a store's own file would break the store above it (the
    function's folder is a store too once its groupby changed) or be deleted by its
    compaction. Texts that are escaped spellings of such names (``%lock.mdb``) get one more
    ``%``, so two values never share a folder; every other text, every ordinary value's folder
    of earlier versions included, is its own folder name."""
    return FREE_NAME_MARK + text if _needs_escape(text) else text


def unescape_folder_name(name: str) -> str:
    """The groupby text a leaf folder name stands for (the inverse of
    :func:`escape_folder_name`): 0.0.7, which has no store files, names that folder so."""
    if name.startswith(FREE_NAME_MARK) and _needs_escape(name[len(FREE_NAME_MARK):]):
        return name[len(FREE_NAME_MARK):]
    return name
