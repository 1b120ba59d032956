"""Cached coroutine functions: ``@persistf()`` on an ``async def``.

Awaiting the decorated function does what calling a decorated plain function does (the same
keys, records, modes, options, statistics and warnings: :class:`~.call.PersistedFunction`
does the keying and the storing), with three differences, all about the event loop:

* **The loop never blocks on another computation.** A hit reads the local store inline, as a
  plain call does (one LMDB read; a hit never waits for anything else). A lookup that may go
  to the network (a shared tier's store, after a local miss) runs in a worker thread. A miss
  takes a free compute lock at once from the loop's thread; a lock another thread or process
  holds is waited for by a thread of its own, which then keeps it (:class:`_LockHolder`); the
  result is stored from a worker thread (pickling and an fsync, or an upload).
* **Compute once, also between the tasks of one loop.** The first task to miss a call
  computes it; every other task of the loop that awaits the same call meanwhile waits for it
  (a registry of calls in flight per loop) and then reads the stored result (a copy of its
  own, as a plain hit returns). Across loops, threads and processes the store's compute lock
  does it, as for plain calls.
* **Cancellation.** A task cancelled while it waits for the lock leaves a thread behind that
  gives the lock back as soon as it gets it; a computing task cancelled (or raising) stores
  nothing, releases the lock, and the next waiter (a task of the loop, another process)
  computes the call itself, as a separate caller would. A task cancelled while its result is
  written lets the write finish; the lock is released and the waiters woken after it.

Nested cached calls never hang (README, "Nested cached calls never hang"). The engine tells
callers apart by thread, and one thread runs every task of a loop (or a thread of its own
holds a task's lock), so a task's chain of nested calls is tracked here instead, in a context
variable that the task's child tasks inherit (:data:`_HOLDS`): a call its own chain is
computing (recursion, directly or through ``asyncio.gather``) is computed under the lock the
chain holds, without waiting, as a thread's reentrant call is; and a task that would wait for
a call whose computation waits, through other tasks of the loop, for a call this task's chain
computes closes a cycle: it computes without waiting and without the lock, and the log says
so, as the engine's rule 4 does for threads. The registry of calls in flight also keeps the
engine from taking two tasks of one loop computing the same call for the loop thread's
reentrant call.

Known limit: a task destroyed while it computes, by a loop closed without finishing it and
collected in another thread, cannot give back a lock its loop's thread took (the engine's
locks are released by the thread that holds them); the kernel drops it when the process ends.
"""

import asyncio
import contextvars
import functools
import logging
import os
import threading
import time
from typing import Any, Dict, FrozenSet, List, Optional, Tuple, Union

from .call import _DECORATORS, CallPlace, PersistedFunction
from .engine import CallStore, ComputeLock, Timeout
from .errors import CacheMissError, warn
from .keying import CapturedValueChanging
from .modes import CACHE, CHECKONLY, NOCACHE, READONLY, RECACHE

log = logging.getLogger("persist_to_disk")
_debug_enabled = log.isEnabledFor
_DEBUG = logging.DEBUG

#: A call, as the compute-once machinery tells calls apart: its store's path, bucket, digest.
CallId = Tuple[str, int, bytes]
#: A call in flight in one event loop.
_Slot = Tuple[asyncio.AbstractEventLoop, str, int, bytes]

#: The calls the current task's chain is computing (outermost first, nested ones added as
#: they start), tagged with the fork generation they were noted in: a forked child holds none
#: of its parent's locks, whatever context it forked in.
_HOLDS: "contextvars.ContextVar[Optional[Tuple[int, FrozenSet[CallId]]]]" = \
    contextvars.ContextVar("persist_to_disk_computing", default=None)
_generation = 0

#: Calls being computed by a task, per loop: the future their waiters wait for (set when the
#: computation ends, however it ends). Each slot is only ever touched from its loop's thread.
_running: Dict[_Slot, "asyncio.Future[None]"] = {}
#: For each call in flight (by loop), the calls its chain's tasks wait for: the graph the
#: cycle check walks.
_waits: Dict[_Slot, List[CallId]] = {}

