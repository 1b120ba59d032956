"""0.0.7's bucket files: which bucket a key goes to, and reading and writing a bucket file
under the lock files 0.0.7 itself takes.

0.0.7 reads a bucket and rewrites it in place (``open(path, 'wb')``) while holding its lock, and
when a bucket cannot be unpickled it replaces it with an empty one. So we hold the same locks for
every read and write, never write a file a 0.0.7 reader could fail to load, and replace files
atomically (a temporary file renamed over the old one), so that even a reader that takes no lock
(0.0.7's READONLY mode) sees the old file or the new one, never half of one.

Bucket files are pickles, and loading one runs code: before any is loaded (the source of an
import, the files an export merges into), its folder and every folder above it up to the tree
given on the command line, and the file itself, must pass the cache's trust rule
(``engine/trust.py``) at the configured sharing level -- the same opt-in (``shared``) as for our
own caches. The file is checked through ``fstat`` of the descriptor that is read.
"""

import contextlib
import hashlib
import inspect
import json
import os
import pickle
import re
import stat
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

from filelock import FileLock

from ..engine import LocalStorage, UntrustedFolderError, make_private_dirs, trust
from ..engine import settings as engine_settings
from ..engine.interface import StorageTier

HASH_METHODS = ("pickle", "json")
BUCKET_FILE = re.compile(r"([0-9]+)\.pkl\Z")
#: 0.0.7's lock for ``lock_granularity='func'`` (its default) is
#: ``FileLock(<leaf>/func_persist_lock)``, the file ``<leaf>/func_persist_lock.lock``; for
#: ``'call'`` it is ``<bucket>.pkl.lock``.
FUNC_LOCK_FILE = "func_persist_lock.lock"
LOCK_SUFFIX = ".lock"
BUCKET_PICKLE_PROTOCOL = 4  # what 0.0.7 writes (_utils.PICKLE_PROTOCOL)
KEY_HASH_PROTOCOL = 3       # what 0.0.7 hashes keys with (persister._hash)
#: 0.0.7 gives up on a lock after 5 s, so we hold one only to read or write a file, and wait
#: this long for one ourselves.
LOCK_TIMEOUT_SECONDS = 120.0


def local_storage(storage: Optional[StorageTier] = None) -> StorageTier:
    """``storage``, or by default the local tier with the engine's installed settings (the
    configured ones once the settings are loaded): where an import or export opens our
    stores, through the tier's checks (local filesystem, trust, foreign folders)."""
    return storage if storage is not None else LocalStorage(engine_settings.current())


def _json_default(thing: Any) -> str:
    # 0.0.7's json_default: classes become their str(); anything else is an error.
    if inspect.isclass(thing):
        return str(thing)
    raise TypeError(f"object of type {type(thing).__name__} not serializable")


def key_hash(key: tuple, hash_method: str) -> int:
    """0.0.7's ``_hash`` / ``_hash_tuple_json`` of a key tuple (raises on keys it cannot hash)."""
    if hash_method == "pickle":
        data = pickle.dumps(key, protocol=KEY_HASH_PROTOCOL)
    elif hash_method == "json":
        data = json.dumps(dict(key), default=_json_default, ensure_ascii=False, sort_keys=True,
                          indent=None, separators=(",", ":")).encode("utf-8")
    else:
        raise ValueError(f"hash_method must be 'pickle' or 'json', got {hash_method!r}")
    return int(hashlib.md5(data).hexdigest(), 16)


def bucket_of_key(key: tuple, hashsize: int, hash_method: str) -> int:
    return key_hash(key, hash_method) % hashsize


def bucket_path(leaf: str, bucket: int) -> str:
    return os.path.join(leaf, f"{bucket}.pkl")


def bucket_files(leaf: str) -> List[Tuple[int, str]]:
    """``(bucket, path)`` of every bucket file in ``leaf``, by bucket number."""
    found = []
    try:
        names = os.listdir(leaf)
    except (FileNotFoundError, NotADirectoryError):
        return found
    for name in names:
        match = BUCKET_FILE.match(name)
        if match and os.path.isfile(os.path.join(leaf, name)):
            found.append((int(match.group(1)), os.path.join(leaf, name)))
    return sorted(found)


def find_legacy_leaves(root: str) -> Iterator[str]:
    """Every folder under ``root`` (itself included) holding 0.0.7 bucket files, sorted."""
    for folder, subfolders, _ in os.walk(os.path.abspath(root)):
        subfolders.sort()
        if bucket_files(folder):
            yield folder


