"""persist_to_disk: make an expensive function persistent with one decorator.

    import persist_to_disk as ptd

    @ptd.persistf()
    def train(dataset, lr, epochs=10):
        ...

A repeated call, in this process or any later one, returns the stored result. Results live in
an append-only LMDB store per function (or per ``groupby`` leaf) under ``config.get_persist_path()``.
"""

from typing import Callable, Optional, Sequence, Union

from . import settings as _settings
from .engine import Durability, LockScope
from .errors import (CacheMissError, ConfigError, CorruptStoreError, EngineError,
                     ForeignFolderError, PersistError, PersistWarning, StoreFormatError,
                     UnkeyableArgumentError, UnpicklableResultError, UnsafeFilesystemError,
                     UntrustedFolderError)
from .modes import CACHE, CHECKONLY, NOCACHE, READONLY, RECACHE
from .persisted import decorate

__version__ = "0.1.0"

#: The global settings (persist path, project path, hashsize, lock granularity, durability).
config = _settings.Config()


def persistf(func: Optional[Callable] = None, *,
             groupby: Optional[Sequence[Union[str, Sequence[str]]]] = None,
             expand_dict_kwargs: Optional[Union[str, Sequence[str]]] = None,
             skip_kwargs: Optional[Sequence[str]] = None,
             hashsize: Optional[int] = None,
             hash_size: Optional[int] = None,
             lock_granularity: Optional[str] = None,
             switch_kwarg: str = "cache_switch",
             cache: Optional[int] = None,
             hash_method: str = "pickle",
             local: bool = False,
             durability: Optional[str] = None,
             lock_timeout: Optional[float] = None) -> Callable:
    """Decorator that stores each call's result on disk and returns it on a repeated call.

    Args:
        groupby: argument names (or tuples of names, joined with ``$$``) whose values become
            sub-folders of the function's folder; each leaf folder is one store.
        expand_dict_kwargs: dict arguments stored as ``"arg|key"`` entries (``'all'``: every
            dict, recursively), as persist-to-disk 0.0.7 did. Dicts are keyed correctly
            without this; it only shapes the stored key tuple.
        skip_kwargs: arguments that do not change the result (device, verbosity, ...).
        hashsize / hash_size: number of hash buckets (default from config, 500). With
            ``lock_granularity='call'`` each bucket has its own lock.
        lock_granularity: ``'call'`` (default: one lock per bucket), ``'func'`` (per leaf) or
            ``'global'`` (per project) -- which computing calls wait for each other.
        switch_kwarg: name of the call-time keyword that selects the mode (NOCACHE, CACHE,
            RECACHE, READONLY, CHECKONLY); it is removed before the function is called.
        cache: a mode for every call of this function (overrides the call-time keyword).
        hash_method: ``'pickle'`` or ``'json'``, the 0.0.7 bucket formula recorded for exports
            to 0.0.7; lookups here always use a stable digest of the arguments.
        local: store under ``persist_path_local`` instead of ``persist_path``.
        durability: ``'standard'`` (default), ``'full'`` or ``'fast'``; see README.
        lock_timeout: seconds to wait for another process computing the same call before
            computing anyway (the result is still stored); ``None`` waits.

    The wrapper also has ``is_cached(...)``, ``forget(...)``, ``cache_folder()``,
    ``cache_info()``, ``clear()`` and ``uncached`` (the original function).
    """
    options = dict(groupby=groupby, expand_dict_kwargs=expand_dict_kwargs,
                   skip_kwargs=skip_kwargs, hashsize=hashsize, hash_size=hash_size,
                   lock_granularity=lock_granularity, switch_kwarg=switch_kwarg, cache=cache,
                   hash_method=hash_method, local=local, durability=durability,
                   lock_timeout=lock_timeout)
    if func is not None:  # used bare, as @persistf
        return decorate(func, config, **options)
    return lambda f: decorate(f, config, **options)


__all__ = [
    "CACHE", "CHECKONLY", "NOCACHE", "READONLY", "RECACHE", "CacheMissError", "ConfigError",
    "CorruptStoreError", "Durability", "EngineError", "ForeignFolderError", "LockScope",
    "PersistError", "PersistWarning", "StoreFormatError", "UnkeyableArgumentError",
    "UnpicklableResultError", "UnsafeFilesystemError", "UntrustedFolderError", "config", "persistf",
]
