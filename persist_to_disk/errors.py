"""Errors and warnings of the public API.

Every error names what it is about (the argument, the path, the function) and says what to do.
Engine errors are re-exported here so users catch them from one place: every error, the
engine's included, is a :class:`PersistError` (defined in ``engine/errors.py``, since the engine
never imports this layer).
"""

import os
import sys
import logging
import warnings

from .engine.errors import (  # noqa: F401  (re-exported)
    CorruptStoreError,
    EngineError,
    ForeignFolderError,
    PersistError,
    StoreFormatError,
    UnsafeFilesystemError,
    UntrustedFolderError,
)
from . import engine as _engine


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


#: Frames in these folders are this package's (the API layer, its engine and the shared tier
#: beside the engine, which is not imported here: it loads only when a remote is configured),
#: not the user's.
_OWN_FOLDERS = tuple(os.path.dirname(os.path.abspath(module.__file__)) + os.sep
                     for module in (sys.modules[__name__], _engine)) + (
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(_engine.__file__))),
                 "remote") + os.sep,)


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning issued by the caller at the user's line, not
    at this package (nor at the engine, which runs some of the package's callbacks)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_OWN_FOLDERS):
        frame, level = frame.f_back, level + 1
    return level


def warn(message: str) -> None:
    """Issue a :class:`PersistWarning` pointed at the user's line that led to it, and log it
    at WARNING on the logger ``persist_to_disk`` (logged first: a warnings filter set to
    ``error`` raises)."""
    logging.getLogger("persist_to_disk").warning("%s", message)
    warnings.warn(message, PersistWarning, stacklevel=user_stacklevel())
