"""persist_to_disk: make an expensive function persistent with one decorator.

    import persist_to_disk as ptd

    @ptd.persistf()
    def train(dataset, lr, epochs=10):
        ...

A repeated call, in this process or any later one, returns the stored result. Results live in
an append-only LMDB store per function (or per ``groupby`` leaf) under ``config.get_persist_path()``.
"""

import inspect
import logging
import os as _os
from typing import Callable, Optional

from . import options as _options
from . import settings as _settings
from .call import cache_stats, decorate
from .engine import Durability, LockScope
from .errors import (CacheMissError, ConfigError, CorruptStoreError, EngineError,
                     ForeignFolderError, PersistError, PersistWarning, StoreFormatError,
                     UnkeyableArgumentError, UnpicklableResultError, UnsafeFilesystemError,
                     UntrustedFolderError)
from .modes import CACHE, CHECKONLY, NOCACHE, READONLY, RECACHE

__version__ = "0.1.0"

# The library never prints: what it logs (README: "Logging") goes where the application's
# logging configuration sends it, and nowhere without one (not to logging's last-resort stderr
# handler, which would repeat every PersistWarning the warnings module shows already).
logging.getLogger("persist_to_disk").addHandler(logging.NullHandler())


def _import_call_path_modules() -> None:
    """Before a fork: import what a first call imports lazily (``settings.CALL_PATH_MODULES``).
    A module another thread is importing when the process forks stays locked for ever in the
    child (its import lock belongs to a thread the child does not have), so a child's first
    call that imported it hung; imported here, in the forking thread, it is complete before
    the fork (this waits for the other thread's import to finish) and the child never imports
    it. Costs nothing once they are imported."""
    for name in _settings.CALL_PATH_MODULES:
        try:
            __import__(name)
        except Exception:  # (the child will report it when it needs the module)
            pass


_os.register_at_fork(before=_import_call_path_modules)

#: The global settings (persist path, project path, hashsize, lock granularity, durability).
config = _settings.Config()


def persistf(func: Optional[Callable] = None, **options) -> Callable:
    """Decorator that stores each call's result on disk and returns it on a repeated call.

    Args:
{args}

    The wrapper also has ``is_cached(...)``, ``forget(...)``, ``cache_folder()``,
    ``cache_info(reset=False)``, ``clear()`` and ``uncached`` (the original function). On an
    ``async def`` function it is a coroutine function, awaited like the original.
    """
    _options.check_names(options)  # a misspelt option fails here, even before a function
    if func is not None:  # used bare, as @persistf
        return decorate(func, config, **options)
    return lambda f: decorate(f, config, **options)


# The options are listed once, in options.PersistOptions: persistf's signature (what
# inspect.signature and help() show) and the Args above are made from that list.
persistf.__signature__ = _options.signature(
    inspect.Parameter("func", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                      annotation=Optional[Callable]), Callable)
if persistf.__doc__:  # (None under python -OO)
    persistf.__doc__ = persistf.__doc__.replace("{args}", _options.args_doc(indent=8))


__all__ = [
    "CACHE", "CHECKONLY", "NOCACHE", "READONLY", "RECACHE", "CacheMissError", "ConfigError",
    "CorruptStoreError", "Durability", "EngineError", "ForeignFolderError", "LockScope",
    "PersistError", "PersistWarning", "StoreFormatError", "UnkeyableArgumentError",
    "UnpicklableResultError", "UnsafeFilesystemError", "UntrustedFolderError", "cache_stats",
    "config", "persistf",
]
