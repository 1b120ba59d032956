"""Bind a call's arguments to parameter names, as persist-to-disk 0.0.7 did, but fast.

0.0.7 builds ``{name: value}`` from the defaults, then the positional arguments, then the
keyword arguments, so ``f(1)``, ``f(a=1)`` and ``f(1, b=<default>)`` are one call. Doing that with
``inspect.signature(...).bind`` costs ~3.5 µs per call; the mapping below is computed once per
function and binding costs well under a microsecond. Invalid calls are re-bound with
``inspect`` only to raise Python's own ``TypeError``.
"""

import inspect
from typing import Any, Callable, Dict, Tuple

from .errors import UnkeyableArgumentError


class CallBinder:
    def __init__(self, func: Callable) -> None:
        self._func = func
        self.signature = inspect.signature(func)
        params = self.signature.parameters.values()
        kinds = inspect.Parameter
        self.positional = tuple(p.name for p in params
                                if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD))
        self.positional_only = frozenset(p.name for p in params
                                         if p.kind is kinds.POSITIONAL_ONLY)
        self.var_positional = next((p.name for p in params
                                    if p.kind is kinds.VAR_POSITIONAL), None)
        self.var_keyword = next((p.name for p in params if p.kind is kinds.VAR_KEYWORD), None)
        self.names = frozenset(p.name for p in params
                               if p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD))
        self.defaults = {p.name: p.default for p in params
                         if p.default is not inspect.Parameter.empty}
        self.required = tuple(p.name for p in params
                              if p.default is inspect.Parameter.empty
                              and p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD))

    def bind(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """``{parameter name: value}`` for every parameter, defaults included.

        Extra keyword arguments (``**kwargs``) appear under their own names; extra positional
        arguments (``*args``) as a tuple under ``"*args"`` (the parameter's name with its star,
        so a keyword called ``args`` is another call); a keyword that shares the name of a
        positional-only parameter (legal with ``**kwargs``) under ``"**name"``. Names starting
        with ``*`` are therefore reserved and refused as extra keywords.
        """
        positional = self.positional
        bound = dict(self.defaults)
        n_args = len(args)
        if n_args <= len(positional):
            bound.update(zip(positional, args))
        elif self.var_positional is not None:
            bound.update(zip(positional, args))
            bound["*" + self.var_positional] = tuple(args[len(positional):])
        else:
            self._raise_native(args, kwargs)
        if kwargs:
            for name, value in kwargs.items():
                if name in self.names:
                    if name in self.positional_only:
                        if self.var_keyword is None:
                            self._raise_native(args, kwargs)
                        bound["**" + name] = value
                        continue
                    if name in positional[:n_args]:
                        self._raise_native(args, kwargs)
                elif self.var_keyword is None:
                    self._raise_native(args, kwargs)
                elif name.startswith("*"):
                    raise UnkeyableArgumentError(
                        f"{self._func.__qualname__}() got the keyword argument {name!r}: names "
                        "starting with '*' are reserved for the cache key of *args. Rename it.")
                bound[name] = value
        for name in self.required:
            if name not in bound:
                self._raise_native(args, kwargs)
        return bound

    def _raise_native(self, args, kwargs) -> None:
        self.signature.bind(*args, **kwargs)  # raises Python's own TypeError for this call
        raise TypeError(f"{self._func.__qualname__}() got arguments it cannot bind")