#: Where a store's type comes from decides whether a lookup may go to the network.
_SHARED_PACKAGE = __name__.rsplit(".", 1)[0] + ".remote"
_SHARED_TYPES: Dict[type, bool] = {}


class AsyncCall:
    """What ``await f(...)`` runs for a decorated coroutine function ``f``: the awaitable
    counterpart of :meth:`PersistedFunction.fast_path` and ``general_path``."""

    __slots__ = ("persisted",)

    def __init__(self, persisted: PersistedFunction) -> None:
        self.persisted = persisted

    async def __call__(self, args: tuple, kwargs: dict) -> Any:
        """A call: the hot path (CACHE mode, a shape the keyer plans), else
        :meth:`general_path`.

        Duplicates :meth:`PersistedFunction.fast_path`'s lookup (the keyer, the ungrouped
        leaf, the bucket inline), so that a hit on a local store costs what a plain hit costs
        plus the coroutine: change them together. A shared tier's store is looked up as
        :meth:`_lookup` says."""
        persisted = self.persisted
        options = persisted.options
        if options.cache is None and not (kwargs and (options.switch_kwarg in kwargs
                                                      or options.max_age_kwarg in kwargs)):
            if persisted._version != persisted.config.version:
                persisted.resolve_identity()
            keyer = persisted._keyer
            try:
                digest = keyer.digest(args, kwargs)
            except CapturedValueChanging:  # no stable key: neither read nor write the cache
                return await persisted.func(*args, **kwargs)
            if digest is not None:
                store = persisted._leaves.get(())
                if store is None:
                    store = persisted.store_for(())
                bucket = int.from_bytes(digest[:8], "big") % persisted.hashsize
                if _is_shared(store):
                    found, value = await self._lookup(store, bucket, digest)
                else:
                    found, value = persisted._load(store, bucket, digest)
                if found:
                    return value
                place = CallPlace(store, bucket, digest, keyer.key(args, kwargs))
                return await self._compute(place, args, kwargs, CACHE, options.max_age)
        return await self.general_path(args, kwargs)

    async def general_path(self, args: tuple, kwargs: dict) -> Any:
        """A call in any mode and of any shape, as :meth:`PersistedFunction.general_path`."""
        persisted = self.persisted
        mode, max_age = persisted.take_modes(kwargs)
        if mode == NOCACHE:
            return await persisted.func(*args, **kwargs)
        try:
            place = persisted.locate(args, kwargs)
        except CapturedValueChanging as err:  # no stable key: neither read nor write the cache
            if mode == CHECKONLY:
                return False
            if mode == READONLY:
                persisted.stats.miss()
                raise CacheMissError(
                    f"READONLY: {persisted.name} cannot look its result up: {err}, by another "
                    "thread. Call it when that thread leaves the variable alone, or without "
                    "cache_switch (or with CACHE) to compute it.") from None
            return await persisted.func(*args, **kwargs)
        store, bucket, digest = place.store, place.bucket, place.digest
        if mode == CHECKONLY:
            return (await self._lookup(store, bucket, digest, False, max_age))[0]
        if mode != RECACHE:
            found, value = await self._lookup(store, bucket, digest, True, max_age)
            if found:
                return value
            if mode == READONLY:
                persisted.stats.miss()
                raise CacheMissError(
                    f"READONLY: no stored result of {persisted.name} for this call in "
                    f"{store.path}"
                    f"{'' if max_age is None else f' newer than max_age={max_age:g}s'}. Call "
                    "without cache_switch (or with CACHE) to compute it.")
        return await self._compute(place, args, kwargs, mode, max_age)

    # --- looking up -----------------------------------------------------------------------
    async def _lookup(self, store: CallStore, bucket: int, digest: bytes, value: bool = True,
                      max_age: Any = _DECORATORS) -> Tuple[bool, Any]:
        """:meth:`PersistedFunction._load`, never blocking the loop on the network: a local
        store is read inline; a shared tier's store is read locally inline first (its local
        tier: a hit there costs a local read) and, on a local miss, in a worker thread (it
        may fetch the result from the remote)."""
        load = self.persisted._load
        if not _is_shared(store):
            return load(store, bucket, digest, value, max_age)
        local = getattr(store, "local", None)
        if local is not None:
            found = load(local, bucket, digest, value, max_age)
            if found[0]:
                return found
        return await asyncio.get_running_loop().run_in_executor(
            None, load, store, bucket, digest, value, max_age)

    async def _load_again(self, place: CallPlace, max_age: Optional[float]) -> Tuple[bool, Any]:
        """The look inside the lock (:meth:`PersistedFunction._load_or_imported`), in a
        worker thread where it may go to the network."""
        persisted = self.persisted
        if not _is_shared(place.store):
            return persisted._load_or_imported(place, max_age)
        return await asyncio.get_running_loop().run_in_executor(
            None, persisted._load_or_imported, place, max_age)

    # --- computing ------------------------------------------------------------------------
    async def _compute(self, place: CallPlace, args: tuple, kwargs: dict, mode: int,
                       max_age: Optional[float]) -> Any:
        """A miss: wait for a task of this loop computing the same call, or take the call's
        compute lock (:meth:`_lock`), look again, compute, store, release."""
        persisted = self.persisted
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        call = (place.store.path, place.bucket, place.digest)
        holds = _chain_holds()
        slot = (loop,) + call
        mine: "Optional[asyncio.Future[None]]" = None
        unlocked_because = None
        if call not in holds:  # (else: recursion into a call this chain computes: computed
            while True:        # under the lock the chain holds, as a thread's reentrant call)
                running = _running.get(slot)
                if running is None:
                    mine = _running[slot] = loop.create_future()
                    break
                if _closes_cycle(loop, call, holds):
                    unlocked_because = (
                        "waiting for another task of this event loop computing the same call "
                        "would close a cycle of tasks that wait for each other's results")
                    break
                await _wait_for(running, loop, call, holds)
                if mode != RECACHE:  # computed meanwhile (a fresh copy for every waiter)
                    found, value = await self._lookup(place.store, place.bucket,
                                                      place.digest, True, max_age)
                    if found:
                        return value
                # nothing stored (it raised, was cancelled, or the result cannot be
                # pickled), or RECACHE: this task computes, unless another one started first
        token = _HOLDS.set((_generation, holds | {call}))
        hold: Optional[_Hold] = None
        saving: "Optional[asyncio.Future[None]]" = None
        try:
            if mine is not None:
                hold = await self._lock(place, loop)
            elif unlocked_because is not None:
                warn(f"Computing {persisted.name} without its compute lock: {unlocked_because}. "
                     "The result is stored as usual; at worst another process computes the "
                     "same call too.")
            if mode != RECACHE:
                found, value = await self._load_again(place, max_age)
                if found:
                    return value
            persisted.stats.miss()
            if _debug_enabled(_DEBUG):
                log.debug("miss %s in %s bucket %d then computing (lock and second look: "
                          "%.3f ms)", persisted.name, place.store.path, place.bucket,
                          (time.perf_counter() - began) * 1e3)
            started = time.perf_counter()
            value = await persisted.func(*args, **kwargs)
            elapsed = time.perf_counter() - started
            persisted.stats.computed(elapsed)
            # Pickled and written by a worker thread. Shielded: a task cancelled meanwhile
            # lets the write finish, and the lock is released (and waiters woken) only then.
            saving = loop.run_in_executor(None, _save_then_release, persisted, place, value,
                                          elapsed, mode == RECACHE, hold)
            await asyncio.shield(saving)
            return value
        finally:
            try:
                _HOLDS.reset(token)
            except ValueError:  # closed outside its task (a loop closed while it ran)
                pass
            if saving is not None and not saving.done():
                saving.add_done_callback(
                    functools.partial(_finish, hold, mine, slot))  # (loop: run by the loop)
            else:
                _finish(hold, mine, slot)

    async def _lock(self, place: CallPlace, loop: asyncio.AbstractEventLoop
                    ) -> "Optional[_Hold]":
        """Take the call's compute lock without blocking the loop; None when the call goes on
        without it (a timeout, a lock that cannot be created: warned as a plain call warns).

        A local store's lock is first tried from the loop's thread without waiting (it is
        free unless another thread or process computes the call): most misses then cost no
        thread, and a loop may compute thousands of calls at once. Otherwise (and always for
        a shared tier, whose lease is a network request) a thread of its own waits for it and
        keeps it (:class:`_LockHolder`)."""
        persisted = self.persisted
        store = place.store
        timeout = persisted.options.lock_timeout
        if not _is_shared(store):
            lock = store.compute_lock(place.bucket, place.digest, persisted.scope, 0.0)
            try:
                unlocked_because = lock.acquire()
            except Timeout:  # another thread or process computes the call: wait in a thread
                if timeout is not None and timeout <= 0:
                    persisted._warn_once(
                        store.path, "lock", f"Could not lock {lock.path} within {timeout}s; "
                        f"computing {persisted.name} without the lock (the result is still "
                        "stored, but another process may compute the same call).")
                    return None
            except OSError as err:  # read-only filesystem, permissions
                persisted._warn_once(
                    store.path, "lock", f"Cannot create or take the lock {lock.path} ({err}); "
                    f"computing {persisted.name} without it.")
                return None
            else:
                if unlocked_because is None:
                    return _HeldHere(lock)
                warn(f"Computing {persisted.name} without its compute lock: {unlocked_because}. "
                     "The result is stored as usual; at worst another process computes the "
                     "same call too.")
                return None
        lock = store.compute_lock(place.bucket, place.digest, persisted.scope, timeout)
        try:
            holder = _LockHolder(lock, loop)
        except RuntimeError as err:  # no thread to be had ("can't start new thread")
            persisted._warn_once(
                store.path, "lock", f"Cannot start a thread to wait for the lock {lock.path} "
                f"({err}); computing {persisted.name} without it.")
            return None
        try:
            unlocked_because = await holder.taken
        except asyncio.CancelledError:
            holder.release()  # given back as soon as its thread has it
            raise
        except Timeout:
            persisted._warn_once(
                store.path, "lock", f"Could not lock {lock.path} within {timeout}s; computing "
                f"{persisted.name} without the lock (the result is still stored, but another "
                "process may compute the same call).")
            return None
        except OSError as err:  # read-only filesystem, permissions: the result still matters
            persisted._warn_once(
                store.path, "lock", f"Cannot create or take the lock {lock.path} ({err}); "
                f"computing {persisted.name} without it.")
            return None
        if unlocked_because is not None:  # a nested call that must not wait: never hang
            warn(f"Computing {persisted.name} without its compute lock: {unlocked_because}. "
                 "The result is stored as usual; at worst another process computes the "
                 "same call too.")
        return holder


