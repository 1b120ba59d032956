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
import pickle
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from .binding import CallBinder
from .call_stats import SHARED_COUNTERS, ZERO, CallStats
from . import fingerprint as _fingerprint
from .code_identity import WARN, CodeIdentity
from .engine import (CallStore, CorruptStoreError, DamagedRecordError, Durability, EngineError,
                     LockScope, Record, StorageIOError, StoreFormatError, Timeout)
from .errors import CacheMissError, UnpicklableResultError, warn
from .identity import bracketing_runs, captured_values
from .imported import find_imported
from .keying import CallKeyer, CapturedValueChanging, bucket_of, call_digest, salted_hasher
from .locations import function_folder_name, function_name, leaf_folder, module_parts
from .modes import CACHE, CHECKONLY, NOCACHE, READONLY, RECACHE, parse_mode
from .normalization import Normalizer, group_folder_names
from .options import PersistOptions, make_options, max_age_seconds
from .serialization import (PICKLE_TAG, PYTHON_VERSION, IncompatibleRecord, cannot_load,
                            check_loadable, dump_into, dumps_key, loads)
from .settings import Config

log = logging.getLogger("persist_to_disk")
_pickle_loads = pickle.loads
_debug_enabled = log.isEnabledFor  # (bound once)
_DEBUG = logging.DEBUG
#: logging's own record of which levels the logger is enabled for (cleared in place whenever a
#: level changes; an empty dict where a Python has none): the hot path looks DEBUG up there,
#: ~0.015 µs, where ``isEnabledFor`` costs ~0.05 µs, and asks it only when it is not known.
_ENABLED_LEVELS = getattr(log, "_cache", None)
if not isinstance(_ENABLED_LEVELS, dict):
    _ENABLED_LEVELS = {}
