"""The decorated function: one call, step by step.

1. Pop the mode (``cache_switch=``); NOCACHE just calls the function.
2. Bind and normalise the arguments (0.0.7's rules) into groupby values and a key tuple.
3. Digest them (stable across processes); nothing has touched the disk yet, so an argument that
   cannot be keyed fails here and leaves nothing behind.
4. Look up the newest record in the leaf's store: no file lock, one short read transaction.
5. On a miss, take the lock of the scope (call/func/global), look again, compute, serialize,
   append the record, release. A computed result is never thrown away: if the lock cannot be
   had in ``lock_timeout`` or the store cannot be written (disk full, permissions), the call
   warns and still returns what it computed.
"""

import errno
import functools
import inspect
import logging
import math
import os
import sys
import threading
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import lmdb

from .binding import CallBinder
from .settings import Config, parse_hashsize
from .engine import (Durability, EngineError, LockScope, Record, Store,
                     StoreFormatError, Timeout, check_folder, check_trusted,
                     compute_lock, ensure_local_filesystem, lock_place, store_exists)
from .errors import CacheMissError, ConfigError, PersistWarning
from .keying import CallKeyer, CapturedValueChanging, CapturedValues, bucket_of, call_digest
from .locations import function_folder_name, function_name, leaf_folder, module_parts
from .modes import CACHE, CHECKONLY, NOCACHE, READONLY, RECACHE, parse_mode
from .normalization import GroupSpec, Normalizer, group_folder_names
from .serialization import (PYTHON_VERSION, IncompatibleRecord, check_loadable, dump_into,
                            dumps_key, loads)
from .engine.records import DamagedRecordError
from .errors import CorruptStoreError, UnpicklableResultError

HASH_METHODS = ("pickle", "json")
log = logging.getLogger("persist_to_disk")


@dataclass(frozen=True)
class PersistOptions:
    """The decorator's options, validated."""

    groupby: Tuple[GroupSpec, ...] = ()
    expand_dict_kwargs: Union[str, Tuple[str, ...]] = ()
    skip_kwargs: Tuple[str, ...] = ()
    hashsize: Optional[int] = None
    lock_granularity: Optional[LockScope] = None
    switch_kwarg: str = "cache_switch"
    cache: Optional[int] = None
    hash_method: str = "pickle"
    local: bool = False
    durability: Optional[Durability] = None
    lock_timeout: Optional[float] = None


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