class _HeldHere:
    """A compute lock the loop's thread took at once (it was free). The engine tells holders
    apart by thread, so it is given back by the loop's thread too (:func:`_finish`); while
    it is held, the registry of calls in flight keeps every other task of the loop away from
    the call, since the engine would take their attempts for the holder's own reentrant
    calls."""

    __slots__ = ("lock",)

    def __init__(self, lock: ComputeLock) -> None:
        self.lock = lock

    def release(self) -> None:
        self.lock.release()  # (a no-op the second time)


class _LockHolder:
    """A compute lock waited for by a thread of its own, which then holds it until
    :meth:`release`: a lock another thread or process holds, or a shared tier's (whose lease
    is a network request).

    Waiting on the loop's thread would block every task. And the engine's locks belong to
    the thread that took them (its table of holders and waiters is by thread, and a reentrant
    or shared hold is recognised by thread), so the thread that waited must also keep the
    lock and release it. ``taken`` is a future of the loop: the reason ``acquire`` returned
    (None: held), or its exception."""

    __slots__ = ("lock", "taken", "_loop", "_release")

    def __init__(self, lock: ComputeLock, loop: asyncio.AbstractEventLoop) -> None:
        self.lock = lock
        self.taken: "asyncio.Future[Optional[str]]" = loop.create_future()
        self._loop = loop
        self._release = threading.Event()
        threading.Thread(target=self._hold, name=f"persist_to_disk lock {lock.path}",
                         daemon=True).start()

    def _hold(self) -> None:
        try:
            unlocked_because = self.lock.acquire()
        except BaseException as err:  # nothing is held after a failed acquire
            self._tell(self.taken.set_exception, err)
            return
        try:
            self._tell(self.taken.set_result, unlocked_because)
            self._release.wait()
        finally:
            self.lock.release()

    def _tell(self, outcome: Any, value: Any) -> None:
        """Hand ``value`` to the waiting task, unless it stopped waiting (cancelled)."""
        def deliver() -> None:
            if not self.taken.done():
                outcome(value)
        try:
            self._loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the loop is closed: nobody will compute under this lock
            self._release.set()

    def release(self) -> None:
        """Give the lock back (once its thread has it, if it is still waiting for it). Safe
        from any thread, and more than once."""
        self._release.set()