_EXPIRED = object()  # what a loader returns for a stored result older than the call's max_age
_DECORATORS = object()  # a lookup's max_age left out: the decorator's
_RETRY = object()  # the hot path's read failed: _load reads again and reports why


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
        #: version, code policy and fingerprint (computed on the first call, never before)
        self.code = CodeIdentity(func, options.version, options.code_changes or WARN,
                                 config.get_project_path)
        self.stats = CallStats()
        self._hasher = salted_hasher(b"")
        self._salt = b""
        self._salted = False
        self._tag = ""  # the code tag written into records (resolve)
        self._check_code = False  # warn: compare each hit's code tag with _tag, until it warns
        self._loader = _load_value
        self._keyer: Any = None
        self._version = None
        self._folder_version = None
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
        """(Re)compute the function's settings and folder from the current config. Only
        folders are computed here: the storage tier checks a leaf when it opens its store."""
        self.resolve_identity()
        self._resolve_folder()

    def resolve_identity(self) -> None:
        """(Re)compute what keying a call needs from the current config (the code identity:
        hasher and keyer; ``hashsize``) and the lookup settings, and nothing that touches the
        disk: an argument that cannot be keyed must fail before the project is registered or
        any folder made. The folder follows at the first store opened (:meth:`store_for`)."""
        with self._resolve_lock:
            config, options = self.config, self.options
            version = config.version
            self.hashsize = options.hashsize or config.get_hashsize()
            self.scope = options.lock_granularity or config.get_lock_granularity()
            self.durability = options.durability or config.get_durability()
            self._resolve_code(options.code_changes or config.get_code_changes())
            self._loader = self._expiring_loader(options.max_age)
            self._leaves = {}
            self._version = version

    def _resolve_folder(self) -> None:
        """The function's folder under the project's persist path (which registers the
        project: ``project_to_pids.txt``)."""
        with self._resolve_lock:
            config, options = self.config, self.options
            version = self._version
            root = config.get_project_persist_path(options.local)
            self.folder = os.path.join(
                root, *module_parts(self.func, config.get_project_path()),
                function_folder_name(self.func))
            self.project_root = root
            self._leaves = {}
            self._folder_version = version

    def _resolved(self) -> None:
        """Settings and folder current (for what needs the folder without opening a store)."""
        if self._version != self.config.version:
            self.resolve_identity()
        if self._folder_version != self._version:
            self._resolve_folder()

    def _resolve_code(self, policy: str) -> None:
        """The code identity under ``policy``: the hasher every call digest starts from (the
        fingerprint, computed here on the first call under ``warn`` and ``recompute``, is part
        of it under ``recompute``; ``version`` always), the tag records are written with, and
        whether hits compare theirs with it. A new hasher needs a new keyer."""
        code = self.code
        code.policy = policy
        salt = code.salt()
        self._tag = code.tag()
        if self._keyer is None or salt != self._salt:
            self._salt = salt
            self._salted = bool(salt)
            self._hasher = salted_hasher(salt)
            self._keyer = CallKeyer(
                self.binder.bind, self.options.skip_kwargs,
                self.captured if self.captured is not None else (),
                plannable=not (self.options.groupby or self.options.expand_dict_kwargs),
                hasher=self._hasher)
        self._check_code = policy == WARN and ("", "code") not in self._warned

    def _expiring_loader(self, max_age: Optional[float]) -> Callable[[Record], Any]:
        """What a lookup loads a stored result with: unpickled, or :data:`_EXPIRED` (never
        unpickled) when it was stored more than ``max_age`` seconds ago by the settings'
        clock."""
        if max_age is None:
            return _load_value
        config = self.config

        def load_unless_expired(record: Record) -> Any:
            if _expired(config.clock() - record.created, max_age):
                return _EXPIRED
            return loads(record.value_blob, record.serializer, record.python_version)
        return load_unless_expired

    def store_for(self, group_values: Tuple[Any, ...]) -> CallStore:
        """The store of the leaf these groupby values select, opened (and so checked: a file,
        a foreign or untrusted folder fails here, before any work) once per leaf.

        Duplicated in :meth:`fast_path`, which looks the ungrouped leaf up inline: change both.
        """
        self._resolved()
        groupby = self.options.groupby
        names = group_folder_names(groupby, group_values) if groupby else ()
        store = self._leaves.get(names)
        if store is None:
            leaf = leaf_folder(self.folder, groupby, names)
            store = self.config.storage(self.options.remote).open_store(
                leaf, self.durability, lock_root=self.project_root, meta=self._describe(leaf))
            self._leaves[names] = store
            if _fingerprint._dirty_memos:  # (written once the call is known to be keyable)
                _fingerprint.save_memos()
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
        if self._version != self.config.version:
            self.resolve_identity()  # (first: the hasher, hashsize)
        bound = self.binder.bind(args, kwargs)
        group_values, key = self.normalizer.normalize(bound)
        digest = call_digest(group_values, key + self.closure_key, self.func.__qualname__,
                             self.group_names, self._hasher)
        store = self.store_for(group_values)
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
        if options.cache is None and not (kwargs and (options.switch_kwarg in kwargs
                                                      or options.max_age_kwarg in kwargs)):
            if self._version != self.config.version:
                self.resolve_identity()  # (the keyer and its hasher, hashsize, the loader)
            keyer = self._keyer
            try:
                digest = keyer.digest(args, kwargs)
            except CapturedValueChanging:  # no stable key: neither read nor write the cache
                return self.func(*args, **kwargs)
            if digest is not None:
                # Duplicates store_for(()) (the ungrouped leaf) and keying.bucket_of inline,
                # a call and an attribute hop less per hit: change them together.
                store = self._leaves.get(())
                if store is None:
                    store = self.store_for(())
                bucket = int.from_bytes(digest[:8], "big") % self.hashsize  # keying.bucket_of
                # A plain hit, inline: duplicates _load's hit branch (a call and a tuple less
                # per hit, which pays for the statistics): change them together. Logging at
                # DEBUG, a failed read (warned there) and anything unusual go through _load.
                found = _RETRY
                try:
                    debug = _ENABLED_LEVELS[_DEBUG]
                except KeyError:
                    debug = _debug_enabled(_DEBUG)
                if not debug:
                    try:
                        found = store.load_latest(bucket, digest, self._loader)
                    except Exception:
                        pass
                if found is _RETRY:
                    hit, value = self._load(store, bucket, digest)
                    if hit:
                        return value
                elif found is not None:
                    record, value = found
                    if value is not _EXPIRED:
                        if SHARED_COUNTERS:  # (CallStats.hit inline)
                            stats = self.stats
                            stats.hits += 1
                            stats.saved_seconds += record.compute_seconds
                        else:
                            self.stats.hit(record.compute_seconds)
                        if self._check_code and record.code and record.code != self._tag:
                            self._code_changed(record)
                        return value
                return self._compute(CallPlace(store, bucket, digest, keyer.key(args, kwargs)),
                                     args, kwargs, CACHE, options.max_age)
        return self.general_path(args, kwargs)

    __call__ = fast_path

    def take_modes(self, kwargs: dict) -> Tuple[int, Optional[float]]:
        """Pop the call-time keywords (mode, max age) from ``kwargs``: ``(mode, max_age)``,
        the decorator's ``cache=`` and ``max_age`` where the call gives none. A bad value is a
        ValueError naming the keyword."""
        options = self.options
        mode, max_age = CACHE, options.max_age
        if kwargs:
            switch = options.switch_kwarg
            if switch in kwargs:
                mode = parse_mode(kwargs.pop(switch), switch)
            if options.max_age_kwarg in kwargs:
                max_age = max_age_seconds(kwargs.pop(options.max_age_kwarg),
                                          options.max_age_kwarg)
        if options.cache is not None:
            mode = options.cache
        return mode, max_age

    def general_path(self, args: tuple, kwargs: dict) -> Any:
        """A call in any mode and of any shape: the mode popped, the call located, looked up,
        computed if needed."""
        mode, max_age = self.take_modes(kwargs)
        if mode == NOCACHE:
            return self.func(*args, **kwargs)
        try:
            place = self.locate(args, kwargs)
        except CapturedValueChanging as err:  # no stable key: neither read nor write the cache
            if mode == CHECKONLY:
                return False
            if mode == READONLY:
                self.stats.miss()
                raise CacheMissError(
                    f"READONLY: {self.name} cannot look its result up: {err}, by another "
                    "thread. Call it when that thread leaves the variable alone, or without "
                    "cache_switch (or with CACHE) to compute it.") from None
            return self.func(*args, **kwargs)
        if mode == CHECKONLY:
            return self._load(place.store, place.bucket, place.digest, False, max_age)[0]
        if mode != RECACHE:
            found, value = self._load(place.store, place.bucket, place.digest, True, max_age)
            if found:
                return value
            if mode == READONLY:
                self.stats.miss()
                log.debug("miss %s in %s bucket %d (READONLY: raising CacheMissError)",
                          self.name, place.store.path, place.bucket)
                raise CacheMissError(
                    f"READONLY: no stored result of {self.name} for this call in "
                    f"{place.store.path}"
                    f"{'' if max_age is None else f' newer than max_age={max_age:g}s'}. Call "
                    "without cache_switch (or with CACHE) to compute it.")
        return self._compute(place, args, kwargs, mode, max_age)

    def _load(self, store: CallStore, bucket: int, digest: bytes, value: bool = True,
              max_age: Any = _DECORATORS) -> Tuple[bool, Any]:
        """``(found, result)``; with ``value=False`` only whether a loadable-looking record is
        there: its header is read and checked, the value is neither copied nor unpickled
        (CHECKONLY, ``is_cached()``: the result may be large). It takes a :class:`CallPlace`'s
        parts, not one, so that a hit on the hot path allocates none. ``max_age``: seconds
        (None: for ever; left out: the decorator's) after which a stored result counts as
        absent. A hit is counted in :attr:`stats` here, and under ``code_changes='warn'`` its
        code is compared with the function's.

        A record that fails its checksum (damaged on disk) is a miss with a warning, never a
        value; it is kept for inspection, and the call stores a newer version.
        """
        debug = _debug_enabled(_DEBUG)
        started = time.perf_counter() if debug else 0.0
        try:
            if not value:
                record = store.latest(bucket, digest, with_value=False)
                if record is None:
                    return False, None
                if max_age is _DECORATORS:
                    max_age = self.options.max_age
                if max_age is not None and _expired(self.config.clock() - record.created,
                                                    max_age):
                    return False, None
                check_loadable(record.serializer, record.python_version)
                return True, None
            found = store.load_latest(
                bucket, digest, self._loader if max_age is _DECORATORS
                else self._expiring_loader(max_age))
            if found is None:  # (logged once, by _compute, not at each look)
                return False, None
            record, result = found
            if result is _EXPIRED:
                if debug:
                    log.debug("expired %s in %s bucket %d: stored %.0f s ago", self.name,
                              store.path, bucket, self.config.clock() - record.created)
                return False, None
            self.stats.hit(record.compute_seconds)
            if self._check_code and record.code and record.code != self._tag:
                self._code_changed(record)
            if debug:
                log.debug("hit %s in %s bucket %d (%.3f ms)", self.name, store.path, bucket,
                          (time.perf_counter() - started) * 1e3)
            return True, result
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

    def _code_changed(self, record: Record) -> None:
        """Under ``code_changes='warn'``: a hit returned a result stored by other code (its
        record's code tag has another fingerprint; records of unknown code carry none). Warned
        once per function and process; later hits are not compared any more."""
        fingerprint = record.code.partition("|")[0]
        if not fingerprint or fingerprint == self._tag.partition("|")[0]:
            return
        self._check_code = False
        stored = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.created))
        short = self.func.__name__
        self._warn_once(
            "", "code",
            f"{self.name} returned a result stored on {stored} by other code: the function, "
            "or a project helper it calls, has changed since (code fingerprint "
            f"{fingerprint[:12]}, now {self._tag[:12]}). Stored results are still returned "
            "(code_changes='warn'). To compute anew after an edit, decorate it with "
            "persistf(code_changes='recompute') (reverting the edit then finds the old results "
            f"again) or bump persistf(version=...); to delete the old results, call "
            f"{short}.clear() or run `ptd compact --drop-old-code`; to silence this, "
            "code_changes='ignore'.")

    def _compute(self, place: CallPlace, args: tuple, kwargs: dict, mode: int,
                 max_age: Optional[float] = None) -> Any:
        store = place.store
        debug = _debug_enabled(_DEBUG)
        started = time.perf_counter() if debug else 0.0
        lock = store.compute_lock(place.bucket, place.digest, self.scope,
                                  self.options.lock_timeout)
        try:
            unlocked_because = lock.acquire()
            if unlocked_because is not None:  # a nested call that must not wait: never hang
                warn(f"Computing {self.name} without its compute lock: {unlocked_because}. "
                     "The result is stored as usual; at worst another process computes the "
                     "same call too.")
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
                found, value = self._load_or_imported(place, max_age)
                if found:
                    return value
            self.stats.miss()
            if debug:
                log.debug("miss %s in %s bucket %d then computing (lock and second look: "
                          "%.3f ms)", self.name, store.path, place.bucket,
                          (time.perf_counter() - started) * 1e3)
            started = time.perf_counter()
            value = self.func(*args, **kwargs)
            elapsed = time.perf_counter() - started
            self.stats.computed(elapsed)
            self._save(place, value, elapsed, replace=mode == RECACHE)
            return value
        finally:
            lock.release()

    def _load_or_imported(self, place: CallPlace, max_age: Optional[float] = None
                          ) -> Tuple[bool, Any]:
        """:meth:`_load`, then a result imported from persist-to-disk 0.0.7 (``ptd import-pkl``)
        under 0.0.7's spelling of this call (groupby values only as folder names, a Namespace
        as JSON text: :func:`~.imported.find_imported`); one found there is stored again under
        this call's own digest, so the next call is a plain hit. Only on the miss path, inside
        the lock. ``max_age`` applies to both; a function with a ``version`` (or under
        ``code_changes='recompute'``) never takes 0.0.7's results, which have neither."""
        found, value = self._load(place.store, place.bucket, place.digest, True, max_age)
        try:
            keys_captured = found or bool(self.closure_key) or self._salted
        except CapturedValueChanging:
            keys_captured = True
        if keys_captured:  # 0.0.7 did not key captured variables: never guess
            return found, value
        record = find_imported(place.store, place.key, self.hashsize, bool(self.options.groupby))
        if record is None:
            return False, None
        if max_age is not None and _expired(self.config.clock() - record.created, max_age):
            return False, None
        try:
            value = loads(record.value_blob, record.serializer, record.python_version)
        except IncompatibleRecord:
            return False, None
        self.stats.hit(record.compute_seconds)
        self._save(place, value, record.compute_seconds, code="", created=record.created)
        return True, value

    def _save(self, place: CallPlace, value: Any, compute_seconds: float,
              replace: bool = False, code: Optional[str] = None,
              created: Optional[float] = None) -> None:
        """Store a computed result; never raise for what only costs caching (the caller returns
        the result whatever happens here). ``replace`` (RECACHE): a shared tier replaces the
        result it holds instead of keeping the first one. ``code``: the record's code tag (the
        function's own by default; ``""``, unknown, for a result imported from 0.0.7), and
        ``created`` when it was made (now by the settings' clock, by default).

        The result is pickled straight into the record's buffer (one copy of it besides the
        object, plus LMDB's while it writes). A result that neither pickle nor cloudpickle can
        serialize is not stored: warned once per function, and every call computes it.
        """
        store = place.store
        what = f"The result of {self.name}"
        debug = _debug_enabled(_DEBUG)
        started = time.perf_counter() if debug else 0.0
        try:
            store.append_value(place.bucket, place.digest,
                               lambda out: dump_into(out, value, what),
                               created=self.config.clock() if created is None else created,
                               compute_seconds=compute_seconds,
                               python_version=PYTHON_VERSION, key_blob=dumps_key(place.key),
                               replace=replace, code=self._tag if code is None else code)
            if debug:
                log.debug("store %s in %s bucket %d (%.3f ms; computed in %.3f ms)", self.name,
                          store.path, place.bucket, (time.perf_counter() - started) * 1e3,
                          compute_seconds * 1e3)
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
        self._resolved()
        storage = self.config.storage(self.options.remote)
        durability, root = self.durability, self.project_root
        return [storage.open_store(leaf, durability, lock_root=root, meta=self._describe(leaf))
                for leaf in storage.find_stores(self.folder)]

    def info(self, reset: bool = False) -> dict:
        """``f.cache_info()``: what is stored (leaves, entries, versions, bytes, from disk),
        what the cache did in this process (:mod:`~.call_stats`; ``reset=True`` sets those
        counters back to zero), and the code identity (fingerprint computed if not yet)."""
        stats = [store.stats() for store in self.stores()]
        return {"function": self.name, "folder": self.folder, "leaves": len(stats),
                "entries": sum(s.entries for s in stats),
                "versions": sum(s.versions for s in stats),
                "file_bytes": sum(s.file_bytes for s in stats),
                **self.stats.snapshot(reset),
                "code_fingerprint": self.code.fingerprint, "version": self.code.version,
                "code_changes": self.code.policy}

    def clear(self) -> int:
        """Remove every stored result of the function, in every leaf and on every tier (a
        shared tier's objects included: else the next call would fetch them back)."""
        self._resolved()
        return self.config.storage(self.options.remote).clear_tree(
            self.folder, lock_root=self.project_root)

    def is_cached(self, args: tuple, kwargs: dict) -> bool:
        """Whether a result is stored (by its record's header; the value is neither copied nor
        unpickled), whatever mode ``cache=`` forces on calls. A stored value whose class has
        since gone still counts, though the next call recomputes it; a record whose header is
        damaged does not, nor one older than the max age (the decorator's, or the call's
        keyword)."""
        kwargs.pop(self.options.switch_kwarg, None)
        max_age = self.take_modes(kwargs)[1]
        try:
            place = self.locate(args, kwargs)
        except CapturedValueChanging:  # no stable key, so nothing can be found under it
            return False
        return self._load(place.store, place.bucket, place.digest, False, max_age)[0]

    def forget(self, args: tuple, kwargs: dict) -> bool:
        """Append a tombstone if a result is stored (its header is read, never its value)."""
        kwargs.pop(self.options.switch_kwarg, None)
        kwargs.pop(self.options.max_age_kwarg, None)
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


