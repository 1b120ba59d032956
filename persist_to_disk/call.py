"""The decorated function: one call, step by step.

1. Pop the mode (``cache_switch=``); NOCACHE just calls the function.
2. Bind and normalise the arguments (0.0.7's rules) into groupby values and a key tuple.
3. Digest them (stable across processes); nothing has touched the disk yet, so an argument that
   cannot be keyed fails here and leaves nothing behind. The call's place in storage is then
   a :class:`CallPlace`: the leaf's store, the bucket and digest that address the call in it,
   and the key tuple stored with its record.
4. Look up the newest record in the leaf's store: no file lock, one short read transaction.
5. On a miss, take the store's compute lock for the call (scope call/func/global), look again,
   compute, serialize, append the record, release. A computed result is never thrown away: if
   the lock cannot be had in ``lock_timeout`` or the store cannot be written (disk full,
   permissions), the call warns and still returns what it computed.

Storage is reached only through the settings' storage tier (``config.storage()``, an
:class:`~.engine.interface.StorageTier`): it opens a leaf's store having checked the folder
(local filesystem, trust, foreign files), hands out the compute lock, and raises only engine
errors. This module never runs those checks itself and never sees LMDB.
"""

import errno
import functools
import inspect
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, NamedTuple, Tuple

from .binding import CallBinder
from .engine import (CallStore, CorruptStoreError, DamagedRecordError, Durability, EngineError,
                     LockScope, Record, StorageIOError, StoreFormatError, Timeout)
from .errors import CacheMissError, UnpicklableResultError, warn
from .identity import bracketing_runs, captured_values
from .imported import find_imported
from .keying import CallKeyer, CapturedValueChanging, bucket_of, call_digest
from .locations import function_folder_name, function_name, leaf_folder, module_parts
from .modes import CACHE, CHECKONLY, NOCACHE, READONLY, RECACHE, parse_mode
from .normalization import Normalizer, group_folder_names
from .options import PersistOptions, make_options
from .serialization import (PYTHON_VERSION, IncompatibleRecord, check_loadable, dump_into,
                            dumps_key, loads)
from .settings import Config

log = logging.getLogger("persist_to_disk")