_Hold = Union[_HeldHere, "_LockHolder"]


def _save_then_release(persisted: PersistedFunction, place: CallPlace, value: Any,
                       elapsed: float, replace: bool, hold: "Optional[_Hold]") -> None:
    """Store a computed result (in a worker thread); a lock held by a thread of its own is
    then given back from here, so even a loop closed meanwhile does not keep it."""
    try:
        persisted._save(place, value, elapsed, replace=replace)
    finally:
        if isinstance(hold, _LockHolder):
            hold.release()


def _finish(hold: "Optional[_Hold]", mine: "Optional[asyncio.Future[None]]", slot: _Slot,
            _saved: Any = None) -> None:
    """After a computation (and the write of its result): give the lock back, from the loop's
    thread, then let the tasks that wait for the call look it up."""
    try:
        if hold is not None:
            hold.release()
    finally:
        if mine is not None:
            if _running.get(slot) is mine:
                del _running[slot]
            try:
                mine.set_result(None)
            except RuntimeError:  # its loop is closed: nobody waits any more
                pass


def _is_shared(store: CallStore) -> bool:
    """Whether ``store`` belongs to a shared tier (``persist_to_disk.remote``), whose lookups
    may go to the network. Cached per store type."""
    kind = type(store)
    shared = _SHARED_TYPES.get(kind)
    if shared is None:
        shared = _SHARED_TYPES[kind] = kind.__module__.startswith(_SHARED_PACKAGE)
    return shared