def _expired(age: float, max_age: float) -> bool:
    """Whether a result stored ``age`` seconds ago is too old for ``max_age``: ``max_age`` old
    or older, and also when dated more than ``max_age`` in the future (the clock was stepped
    back, or the machine that stored it runs ahead): a stored date cannot keep a result fresh
    for ever. Within ``max_age`` either way it counts as fresh (clocks of machines sharing a
    cache differ by seconds)."""
    return age >= max_age or age < -max_age


def _load_value(record: Record) -> Any:
    """Unpickle a record's result (run by the engine inside its read transaction for large
    results, which are then never copied out of the memory map). What this version writes
    (plain pickle) is unpickled here, a frame less per hit than :func:`~.serialization.loads`,
    which takes everything else."""
    if record.serializer == PICKLE_TAG:
        try:
            return _pickle_loads(record.value_blob)
        except Exception as err:  # class moved or deleted, module missing, truncated payload
            raise cannot_load(err) from err
    return loads(record.value_blob, record.serializer, record.python_version)


#: Every PersistedFunction of this process, for the fork hook below.
_INSTANCES: "weakref.WeakSet[PersistedFunction]" = weakref.WeakSet()


def cache_stats(reset: bool = False) -> dict:
    """``hits``, ``misses``, ``computed_seconds`` and ``saved_seconds`` summed over every
    decorated function of this process (see :mod:`~.call_stats`), and how many ``functions``
    counted anything; ``reset=True`` sets every function's counters back to zero."""
    total = dict(ZERO, functions=0)
    for persisted in list(_INSTANCES):
        counts = persisted.stats.snapshot(reset)
        if counts["hits"] or counts["misses"]:
            total["functions"] += 1
        for name in ZERO:
            total[name] += counts[name]
    return total