def _groups(value) -> Tuple[GroupSpec, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    groups = []
    for spec in _iterable(value, "groupby"):
        if isinstance(spec, (tuple, list)):
            names = _names(spec, "a groupby tuple")
            if not names:
                raise ValueError("groupby has an empty tuple (), which names no argument "
                                 "and would make an empty folder name")
            groups.append(names)
        elif isinstance(spec, str):
            groups.append(spec)
        else:
            raise ValueError(f"groupby must list argument names or tuples of them; "
                             f"got {spec!r}")
    return tuple(groups)


def _iterable(value, option: str):
    try:
        return list(value)
    except TypeError:
        raise ValueError(f"{option} must be an argument name or a list of them; "
                         f"got {value!r}") from None


def _flag(value, option: str) -> bool:
    """A real boolean: ``local="no"`` would otherwise mean True."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"{option} must be True or False; got {value!r}")


def make_options(func: Callable, binder: CallBinder, *, groupby=None, expand_dict_kwargs=None,
                 skip_kwargs=None, hashsize=None, hash_size=None, lock_granularity=None,
                 switch_kwarg="cache_switch", cache=None, hash_method="pickle", local=False,
                 durability=None, lock_timeout=None) -> PersistOptions:
    """Validate the decorator's options against ``func``'s signature, at decoration time."""
    where = f"persistf on {func.__qualname__}"
    if hashsize is not None and hash_size is not None and hashsize != hash_size:
        raise ConfigError(f"{where}: hashsize={hashsize} and hash_size={hash_size} disagree; "
                          "pass only one")
    size = hashsize if hashsize is not None else hash_size
    try:
        groups = _groups(groupby)
        expand = "all" if expand_dict_kwargs == "all" else _names(expand_dict_kwargs,
                                                                   "expand_dict_kwargs")
        skip = _names(skip_kwargs, "skip_kwargs")
        local = _flag(local, "local")
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    group_names = [n for spec in groups for n in (spec if isinstance(spec, tuple) else (spec,))]
    listed = {"groupby": group_names, "skip_kwargs": list(skip),
              "expand_dict_kwargs": [] if expand == "all" else list(expand)}
    everything: List[str] = []
    captured = set(captured_names(func))
    for option, names in listed.items():
        if binder.var_keyword is None:
            allowed = binder.names | captured if option == "skip_kwargs" else binder.names
            unknown = [n for n in names if n not in allowed]
            if unknown:
                what = ("a parameter or captured variable" if option == "skip_kwargs"
                        else "a parameter")
                raise ConfigError(f"{where}: {option} names {unknown}, which "
                                  f"{'is' if len(unknown) == 1 else 'are'} not {what} of "
                                  f"{func.__qualname__}{binder.signature}")
        everything.extend(names)
    repeated = sorted({n for n in everything if everything.count(n) > 1})
    if repeated:
        raise ConfigError(f"{where}: {repeated} appear in more than one of groupby, skip_kwargs "
                          "and expand_dict_kwargs; each argument may be listed once")
    if not isinstance(switch_kwarg, str) or not switch_kwarg:
        raise ConfigError(f"{where}: switch_kwarg must be a keyword name; got {switch_kwarg!r}")
    if switch_kwarg in binder.names:
        raise ConfigError(f"{where}: {func.__qualname__} has a parameter named {switch_kwarg!r}, "
                          "which is the keyword that selects the cache mode; pass "
                          "switch_kwarg='<another name>' to persistf")
    if hash_method not in HASH_METHODS:
        raise ConfigError(f"{where}: hash_method must be 'pickle' or 'json'; got {hash_method!r}")
    if lock_timeout is not None and (not isinstance(lock_timeout, (int, float))
                                     or isinstance(lock_timeout, bool)
                                     or not 0 <= lock_timeout < math.inf):
        raise ConfigError(f"{where}: lock_timeout must be None (wait) or seconds >= 0; "
                          f"got {lock_timeout!r}")
    try:
        return PersistOptions(
            groupby=groups,
            expand_dict_kwargs=expand,
            skip_kwargs=skip,
            hashsize=parse_hashsize(size, "hashsize") if size is not None else None,
            lock_granularity=(LockScope.parse(lock_granularity)
                              if lock_granularity is not None else None),
            switch_kwarg=switch_kwarg,
            cache=parse_mode(cache, "cache") if cache is not None else None,
            hash_method=hash_method,
            local=local,
            durability=Durability.parse(durability) if durability is not None else None,
            lock_timeout=lock_timeout,
        )
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


class PersistedFunction:
    """Everything a decorated function needs per call, computed once."""

    def __init__(self, func: Callable, config: Config, binder: CallBinder,
                 options: PersistOptions) -> None:
        self.func = func
        self.config = config
        self.binder = binder
        self.options = options
        self.name = function_name(func, config.get_project_path())  # never "__main__.f"
        self.normalizer = Normalizer(options.skip_kwargs, options.expand_dict_kwargs,
                                     options.groupby)
        self.group_names = tuple("$$".join(spec) if isinstance(spec, tuple) else spec
                                 for spec in options.groupby)
        # What a closure captures, keyed as it is at each call (None: it captures nothing).
        self.captured = captured_values(func, options.skip_kwargs)
        if self.captured is not None:
            try:
                self.captured.current()  # report values that cannot be keyed at decoration
            except CapturedValueChanging:  # (reported; each call keys them again)
                pass
            self.func = _bracketing_runs(func, self.captured)
        self._resolve_lock = threading.Lock()  # replaced in a forked child: _after_fork_in_child
        _INSTANCES.add(self)
        self._version = None
        self._leaves: Dict[Tuple[str, ...], Store] = {}
        self._metas: Dict[str, dict] = {}
        self._warned: set = set()
        self.folder = ""
        self.project_root = ""
        self.hashsize = 0
        self.scope = LockScope.CALL
        self.durability = Durability.STANDARD

    @property
    def closure_key(self) -> Tuple[Tuple[str, bytes], ...]:
        """The key entries of the captured variables as they are now (``()`` for a function
        that captures none, or whose captured values are all empty, skipped or unkeyable)."""
        captured = self.captured
        return captured.current()[2] if captured is not None else ()

    # --- where the cache is ---------------------------------------------------------------
    def resolve(self) -> None:
        """(Re)compute the function's folder and settings from the current config."""
        with self._resolve_lock:
            config, options = self.config, self.options
            version = config.version
            root = config.get_project_persist_path(options.local)
            ensure_local_filesystem(root)
            self.folder = os.path.join(
                root, *module_parts(self.func, config.get_project_path()),
                function_folder_name(self.func))
            check_trusted(self.folder)  # before computing, not after: a planted cache is code
            self.project_root = root
            self.hashsize = options.hashsize or config.get_hashsize()
            self.scope = options.lock_granularity or config.get_lock_granularity()
            self.durability = options.durability or config.get_durability()
            self._leaves = {}
            self._metas = {}
            self._version = version

    def store_for(self, group_values: Tuple[Any, ...]) -> Store:
        if self._version != self.config.version:
            self.resolve()
        groupby = self.options.groupby
        names = group_folder_names(groupby, group_values) if groupby else ()
        store = self._leaves.get(names)
        if store is None:
            path = leaf_folder(self.folder, groupby, names)
            check_folder(path)  # before any work: a foreign folder fails fast, not after compute
            store = Store(path, self.durability)
            self._leaves[names] = store
        return store

    def _meta(self, store: Store) -> dict:
        """The store's description (written with its first record); built once per store,
        since ``relpath`` alone costs several µs on every miss."""
        meta = self._metas.get(store.path)
        if meta is None:
            meta = self._metas[store.path] = self._describe(store)
        return meta

    def _describe(self, store: Store) -> dict:
        return {"function": self.name, "hashsize": self.hashsize,
                "hash_method": self.options.hash_method,
                "groupby": [list(s) if isinstance(s, tuple) else s for s in self.options.groupby],
                "leaf": os.path.relpath(store.path, self.folder)}

    # --- the call -------------------------------------------------------------------------
    def locate(self, args: tuple, kwargs: dict) -> Tuple[Store, int, bytes, tuple]:
        """``(store, bucket, digest, key tuple)`` of a call."""
        bound = self.binder.bind(args, kwargs)
        group_values, key = self.normalizer.normalize(bound)
        digest = call_digest(group_values, key + self.closure_key, self.func.__qualname__,
                             self.group_names)
        store = self.store_for(group_values)
        return store, bucket_of(digest, self.hashsize), digest, key

    def __call__(self, args: tuple, kwargs: dict) -> Any:
        options = self.options
        if options.cache is None and not (kwargs and options.switch_kwarg in kwargs):
            # The hot path (CACHE mode): the call's shape is bound once and later calls of that
            # shape go straight to the digest (keying.CallKeyer); the general path below is
            # taken for what it does not plan (groupby, expand_dict_kwargs, *args, errors).
            try:
                keyer = self._keyer
            except AttributeError:
                keyer = self._keyer = CallKeyer(
                    self.binder.bind, options.skip_kwargs,
                    self.captured if self.captured is not None else (),
                    plannable=not (options.groupby or options.expand_dict_kwargs))
            try:
                digest = keyer.digest(args, kwargs)
            except CapturedValueChanging:  # no stable key: neither read nor write the cache
                return self.func(*args, **kwargs)
            if digest is not None:
                store = self._leaves.get(()) if self._version == self.config.version else None
                if store is None:
                    store = self.store_for(())
                bucket = int.from_bytes(digest[:8], "big") % self.hashsize  # keying.bucket_of
                found, value = self._load(store, bucket, digest)
                if found:
                    return value
                return self._compute(store, bucket, digest, keyer.key(args, kwargs), args,
                                     kwargs, CACHE)
        switch = options.switch_kwarg
        mode = CACHE
        if switch in kwargs:
            mode = parse_mode(kwargs.pop(switch), switch)
        if self.options.cache is not None:
            mode = self.options.cache
        if mode == NOCACHE:
            return self.func(*args, **kwargs)
        try:
            store, bucket, digest, key = self.locate(args, kwargs)
        except CapturedValueChanging as err:  # no stable key: neither read nor write the cache
            if mode == CHECKONLY:
                return False
            if mode == READONLY:
                raise CacheMissError(
                    f"READONLY: {self.name} cannot look its result up: {err}, by another "
                    "thread. Call it when that thread leaves the variable alone, or without "
                    "cache_switch (or with CACHE) to compute it.") from None
            return self.func(*args, **kwargs)
        if mode == CHECKONLY:
            return self._load(store, bucket, digest, value=False)[0]
        if mode != RECACHE:
            found, value = self._load(store, bucket, digest)
            if found:
                return value
            if mode == READONLY:
                raise CacheMissError(
                    f"READONLY: no stored result of {self.name} for this call in {store.path}. "
                    "Call without cache_switch (or with CACHE) to compute it.")
        return self._compute(store, bucket, digest, key, args, kwargs, mode)

    def _load(self, store: Store, bucket: int, digest: bytes, value: bool = True
              ) -> Tuple[bool, Any]:
        """``(found, result)``; with ``value=False`` only whether a loadable-looking record is
        there: its header is read and checked, the value is neither copied nor unpickled
        (CHECKONLY, ``is_cached()``: the result may be large).

        A record that fails its checksum (damaged on disk) is a miss with a warning, never a
        value; it is kept for inspection, and the call stores a newer version.
        """
        try:
            if not value:
                record = store.latest(bucket, digest, with_value=False)
                if record is None:
                    return False, None
                check_loadable(record.serializer, record.python_version)
                return True, None
            found = store.load_latest(bucket, digest, _load_value)
            if found is None:
                return False, None
            return True, found[1]
        except DamagedRecordError as err:
            self._warn_once(store.path, "damaged",
                            f"A stored result of {self.name} in {store.path} is damaged ({err}); "
                            "computing it again and storing a newer version. The damaged record "
                            f"is kept for inspection: run `ptd verify {store.path}`.")
            return False, None
        except (IncompatibleRecord, StoreFormatError) as err:
            self._warn_once(store.path, "load",
                            f"A stored result of {self.name} in {store.path} {err}; computing it "
                            "again and storing a newer version (the old record is kept).")
            return False, None
        except PermissionError as err:
            self._warn_once(store.path, "read",
                            f"Cannot read the cache of {self.name}: {err} Computing without it.")
            return False, None

    def _compute(self, store: Store, bucket: int, digest: bytes, key: tuple, args: tuple,
                 kwargs: dict, mode: int) -> Any:
        path, offset = lock_place(self.scope, store.path, digest, self.project_root)
        lock = compute_lock(path, offset, self.options.lock_timeout, call=(store.path, digest))
        try:
            unlocked_because = lock.acquire()
            if unlocked_because is not None:  # a nested call that must not wait: never hang
                log.warning("Computing %s without its compute lock: %s. The result is stored "
                            "as usual; at worst another process computes the same call too.",
                            self.name, unlocked_because)
        except Timeout:
            self._warn_once(store.path, "lock",
                            f"Could not lock {path} within {self.options.lock_timeout}s; "
                            f"computing {self.name} without the lock (the result is still "
                            "stored, but another process may compute the same call).")
        except OSError as err:  # read-only filesystem, permissions: the result still matters
            self._warn_once(store.path, "lock",
                            f"Cannot create or take the lock {path} ({err}); computing "
                            f"{self.name} without it.")
        try:
            if mode != RECACHE:
                found, value = self._load_or_imported(store, bucket, digest, key)
                if found:
                    return value
            started = time.perf_counter()
            value = self.func(*args, **kwargs)
            elapsed = time.perf_counter() - started
            self._save(store, bucket, digest, key, value, elapsed)
            return value
        finally:
            lock.release()

    def _load_or_imported(self, store: Store, bucket: int, digest: bytes, key: tuple
                          ) -> Tuple[bool, Any]:
        """:meth:`_load`, then a result imported from persist-to-disk 0.0.7 (``ptd import-pkl``)
        under 0.0.7's spelling of this call (groupby values only as folder names, a Namespace
        as JSON text); one found there is stored again under this call's own digest, so the next
        call is a plain hit. Only on the miss path, inside the lock."""
        found, value = self._load(store, bucket, digest)
        try:
            keys_captured = found or bool(self.closure_key)
        except CapturedValueChanging:
            keys_captured = True
        if keys_captured:  # 0.0.7 did not key captured variables: never guess
            return found, value
        from .legacy.lookup import find_imported
        record = find_imported(store, key, self.hashsize, bool(self.options.groupby))
        if record is None:
            return False, None
        try:
            value = loads(record.value_blob, record.serializer, record.python_version)
        except IncompatibleRecord:
            return False, None
        self._save(store, bucket, digest, key, value, record.compute_seconds)
        return True, value

    def _save(self, store: Store, bucket: int, digest: bytes, key: tuple, value: Any,
              compute_seconds: float) -> None:
        """Store a computed result; never raise for what only costs caching (the caller returns
        the result whatever happens here).

        The result is pickled straight into the record's buffer (one copy of it besides the
        object, plus LMDB's while it writes). A result that neither pickle nor cloudpickle can
        serialize is not stored: warned once per function, and every call computes it.
        """
        what = f"The result of {self.name}"
        try:
            store.append_value(bucket, digest, lambda out: dump_into(out, value, what),
                               created=time.time(), compute_seconds=compute_seconds,
                               python_version=PYTHON_VERSION, key_blob=dumps_key(key),
                               meta=self._meta(store))
        except UnpicklableResultError as err:
            result_type = type(value)
            self._warn_once("", "unpicklable",
                            f"{self.name} returned a {result_type.__module__}."
                            f"{result_type.__qualname__}, which neither pickle nor cloudpickle "
                            f"can serialize ({_cause(err)}). The result is returned but not "
                            "cached, so every call computes it again. Return a picklable value "
                            "(for example the path of a file you save yourself), or call it "
                            "with cache_switch=0 (NOCACHE) where it cannot be cached.")
        except CorruptStoreError as err:
            self._warn_once(store.path, "save",
                            f"Could not store the result of {self.name}: {err} The call "
                            "returns its result, but it is not cached.")
        except EngineError:
            raise
        except (lmdb.Error, OSError) as err:
            self._warn_once(store.path, "save",
                            f"Could not store the result of {self.name} in {store.path} ({err}). "
                            f"The call returns its result, but it is not cached: {_remedy(err)}")

    def _warn_once(self, path: str, kind: str, message: str) -> None:
        if (path, kind) not in self._warned:
            self._warned.add((path, kind))
            warnings.warn(message, PersistWarning, stacklevel=_caller_stacklevel())

    # --- inspecting and clearing ----------------------------------------------------------
    def stores(self) -> List[Store]:
        """Every leaf store of the function that exists on disk."""
        if self._version != self.config.version:
            self.resolve()
        found = []
        for folder, subfolders, _ in os.walk(self.folder):
            if store_exists(folder):
                found.append(Store(folder, self.durability))
                subfolders.clear()
            subfolders.sort()
        return found

    def info(self) -> dict:
        stats = [store.stats() for store in self.stores()]
        return {"function": self.name, "folder": self.folder, "leaves": len(stats),
                "entries": sum(s.entries for s in stats),
                "versions": sum(s.versions for s in stats),
                "file_bytes": sum(s.file_bytes for s in stats)}

    def clear(self) -> int:
        return sum(store.clear() for store in self.stores())

    def is_cached(self, args: tuple, kwargs: dict) -> bool:
        """Whether a result is stored (by its record's header; the value is neither copied nor
        unpickled), whatever mode ``cache=`` forces on calls. A stored value whose class has
        since gone still counts, though the next call recomputes it; a record whose header is
        damaged does not."""
        kwargs.pop(self.options.switch_kwarg, None)
        try:
            store, bucket, digest, _ = self.locate(args, kwargs)
        except CapturedValueChanging:  # no stable key, so nothing can be found under it
            return False
        return self._load(store, bucket, digest, value=False)[0]

    def forget(self, args: tuple, kwargs: dict) -> bool:
        """Append a tombstone if a result is stored (its header is read, never its value)."""
        kwargs.pop(self.options.switch_kwarg, None)
        try:
            store, bucket, digest, _ = self.locate(args, kwargs)
        except CapturedValueChanging:  # no stable key: nothing to delete under it
            return False
        return store.delete(bucket, digest)


_PACKAGE_FOLDER = os.path.dirname(os.path.abspath(__file__))


_REMEDIES = {
    errno.ENOSPC: "the disk is full; free some space there.",
    errno.EDQUOT: "your disk quota is used up; free some space there.",
    errno.EMFILE: "this process has too many open files; raise `ulimit -n`.",
    errno.ENFILE: "the system has too many open files; close some programs.",
    errno.EACCES: "give your user write permission there.",
    errno.EPERM: "give your user write permission there.",
    errno.EROFS: "that filesystem is read-only; point persist_path at a writable one.",
}


def _remedy(err: BaseException) -> str:
    """What to do about a failed store write, by its cause (an LMDB map-full error is a full
    disk: the map only fails to grow when the file cannot)."""
    if isinstance(err, lmdb.MapFullError):
        return _REMEDIES[errno.ENOSPC]
    return _REMEDIES.get(getattr(err, "errno", None),
                         "check free disk space and write permission there.")


def _cause(err: Exception) -> str:
    cause = err.__cause__ or err
    return f"{type(cause).__name__}: {cause}"


def _load_value(record: Record) -> Any:
    """Unpickle a record's result (run by the engine inside its read transaction for large
    results, which are then never copied out of the memory map)."""
    return loads(record.value_blob, record.serializer, record.python_version)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the user's line, not at this package."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_FOLDER):
        frame, level = frame.f_back, level + 1
    return level


def _layers(func: Callable) -> List[Callable]:
    """``func`` and every function it wraps (``__wrapped__``), outermost first."""
    layers, seen = [], set()
    while func is not None and id(func) not in seen:
        seen.add(id(func))
        layers.append(func)
        func = getattr(func, "__wrapped__", None)
    return layers


def captured_names(func: Callable) -> Tuple[str, ...]:
    """Names of the variables ``func`` (and the functions it wraps) capture from enclosing
    functions: they count as implicit arguments, which ``skip_kwargs`` may name."""
    return tuple(name for layer in _layers(func)
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
    layers = _layers(func)
    layer_ids = frozenset(id(layer) for layer in layers)

    def is_layer(value: Any, _alive: tuple = tuple(layers)) -> bool:  # (ids stay theirs)
        """The next layer of the chain, or a reference back to it (the decorated wrapper)."""
        return id(value) in layer_ids or id(getattr(value, "__wrapped__", None)) in layer_ids

    captured = []
    for depth, layer in enumerate(layers):
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


def _bracketing_runs(func: Callable, captured: CapturedValues) -> Callable:
    """``func``, telling ``captured`` when each run starts and ends (also when it raises), so
    that what a run changes in place in a captured value (a list of calls it appends to, a
    dict it memoizes into) is keyed as it was before the run: later calls keep hitting,
    without naming the variable in skip_kwargs. Nothing after the run may raise into the
    call: a computed result is never thrown away for the sake of bookkeeping."""
    @functools.wraps(func)
    def run(*args, **kwargs):
        started = captured.begin_run()
        try:
            return func(*args, **kwargs)
        finally:
            try:
                captured.end_run(started)
            except Exception:  # (end_run catches its own; this is the last resort)
                log.debug("persistf on %s: noting what a run changed in its captured "
                          "variables failed", captured.function_name, exc_info=True)
    return run


def _warn_unkeyable_captured(qualname: str, name: str, err: Exception) -> None:
    warnings.warn(
        f"persistf on {qualname}: the captured variable {name!r} cannot be part of the cache key "
        f"({err}); closures that differ only in it will share cached results. Pass it as an "
        "argument instead, or list it in skip_kwargs if it does not change the result.",
        PersistWarning, stacklevel=_caller_stacklevel())


def _warn_changing_captured(qualname: str, name: str) -> None:
    warnings.warn(
        f"persistf on {qualname}: another thread kept changing the captured variable {name!r} "
        "while it was being keyed; a call keyed meanwhile computes its result without the cache "
        "(keyed by a state half-way through a change, it could return another state's "
        "result). Pass the value as an argument, or guard it with a lock the caller and that "
        "thread share, or list it in skip_kwargs if it does not change the result.",
        PersistWarning, stacklevel=_caller_stacklevel())


#: Every PersistedFunction of this process, for the fork hook below.
_INSTANCES: "weakref.WeakSet[PersistedFunction]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Give every decorated function a new resolve lock in a forked child: the child has only
    the thread that forked, so a lock another thread of the parent held at the fork (during
    a function's first call) would be held there for ever, and the child's first call of that
    function would hang. What that thread was resolving is redone: ``_version`` is set last."""
    for persisted in list(_INSTANCES):
        persisted._resolve_lock = threading.Lock()
        if persisted.captured is not None:  # a closure's runs under way: see after_fork
            persisted.captured.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def decorate(func: Callable, config: Config, **options) -> Callable:
    """Wrap ``func``; the wrapper keeps its name, docstring and signature, and pickles by
    reference (multiprocessing finds it under the same module and name)."""
    if isinstance(func, (staticmethod, classmethod)):
        raise TypeError("Put @persistf() below @staticmethod/@classmethod, directly on the "
                        "function.")
    if not callable(func) or not hasattr(func, "__qualname__"):
        raise TypeError(f"persistf decorates functions defined with def; got {func!r:.100}. "
                        "Wrap it in a def (for a functools.partial, a def that calls it).")
    if "<lambda>" in func.__qualname__:
        raise TypeError(
            "persistf cannot cache a lambda: every lambda of a module would share one cache "
            "folder ('lambda') and return each other's results. Define it with def and a name.")
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func) \
            or inspect.isgeneratorfunction(func):
        raise TypeError(f"persistf cannot cache {func.__qualname__}: it returns a coroutine or "
                        "a generator, not a result. Cache a function that returns the finished "
                        "result (for example a list, or the awaited value).")
    binder = CallBinder(func)
    persisted = PersistedFunction(func, config, binder, make_options(func, binder, **options))

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return persisted(args, kwargs)

    def is_cached(*args, **kwargs) -> bool:
        """Whether a result is stored for this call (never computes)."""
        return persisted.is_cached(args, kwargs)

    def forget(*args, **kwargs) -> bool:
        """Delete the stored result of this call (appends a tombstone); return if there was one."""
        return persisted.forget(args, kwargs)

    def cache_folder() -> str:
        """The function's folder in the cache tree (groupby leaves are below it)."""
        if persisted._version != config.version:
            persisted.resolve()
        return persisted.folder

    wrapper.is_cached = is_cached
    wrapper.forget = forget
    wrapper.cache_folder = cache_folder
    wrapper.cache_info = persisted.info
    wrapper.clear = persisted.clear
    wrapper.uncached = func
    wrapper.__persisted__ = persisted
    return wrapper
