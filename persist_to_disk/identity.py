"""A decorated function's identity beyond its name: the layers it wraps and what it captures.

A function is cached under its module and qualified name (``locations.py``); closures made by
one factory share both, so the variables a nested function captures from its enclosing
function are implicit arguments of every call, keyed when it is called
(:func:`captured_values`), and names that ``skip_kwargs`` may list (:func:`captured_names`).
A function that captures something is run through :func:`bracketing_runs`, so that what a
run changes in place in a captured value does not change the next call's key. The wrapper
chain (``__wrapped__``, :func:`layers`) counts as one function: every layer's captured
variables are keyed, and references between layers (recursion, a wrapper's reference to what
it wraps) never are.
"""

import functools
import inspect
import logging
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .errors import warn
from .keying import CapturedValues

log = logging.getLogger("persist_to_disk")


def layers(func: Callable) -> List[Callable]:
    """``func`` and every function it wraps (``__wrapped__``), outermost first."""
    chain, seen = [], set()
    while func is not None and id(func) not in seen:
        seen.add(id(func))
        chain.append(func)
        func = getattr(func, "__wrapped__", None)
    return chain


def captured_names(func: Callable) -> Tuple[str, ...]:
    """Names of the variables ``func`` (and the functions it wraps) capture from enclosing
    functions: they count as implicit arguments, which ``skip_kwargs`` may name."""
    return tuple(name for layer in layers(func)
                 for name in getattr(getattr(layer, "__code__", None), "co_freevars", ()))


def captured_values(func: Callable, skip: Sequence[str] = ()) -> Optional[CapturedValues]:
    """What a nested function captures from its enclosing function, keyed at every call
    (:class:`~.keying.CapturedValues`); None when it captures nothing.

    Closures made by one factory (``make(k)`` returning a decorated ``add`` that uses ``k``)
    share a folder and a name, so what they capture must be part of every call's key, for the
    function and for every wrapper decorator layer around it. Names start with ``<closure>`` so
    they can never meet a parameter. The values are read when the function is called, not when
    it is decorated: a variable assigned after the ``def`` (``model = load(name)``), rebound
    with ``nonlocal`` or a dict filled later is keyed as the call sees it. What the function
    changes in a captured value while it runs (a list of calls it appends to) is not: later
    calls key that value as it was before the run (see :class:`~.keying.CapturedValues`). A
    captured value that cannot be keyed is left out with a warning (once per variable), since
    closures differing in it would share results; names in ``skip`` (the decorator's
    ``skip_kwargs``) are left out silently, for values the caller changes without changing the
    result (a start time for logging). The function itself and the layers of the wrapper chain
    (recursion, a wrapper's reference to what it wraps) are never keyed.
    """
    chain = layers(func)
    layer_ids = frozenset(id(layer) for layer in chain)

    def is_layer(value: Any, _alive: tuple = tuple(chain)) -> bool:  # (ids stay theirs)
        """The next layer of the chain, or a reference back to it (the decorated wrapper)."""
        return id(value) in layer_ids or id(getattr(value, "__wrapped__", None)) in layer_ids

    captured = []
    for depth, layer in enumerate(chain):
        cells = getattr(layer, "__closure__", None) or ()
        names = getattr(getattr(layer, "__code__", None), "co_freevars", ())
        for name, cell in zip(names, cells):
            if name not in skip:
                label = f"<closure>{name}" if depth == 0 else f"<closure{depth}>{name}"
                captured.append((name, label, cell))
    if not captured:
        return None
    return CapturedValues(captured, is_layer,
                          functools.partial(_warn_unkeyable_captured, func.__qualname__),
                          func.__qualname__,
                          functools.partial(_warn_changing_captured, func.__qualname__))


def bracketing_runs(func: Callable, captured: CapturedValues) -> Callable:
    """``func``, telling ``captured`` when each run starts and ends (also when it raises), so
    that what a run changes in place in a captured value (a list of calls it appends to, a
    dict it memoizes into) is keyed as it was before the run: later calls keep hitting,
    without naming the variable in skip_kwargs. Nothing after the run may raise into the
    call: a computed result is never thrown away for the sake of bookkeeping.

    For an ``async def`` the run is the awaited coroutine, from its first step to its result:
    calling ``func`` only creates the coroutine, and what it changes happens while it is
    awaited (:func:`bracketing_awaited_runs`)."""
    if inspect.iscoroutinefunction(func):
        return bracketing_awaited_runs(func, captured)

    @functools.wraps(func)
    def run(*args, **kwargs):
        started = captured.begin_run()
        try:
            return func(*args, **kwargs)
        finally:
            _end_run(captured, started)
    return run


def bracketing_awaited_runs(func: Callable, captured: CapturedValues) -> Callable:
    """:func:`bracketing_runs` for a coroutine function: a coroutine function again (same
    signature, ``inspect.iscoroutinefunction`` true), whose run begins when the coroutine is
    first stepped and ends when it returns, raises or is cancelled. Runs of concurrent tasks
    of one event loop overlap like runs of one thread's recursion: a captured value's changes
    are aliased when the last of them ends."""
    @functools.wraps(func)
    async def run(*args, **kwargs):
        started = captured.begin_run()
        try:
            return await func(*args, **kwargs)
        finally:
            _end_run(captured, started)
    return run


def _end_run(captured: CapturedValues, started: Any) -> None:
    """Tell ``captured`` a run ended; never raise into the call (its result is not thrown
    away for the sake of bookkeeping)."""
    try:
        captured.end_run(started)
    except Exception:  # (end_run catches its own; this is the last resort)
        log.debug("persistf on %s: noting what a run changed in its captured variables "
                  "failed", captured.function_name, exc_info=True)


def _warn_unkeyable_captured(qualname: str, name: str, err: Exception) -> None:
    warn(
        f"persistf on {qualname}: the captured variable {name!r} cannot be part of the cache key "
        f"({err}); closures that differ only in it will share cached results. Pass it as an "
        "argument instead, or list it in skip_kwargs if it does not change the result.")


def _warn_changing_captured(qualname: str, name: str) -> None:
    warn(
        f"persistf on {qualname}: another thread kept changing the captured variable {name!r} "
        "while it was being keyed; a call keyed meanwhile computes its result without the cache "
        "(keyed by a state half-way through a change, it could return another state's "
        "result). Pass the value as an argument, or guard it with a lock the caller and that "
        "thread share, or list it in skip_kwargs if it does not change the result.")
