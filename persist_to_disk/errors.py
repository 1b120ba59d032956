"""Errors and warnings of the public API.

Every error names what it is about (the argument, the path, the function) and says what to do.
Engine errors are re-exported here so users catch them from one place: every error, the
engine's included, is a :class:`PersistError` (defined in ``engine/errors.py``, since the engine
never imports this layer).
"""

from .engine.errors import (  # noqa: F401  (re-exported)
    CorruptStoreError,
    EngineError,
    ForeignFolderError,
    PersistError,
    StoreFormatError,
    UnsafeFilesystemError,
    UntrustedFolderError,
)


class UnkeyableArgumentError(PersistError, TypeError):
    """An argument cannot be turned into a stable cache key (lambda, open file, lock, ...)."""


class UnpicklableResultError(PersistError, TypeError):
    """A result that neither pickle nor cloudpickle can serialize; nothing was stored."""


class CacheMissError(PersistError, LookupError, AssertionError):
    """READONLY mode and no stored result. (Also an AssertionError, which 0.0.7 raised.)"""


class ConfigError(PersistError, ValueError):
    """A setting in config.ini or passed to the decorator is invalid."""


class PersistWarning(UserWarning):
    """Something went wrong with the cache but the call still returned its computed result."""