@contextlib.contextmanager
def bucket_lock(leaf: str, bucket: int, timeout: float = LOCK_TIMEOUT_SECONDS):
    """Hold the locks a 0.0.7 process takes for this bucket with either granularity it may be
    configured with (``func``, then ``call``; a 0.0.7 process holds one of them, so the order
    cannot deadlock with it). ``filelock.Timeout`` if one cannot be had in ``timeout`` s."""
    make_private_dirs(leaf)
    func_lock = FileLock(os.path.join(leaf, FUNC_LOCK_FILE), timeout=timeout)
    call_lock = FileLock(bucket_path(leaf, bucket) + LOCK_SUFFIX, timeout=timeout)
    with func_lock, call_lock:
        yield


def _untrusted(target: str, finding: str) -> UntrustedFolderError:
    return UntrustedFolderError(
        f"Not loading persist-to-disk 0.0.7 bucket files: {finding}. Bucket files are pickles "
        "and loading one runs code, so anyone who can write there could run code in this "
        "process. If that is not intended, make it yours and writable by you only (for "
        f"example `chmod go-w {target}`), or copy the tree somewhere only you can write. If "
        "you share it on purpose, opt in with the setting shared: 'group' (members of your "
        "groups may write it) or 'all' (anyone who can write it), through `shared = group` in "
        "config.ini, the environment variable PERSIST_TO_DISK_SHARED=group, or "
        "persist_to_disk.config.set_shared('group').")


def check_bucket_folder(leaf: str, root: str, sharing=None) -> None:
    """Raise :class:`UntrustedFolderError` unless the bucket files of ``leaf`` may be loaded:
    ``leaf`` and every existing folder above it up to ``root`` (the tree given on the command
    line) pass the trust rule at ``sharing`` (default: the configured level)."""
    sharing = trust.current_policy().sharing if sharing is None else sharing
    leaf, root = os.path.abspath(leaf), os.path.abspath(root)
    while not os.path.lexists(leaf):  # not made yet: its folders will be made owner-only
        if leaf == root or os.path.dirname(leaf) == leaf:
            return  # nothing of the tree exists yet, so there is nothing to load
        leaf = os.path.dirname(leaf)
    trust.check_tree(leaf, root, sharing,
                     lambda target, finding: str(_untrusted(target, finding)))


def read_bucket_bytes(path: str, sharing=None) -> bytes:
    """The raw bytes of a bucket file (call under :func:`bucket_lock`), after checking the file
    that is read against the trust rule at ``sharing`` (default: the configured level); the
    folders above it are :func:`check_bucket_folder`'s."""
    sharing = trust.current_policy().sharing if sharing is None else sharing
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        finding = trust.path_problem(path, sharing, info)
        if finding is not None or not stat.S_ISREG(info.st_mode):
            raise _untrusted(path, finding or f"{path} is not a regular file")
        return handle.read()


class UnreadableBucket(Exception):
    """A bucket file that cannot be loaded; the message says why and what to do."""


def load_bucket(data: bytes, path: str) -> Dict[tuple, Any]:
    """Unpickle a bucket file's bytes into its ``{key tuple: result}`` dict."""
    try:
        content = pickle.loads(data)
    except (ModuleNotFoundError, AttributeError, ImportError) as err:
        raise UnreadableBucket(
            f"{path} cannot be loaded: {type(err).__name__}: {err}. A class or module its "
            "results need cannot be imported here; run ptd from the project's environment "
            "(the same virtualenv and working directory as the cached code).") from err
    except Exception as err:  # truncated, garbled, not a pickle
        raise UnreadableBucket(
            f"{path} is damaged or truncated ({type(err).__name__}: {err}).") from err
    if not isinstance(content, dict):
        raise UnreadableBucket(f"{path} holds a {type(content).__name__}, not the dict of a "
                               "persist-to-disk 0.0.7 bucket.")
    return content


def write_bucket(path: str, content: Dict[tuple, Any]) -> None:
    """Write a bucket file atomically and durably (call under :func:`bucket_lock`).

    An existing file keeps its permission bits; a new one is owner-only, as our caches are.
    """
    folder = os.path.dirname(path)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o600
    fd, temporary = tempfile.mkstemp(prefix=".export-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(content, handle, protocol=BUCKET_PICKLE_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


class StoredValue:
    """A result carried as the pickle bytes we stored: it pickles to ``pickle.loads(<bytes>)``,
    so a reader unpickling the bucket gets the result itself, while we never unpickle (nor
    need the classes of) the results we export."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = bytes(blob)  # records hand large values over as memoryviews

    def __reduce__(self):
        return pickle.loads, (self.blob,)