def _after_fork_in_child() -> None:
    """Give every decorated function a new resolve lock in a forked child: the child has only
    the thread that forked, so a lock another thread of the parent held at the fork (during
    a function's first call) would be held there for ever, and the child's first call of that
    function would hang. What that thread was resolving is redone: ``_version`` is set last."""
    for persisted in list(_INSTANCES):
        persisted._resolve_lock = threading.Lock()
        persisted.stats.after_fork()
        persisted.code._lock = threading.Lock()
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
    if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
        raise TypeError(f"persistf cannot cache {func.__qualname__}: it returns a generator, "
                        "not a result. Cache a function that returns the finished result (for "
                        "example a list of what it yields).")
    binder = CallBinder(func)
    persisted = PersistedFunction(func, config, binder, make_options(func, binder, **options))
    if inspect.iscoroutinefunction(func):
        from .coroutines import AsyncCall  # (asyncio only for coroutine functions)
        call = AsyncCall(persisted)

        @functools.wraps(func)
        async def wrapper(*args, **kwargs):
            return await call(args, kwargs)
    else:
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
        persisted._resolved()
        return persisted.folder

    wrapper.is_cached = is_cached
    wrapper.forget = forget
    wrapper.cache_folder = cache_folder
    wrapper.cache_info = persisted.info
    wrapper.clear = persisted.clear
    wrapper.uncached = func
    wrapper.__persisted__ = persisted
    return wrapper