def _chain_holds() -> FrozenSet[CallId]:
    """The calls the current task's chain computes (none noted before a fork count)."""
    holds = _HOLDS.get()
    if holds is None or holds[0] != _generation:
        return frozenset()
    return holds[1]


async def _wait_for(running: "asyncio.Future[None]", loop: asyncio.AbstractEventLoop,
                    call: CallId, holds: FrozenSet[CallId]) -> None:
    """Wait until the task computing ``call`` in this loop is done, noting for the cycle check
    that the calls this chain computes wait for it. Shielded: a waiter cancelled here does not
    cancel the future the other waiters wait for."""
    edges = [(loop,) + held for held in holds]
    for edge in edges:
        _waits.setdefault(edge, []).append(call)
    try:
        await asyncio.shield(running)
    finally:
        for edge in edges:
            waited = _waits.get(edge)
            if waited is not None:
                waited.remove(call)
                if not waited:
                    del _waits[edge]


def _closes_cycle(loop: asyncio.AbstractEventLoop, call: CallId,
                  holds: FrozenSet[CallId]) -> bool:
    """Whether the computation of ``call`` in ``loop`` waits, through tasks of the loop, for a
    call in ``holds`` (which the would-be waiter's chain computes)."""
    if not holds:
        return False
    pending, seen = [call], set()
    while pending:
        current = pending.pop()
        if current in holds:
            return True
        if current not in seen:
            seen.add(current)
            pending.extend(_waits.get((loop,) + current, ()))
    return False


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's event loops' tasks nor their locks: forget the
    calls in flight, and what the context of the forking task says it computes."""
    global _generation, _running, _waits
    _generation += 1
    _running = {}
    _waits = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