class CallPlace(NamedTuple):
    """Where one call's records live: the leaf's ``store``, the ``bucket`` and ``digest`` that
    address the call in it, and the ``key`` tuple stored with its record (``ptd ls``, exports
    to 0.0.7, the lookup of imported entries)."""

    store: CallStore
    bucket: int
    digest: bytes
    key: tuple


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
            self.func = bracketing_runs(func, self.captured)
        self._resolve_lock = threading.Lock()  # replaced in a forked child: _after_fork_in_child
        _INSTANCES.add(self)
        self._version = None
        self._leaves: Dict[Tuple[str, ...], CallStore] = {}
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
        """(Re)compute the function's folder and settings from the current config. Only
        folders are computed here: the storage tier checks a leaf when it opens its store."""
        with self._resolve_lock:
            config, options = self.config, self.options
            version = config.version
            root = config.get_project_persist_path(options.local)
            self.folder = os.path.join(
                root, *module_parts(self.func, config.get_project_path()),
                function_folder_name(self.func))
            self.project_root = root
            self.hashsize = options.hashsize or config.get_hashsize()
            self.scope = options.lock_granularity or config.get_lock_granularity()
            self.durability = options.durability or config.get_durability()
            self._leaves = {}
            self._version = version

    def store_for(self, group_values: Tuple[Any, ...]) -> CallStore:
        """The store of the leaf these groupby values select, opened (and so checked: a file,
        a foreign or untrusted folder fails here, before any work) once per leaf.

        Duplicated in :meth:`fast_path`, which looks the ungrouped leaf up inline: change both.
        """
        if self._version != self.config.version:
            self.resolve()
        groupby = self.options.groupby
        names = group_folder_names(groupby, group_values) if groupby else ()
        store = self._leaves.get(names)
        if store is None:
            leaf = leaf_folder(self.folder, groupby, names)
            store = self.config.storage(self.options.remote).open_store(
                leaf, self.durability, lock_root=self.project_root, meta=self._describe(leaf))
            self._leaves[names] = store
        return store

    def _describe(self, leaf: str) -> dict:
        """The description of a leaf's store, written with its first record (the store is
        given it when opened: a record fetched from a shared tier brings none). Built once
        per leaf, since ``relpath`` alone costs several µs."""
        meta = {"function": self.name, "hashsize": self.hashsize,
                "hash_method": self.options.hash_method,
                "groupby": [list(s) if isinstance(s, tuple) else s for s in self.options.groupby],
                "leaf": os.path.relpath(os.path.abspath(leaf), self.folder)}
        if not self.options.remote:  # `ptd remote push` leaves its stores alone
            meta["remote"] = False
        return meta

    # --- the call -------------------------------------------------------------------------
    def locate(self, args: tuple, kwargs: dict) -> CallPlace:
        """Where a call's records live (the general path's keying, for every call shape)."""
        bound = self.binder.bind(args, kwargs)
        group_values, key = self.normalizer.normalize(bound)
        digest = call_digest(group_values, key + self.closure_key, self.func.__qualname__,
                             self.group_names)
        store = self.store_for(group_values)  # (first: it resolves self.hashsize)
        return CallPlace(store, bucket_of(digest, self.hashsize), digest, key)

    def fast_path(self, args: tuple, kwargs: dict) -> Any:
        """A call: the hot path (CACHE mode), else :meth:`general_path`.

        The call's shape is bound once and later calls of that shape go straight to the
        digest (:class:`~.keying.CallKeyer`); a hit then costs one dictionary lookup for the
        store and one read, and allocates no :class:`CallPlace` (only a miss builds one). The
        general path is taken for what the keyer does not plan (groupby, expand_dict_kwargs,
        ``*args``, errors) and for every other mode.
        """
        options = self.options
        if options.cache is None and not (kwargs and options.switch_kwarg in kwargs):
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
                # Duplicates store_for(()) (the ungrouped leaf) and keying.bucket_of inline,
                # a call and an attribute hop less per hit: change them together.
                store = self._leaves.get(()) if self._version == self.config.version else None
                if store is None:
                    store = self.store_for(())
                bucket = int.from_bytes(digest[:8], "big") % self.hashsize  # keying.bucket_of
                found, value = self._load(store, bucket, digest)
                if found:
                    return value
                return self._compute(CallPlace(store, bucket, digest, keyer.key(args, kwargs)),
                                     args, kwargs, CACHE)
        return self.general_path(args, kwargs)

    __call__ = fast_path

    def general_path(self, args: tuple, kwargs: dict) -> Any:
        """A call in any mode and of any shape: the mode popped, the call located, looked up,
        computed if needed."""
        options = self.options
        switch = options.switch_kwarg
        mode = CACHE
        if switch in kwargs:
            mode = parse_mode(kwargs.pop(switch), switch)
        if options.cache is not None:
            mode = options.cache
        if mode == NOCACHE:
            return self.func(*args, **kwargs)
        try:
            place = self.locate(args, kwargs)
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
            return self._load(place.store, place.bucket, place.digest, value=False)[0]
        if mode != RECACHE:
            found, value = self._load(place.store, place.bucket, place.digest)
            if found:
                return value
            if mode == READONLY:
                raise CacheMissError(
                    f"READONLY: no stored result of {self.name} for this call in "
                    f"{place.store.path}. Call without cache_switch (or with CACHE) to "
                    "compute it.")
        return self._compute(place, args, kwargs, mode)

    def _load(self, store: CallStore, bucket: int, digest: bytes, value: bool = True
              ) -> Tuple[bool, Any]:
        """``(found, result)``; with ``value=False`` only whether a loadable-looking record is
        there: its header is read and checked, the value is neither copied nor unpickled
        (CHECKONLY, ``is_cached()``: the result may be large). It takes a :class:`CallPlace`'s
        parts, not one, so that a hit on the hot path allocates none.

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
        except PermissionError as err:  # (the engine's StorageIOError for EACCES/EPERM is one)
            self._warn_once(store.path, "read",
                            f"Cannot read the cache of {self.name}: {err} Computing without it.")
            return False, None

    def _compute(self, place: CallPlace, args: tuple, kwargs: dict, mode: int) -> Any:
        store = place.store
        lock = store.compute_lock(place.bucket, place.digest, self.scope,
                                  self.options.lock_timeout)
        try:
            unlocked_because = lock.acquire()
            if unlocked_because is not None:  # a nested call that must not wait: never hang
                log.warning("Computing %s without its compute lock: %s. The result is stored "
                            "as usual; at worst another process computes the same call too.",
                            self.name, unlocked_because)
        except Timeout:
            self._warn_once(store.path, "lock",
                            f"Could not lock {lock.path} within {self.options.lock_timeout}s; "
                            f"computing {self.name} without the lock (the result is still "
                            "stored, but another process may compute the same call).")
        except OSError as err:  # read-only filesystem, permissions: the result still matters
            self._warn_once(store.path, "lock",
                            f"Cannot create or take the lock {lock.path} ({err}); computing "
                            f"{self.name} without it.")
        try:
            if mode != RECACHE:
                found, value = self._load_or_imported(place)
                if found:
                    return value
            started = time.perf_counter()
            value = self.func(*args, **kwargs)
            elapsed = time.perf_counter() - started
            self._save(place, value, elapsed, replace=mode == RECACHE)
            return value
        finally:
            lock.release()

    def _load_or_imported(self, place: CallPlace) -> Tuple[bool, Any]:
        """:meth:`_load`, then a result imported from persist-to-disk 0.0.7 (``ptd import-pkl``)
        under 0.0.7's spelling of this call (groupby values only as folder names, a Namespace
        as JSON text: :func:`~.imported.find_imported`); one found there is stored again under
        this call's own digest, so the next call is a plain hit. Only on the miss path, inside
        the lock."""
        found, value = self._load(place.store, place.bucket, place.digest)
        try:
            keys_captured = found or bool(self.closure_key)
        except CapturedValueChanging:
            keys_captured = True
        if keys_captured:  # 0.0.7 did not key captured variables: never guess
            return found, value
        record = find_imported(place.store, place.key, self.hashsize, bool(self.options.groupby))
        if record is None:
            return False, None
        try:
            value = loads(record.value_blob, record.serializer, record.python_version)
        except IncompatibleRecord:
            return False, None
        self._save(place, value, record.compute_seconds)
        return True, value

    def _save(self, place: CallPlace, value: Any, compute_seconds: float,
              replace: bool = False) -> None:
        """Store a computed result; never raise for what only costs caching (the caller returns
        the result whatever happens here). ``replace`` (RECACHE): a shared tier replaces the
        result it holds instead of keeping the first one.

        The result is pickled straight into the record's buffer (one copy of it besides the
        object, plus LMDB's while it writes). A result that neither pickle nor cloudpickle can
        serialize is not stored: warned once per function, and every call computes it.
        """
        store = place.store
        what = f"The result of {self.name}"
        try:
            store.append_value(place.bucket, place.digest,
                               lambda out: dump_into(out, value, what),
                               created=time.time(), compute_seconds=compute_seconds,
                               python_version=PYTHON_VERSION, key_blob=dumps_key(place.key),
                               replace=replace)
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
        except StorageIOError as err:  # (before EngineError: it is one)
            self._not_stored(store, err)
        except EngineError:
            raise
        except OSError as err:
            self._not_stored(store, err)

    def _not_stored(self, store: CallStore, err: OSError) -> None:
        self._warn_once(store.path, "save",
                        f"Could not store the result of {self.name} in {store.path} ({err}). "
                        f"The call returns its result, but it is not cached: {_remedy(err)}")

    def _warn_once(self, path: str, kind: str, message: str) -> None:
        if (path, kind) not in self._warned:
            self._warned.add((path, kind))
            warn(message)

    # --- inspecting and clearing ----------------------------------------------------------
    def stores(self) -> List[CallStore]:
        """Every leaf store of the function that exists on disk, found by the storage tier's
        walk (the one ``ptd ls`` and ``ptd clear`` use): a leaf below another store counts,
        as after a function's ``groupby`` changed."""
        if self._version != self.config.version:
            self.resolve()
        storage = self.config.storage(self.options.remote)
        durability, root = self.durability, self.project_root
        return [storage.open_store(leaf, durability, lock_root=root, meta=self._describe(leaf))
                for leaf in storage.find_stores(self.folder)]

    def info(self) -> dict:
        stats = [store.stats() for store in self.stores()]
        return {"function": self.name, "folder": self.folder, "leaves": len(stats),
                "entries": sum(s.entries for s in stats),
                "versions": sum(s.versions for s in stats),
                "file_bytes": sum(s.file_bytes for s in stats)}

    def clear(self) -> int:
        """Remove every stored result of the function, in every leaf and on every tier (a
        shared tier's objects included: else the next call would fetch them back)."""
        if self._version != self.config.version:
            self.resolve()
        return self.config.storage(self.options.remote).clear_tree(
            self.folder, lock_root=self.project_root)

    def is_cached(self, args: tuple, kwargs: dict) -> bool:
        """Whether a result is stored (by its record's header; the value is neither copied nor
        unpickled), whatever mode ``cache=`` forces on calls. A stored value whose class has
        since gone still counts, though the next call recomputes it; a record whose header is
        damaged does not."""
        kwargs.pop(self.options.switch_kwarg, None)
        try:
            place = self.locate(args, kwargs)
        except CapturedValueChanging:  # no stable key, so nothing can be found under it
            return False
        return self._load(place.store, place.bucket, place.digest, value=False)[0]

    def forget(self, args: tuple, kwargs: dict) -> bool:
        """Append a tombstone if a result is stored (its header is read, never its value)."""
        kwargs.pop(self.options.switch_kwarg, None)
        try:
            place = self.locate(args, kwargs)
        except CapturedValueChanging:  # no stable key: nothing to delete under it
            return False
        return place.store.delete(place.bucket, place.digest)


