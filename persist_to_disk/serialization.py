"""Results to bytes and back: pickle first, cloudpickle only when pickle cannot.

``cloudpickle.dumps`` is ~4.5x slower than pickle, and its payloads of lambdas and ``__main__``
classes are tied to the exact Python version that wrote them (a 3.11 payload crashed 3.13). So
each record says which serializer and Python wrote it, and a cloudpickle payload from another
Python minor version is treated as a miss (recomputed), never loaded.
"""

import io
import pickle
import sys
from typing import Any, BinaryIO, Tuple

from .errors import UnpicklableResultError

PICKLE_PROTOCOL = 5


def _python_version() -> str:
    """``platform.python_version()`` without importing ``platform`` (~1.7 ms of import): the
    first word of ``sys.version`` ("3.11.7", "3.13.0rc1"), with the ".0" platform adds to a
    two-part version."""
    version = sys.version.split()[0]
    return version + ".0" if version.count(".") == 1 else version


PYTHON_VERSION = _python_version()
_PYTHON_MINOR = ".".join(PYTHON_VERSION.split(".")[:2])
PICKLE_TAG = f"pickle:{PICKLE_PROTOCOL}"


class IncompatibleRecord(Exception):
    """A stored value this interpreter must not or cannot load; the caller recomputes."""


def dump_into(file: BinaryIO, value: Any, what: str) -> str:
    """Serialize ``value`` into ``file`` from its current position; return the serializer tag.

    Writing into the store's record buffer, not into bytes of its own, is what keeps a large
    result from being held three times while it is stored. If pickle fails part way, what it
    wrote is truncated away before cloudpickle tries. ``what`` names the value in the error
    (for example "the result of train()"); :class:`UnpicklableResultError` if neither can.
    """
    start = file.tell()
    try:
        pickle.dump(value, file, protocol=PICKLE_PROTOCOL)
        return PICKLE_TAG
    except Exception as pickle_error:  # PicklingError, TypeError, AttributeError, ...
        error = pickle_error
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - cloudpickle is a runtime dependency
        cloudpickle = None
    if cloudpickle is not None:
        file.seek(start)
        file.truncate()
        try:
            cloudpickle.dump(value, file, protocol=PICKLE_PROTOCOL)
            return f"cloudpickle:{cloudpickle.__version__}"
        except Exception as cloud_error:
            error = cloud_error
    file.seek(start)
    file.truncate()
    raise UnpicklableResultError(
        f"{what} cannot be stored: neither pickle nor cloudpickle can serialize a "
        f"{type(value).__qualname__} ({type(error).__name__}: {error}). Nothing was written. "
        "Return a picklable value (for example the path of a file you save yourself), or call "
        "with cache_switch=0 (NOCACHE) for this call."
    ) from error


def dumps(value: Any, what: str) -> Tuple[bytes, str]:
    """Serialize ``value``; return ``(blob, serializer tag)`` (see :func:`dump_into`)."""
    out = io.BytesIO()
    serializer = dump_into(out, value, what)
    return out.getvalue(), serializer


def check_loadable(serializer: str, python_version: str) -> None:
    """Raise :class:`IncompatibleRecord` if a payload with this metadata must not be loaded."""
    if serializer.startswith("cloudpickle"):
        written_minor = ".".join(python_version.split(".")[:2])
        if written_minor != _PYTHON_MINOR:
            raise IncompatibleRecord(
                f"stored with cloudpickle by Python {python_version}, which this Python "
                f"({PYTHON_VERSION}) must not load"
            )
    elif not serializer.startswith("pickle"):
        raise IncompatibleRecord(f"stored with an unknown serializer {serializer!r}")


def loads(blob: bytes, serializer: str, python_version: str) -> Any:
    """Load a stored value, or raise :class:`IncompatibleRecord` (to be treated as a miss)."""
    if serializer != PICKLE_TAG:  # what this version writes is always loadable: skip the checks
        check_loadable(serializer, python_version)
    try:
        return pickle.loads(blob)
    except Exception as err:  # class moved or deleted, module missing, truncated payload
        raise cannot_load(err) from err


def cannot_load(err: Exception) -> IncompatibleRecord:
    """What a stored value that fails to unpickle is: an incompatible record (a miss)."""
    return IncompatibleRecord(f"cannot be loaded: {type(err).__name__}: {err}")


def dumps_key(key: tuple) -> bytes:
    """Pickle the key tuple for maintenance tools (listing, export); b'' if impossible.

    Protocol 4 keeps it readable by persist-to-disk 0.0.7 exports.
    """
    try:
        return pickle.dumps(key, protocol=4)
    except Exception:
        try:
            import cloudpickle
            return cloudpickle.dumps(key, protocol=4)
        except Exception:
            return b""