_REMEDIES = {
    errno.ENOSPC: "the disk is full; free disk space there.",
    errno.EDQUOT: "your disk quota is used up; free some space there.",
    errno.EMFILE: "this process has too many open files; raise `ulimit -n`.",
    errno.ENFILE: "the system has too many open files; close some programs.",
    errno.EACCES: "give your user write permission there.",
    errno.EPERM: "give your user write permission there.",
    errno.EROFS: "that filesystem is read-only; point persist_path at a writable one.",
}


def _remedy(err: OSError) -> str:
    """What to do about a failed store write, by its cause (the engine reports a map that
    could not grow as ``ENOSPC``: the map only fails to grow when the file cannot)."""
    return _REMEDIES.get(err.errno, "check free disk space and write permission there.")


def _cause(err: Exception) -> str:
    cause = err.__cause__ or err
    return f"{type(cause).__name__}: {cause}"


def _load_value(record: Record) -> Any:
    """Unpickle a record's result (run by the engine inside its read transaction for large
    results, which are then never copied out of the memory map)."""
    return loads(record.value_blob, record.serializer, record.python_version)


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


def decorate(func: Callable, config: Config, **options: Any) -> Callable:
    """Wrap ``func``; the wrapper keeps its name, docstring and signature, and pickles by
    reference (multiprocessing finds it under the same module and name). ``options`` are
    ``persistf``'s (:class:`~.options.PersistOptions`)."""
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
    fast_path = persisted.fast_path  # bound once: a call costs no attribute lookup for it

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return fast_path(args, kwargs)

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
