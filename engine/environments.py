"""Open LMDB environments: one per leaf folder per process, a bounded number at a time.

Facts this module is built around (see DESIGN.md):

* Opening an environment costs ~100 µs and the same one may not be opened twice in a process,
  so handles are kept open and shared by every caller in the process.
* Each open environment maps address space and holds 3 file descriptors, so at most
  ``max_open`` stay open; the least recently used idle one is closed to make room.
* An environment must not be used across ``fork()``. Before a fork we wait until no
  transaction is running (every handle's lock is taken), and the child closes what it
  inherited, then reopens lazily. Transactions are never kept open between calls.
* The pool's size follows the descriptor limit (``environment_budget``), and running out of
  descriptors while opening one closes idle environments and tries again instead of failing.
* ``map_size`` is address space, not disk. A full map is grown and the transaction retried.
  A map grown by another process makes LMDB refuse every new transaction (``MapResizedError``)
  until it is adopted with ``set_mapsize(0)``: every transaction of the engine is begun through
  :func:`begin_transaction`, which does that. ``set_mapsize`` remaps the file and invalidates
  every transaction of that environment in this process, so it is only ever called by the one
  thread that holds the handle's lock, with no other transaction of it open. Even opening meets
  it (py-lmdb begins a transaction inside ``lmdb.open``): :func:`open_lmdb` opens again.
* A store may be rebuilt by compaction into a new generation (see ``generations.py``). Handles
  are registered by leaf folder and follow the switch: a write that finds the seal in its own
  transaction, and a read that finds nothing where a seal is, reopen the store at the
  generation in use and run again.
* A store knows it existed: ``data.mdb`` is created with its meta pages already written
  (:func:`create_data_file`), so an empty one is damage, and a missing one beside a store's
  traces is damage too. Both are reported, never initialised afresh (all results gone).
* No lock is held past an exception: every path that takes a handle's lock releases it in a
  ``finally`` or on the way out of the exception.
"""

import contextlib
import errno
import fcntl
import itertools
import os
import stat
import threading
import time
from typing import Callable, Dict, Iterator, Optional, Tuple, TypeVar

import lmdb

from .durability import Durability
from .errors import CorruptStoreError, EngineError, ForeignFolderError
from . import trust
from .filesystem import ensure_local_filesystem, make_dirs
from .locks import conflicting_lock
from .generations import (DATA_FILE, GENERATION_KEY, LOCK_FILE, SEAL_KEY, SWITCHED_KEY,
                          generation_folder, generation_folders, list_folder, parse_seal,
                          read_current, register_descriptor_reliever, store_exists, store_traces)

T = TypeVar("T")

INITIAL_MAP_SIZE = 1 << 30  # 1 GiB of address space; grows by doubling when full
#: Overrides ``INITIAL_MAP_SIZE`` (bytes), read each time an environment is opened: tests use a
#: small map to make growth (and other processes' growth) frequent.
INITIAL_MAP_SIZE_VARIABLE = "PERSIST_TO_DISK_INITIAL_MAP_SIZE"
DEFAULT_MAX_OPEN = 64  # environments kept open when descriptors are plentiful
DESCRIPTORS_PER_ENVIRONMENT = 3  # data file, its synchronous twin for meta pages, lock file
MAX_READERS = 1024  # concurrent read transactions across all processes of one store
RECHECK_SECONDS = 1.0  # how often a reader checks that its store was not deleted or replaced
MAX_RESIZE_ADOPTIONS = 64  # maps adopted in a row before giving up (growth doubles the map)
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


def initial_map_size() -> int:
    """The map size an environment is opened with: ``INITIAL_MAP_SIZE``, or the environment
    variable ``PERSIST_TO_DISK_INITIAL_MAP_SIZE`` (bytes, rounded up to whole pages).

    Read at every open, not at import, so that a test can set it for the subprocesses it
    starts. A store whose data is larger is mapped at its data size anyway (LMDB raises it).
    """
    text = os.environ.get(INITIAL_MAP_SIZE_VARIABLE, "").strip()
    if not text:
        return INITIAL_MAP_SIZE
    try:
        size = int(text)
        if size < 64 * 1024:
            raise ValueError
    except ValueError:
        raise EngineError(
            f"The environment variable {INITIAL_MAP_SIZE_VARIABLE}={text!r} should be a number "
            "of bytes of at least 65536 (the initial address space of each cache store); "
            "unset it to use the default of 1 GiB.") from None
    return (size + 4095) // 4096 * 4096


def begin_transaction(env: "lmdb.Environment", **options) -> "lmdb.Transaction":
    """``env.begin(**options)``, adopting a map that another process has grown.

    When another process has grown the data beyond this process's map, LMDB refuses every new
    transaction with ``MapResizedError`` until the map is adopted with ``set_mapsize(0)``;
    without that, the store fails on every call. ``set_mapsize`` remaps the file and
    invalidates every other transaction of ``env`` in this process, so the caller must have
    none open: the pool's callers hold the handle's lock, and compaction closes its snapshot
    before it writes to the store it read. Every transaction of the engine begins here (the
    hit path tries ``env.begin`` inline first, and comes here only when that raised).
    """
    for _ in range(MAX_RESIZE_ADOPTIONS):
        try:
            return env.begin(**options)
        except lmdb.MapResizedError:
            env.set_mapsize(0)  # the size another process recorded in the file
    raise EngineError(
        f"The cache store in {env.path()} grew beyond this process's map "
        f"{MAX_RESIZE_ADOPTIONS} times in a row while a transaction began; another process is "
        "writing to it faster than it can be mapped. Try again; if it persists, check what "
        "writes to that store.")


def open_lmdb(path: str, **options) -> "lmdb.Environment":
    """``lmdb.open(path, **options)``, again when the map grew while it opened.

    LMDB maps an existing store at least at its data size, then py-lmdb begins a transaction
    to open the main database: another process growing the data in between makes that
    ``MapResizedError``. Opening again maps the new size.
    """
    for _ in range(MAX_RESIZE_ADOPTIONS):
        try:
            return lmdb.open(path, **options)
        except lmdb.MapResizedError:
            continue
    return lmdb.open(path, **options)


def environment_budget() -> int:
    """How many environments the pool keeps open: three eighths of the soft descriptor limit,
    at 3 descriptors each, at most ``DEFAULT_MAX_OPEN`` and at least 2.

    With compute-lock files (``locks._descriptor_budget``: an eighth, at least 2) the library
    keeps at most half of the limit, from ``ulimit -n 16`` up; the other half is the user's
    (the two took five eighths and more before, 29 of 32). With ``ulimit -n 64`` that is 8
    environments, with 128 it is 16, from 512 on it is 64. Read at each open, so a limit
    changed at run time is followed.
    """
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return DEFAULT_MAX_OPEN
    if soft == getattr(resource, "RLIM_INFINITY", -1) or soft <= 0:
        return DEFAULT_MAX_OPEN
    return max(2, min(DEFAULT_MAX_OPEN, soft * 3 // 8 // DESCRIPTORS_PER_ENVIRONMENT))


def error_number(err: BaseException) -> Optional[int]:
    """The ``errno`` behind an ``OSError``, or behind an ``lmdb.Error`` (py-lmdb puts only the
    system's message in it: ``"<path>: Too many open files"``)."""
    if isinstance(err, OSError):
        return err.errno
    if isinstance(err, lmdb.Error):
        text = str(err)
        for code in (errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT):
            if text.endswith(os.strerror(code)):
                return code
    return None


class StoreMissing(Exception):
    """Internal: the store was deleted (e.g. its folder removed) while this process had it open."""


class _Superseded(Exception):
    """Internal: the open generation was sealed by a compaction; reopen and run again."""


MAX_GENERATION_HOPS = 64  # following CURRENT and seals; more means something rewrites them


class _Handle:
    """An open environment plus the lock that keeps closing, growing and forking away from
    running transactions.

    It remembers the identity (device, inode) of its data file: a folder deleted or replaced
    under an open environment would otherwise swallow every later write into an unlinked file.
    """

    __slots__ = ("path", "folder", "generation", "env", "lock", "last_used", "durability",
                 "identity", "checked_at")

    def __init__(self, path: str, generation: int, env: "lmdb.Environment",
                 durability: Durability) -> None:
        self.path = path  # the leaf folder: what callers name
        self.generation = generation
        self.folder = generation_folder(path, generation)  # where the LMDB files are
        self.env: Optional[lmdb.Environment] = env
        self.lock = threading.Lock()
        self.last_used = 0
        self.durability = durability
        self.identity = _file_identity(self.folder)
        self.checked_at = time.monotonic()

    def is_current(self, generation_too: bool = True) -> bool:
        """Whether the files on disk are still the ones this environment has open, and (with
        ``generation_too``) no compaction has named a newer generation since.

        Writes check the files before every transaction (a write into a deleted data file would
        be lost; one beside a new lock file would not be serialised with other processes), but
        not the generation: they find a compaction's seal inside their own transaction.
        """
        self.checked_at = time.monotonic()
        if _file_identity(self.folder) != self.identity:
            return False
        if not generation_too:
            return True
        try:
            if read_current(self.path) > self.generation:
                return False
        except (CorruptStoreError, OSError):
            # Reported when the store is next opened (damage), or checked again next time (out
            # of descriptors, say): this handle still works.
            return True
        # Sealed by a compaction that has not (yet) named the new generation in CURRENT.
        with begin_transaction(self.env) as txn:
            return txn.get(SEAL_KEY) is None


def _identity_of(path: str):
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def _file_identity(folder: str):
    """(device, inode) of the data file and of the lock file. A lock file deleted under an
    open store would let the next process make a new one and write beside us unserialised,
    so a changed lock file makes the handle stale like a changed data file."""
    return (_identity_of(os.path.join(folder, DATA_FILE)),
            _identity_of(os.path.join(folder, LOCK_FILE)))


def _holds_pkl_buckets(path: str) -> bool:
    """Whether the folder ``path`` holds ``*.pkl`` files (0.0.7 buckets). Listed with
    ``list_folder``, not ``glob``: glob takes a listing that runs out of descriptors for an
    empty folder, and a folder of buckets would be taken for a new store."""
    try:
        names = list_folder(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return any(name.endswith(".pkl") and not name.startswith(".") for name in names)


def check_folder(path: str) -> None:
    """Refuse a path that is a file, or a folder of 0.0.7 `.pkl` buckets, before using it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ForeignFolderError(
            f"{path} should be a cache folder but is a file. Move it away or choose another "
            "persist_path."
        )
    if not store_exists(path) and _holds_pkl_buckets(path):
        raise ForeignFolderError(
            f"{path} holds .pkl bucket files of persist-to-disk 0.0.7, not a store of this "
            "version. Nothing was changed. Move that folder aside (or import it with "
            "`ptd import-pkl` once available), or use another persist_path."
        )


def _read_only_filesystem(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def open_generation(leaf: str, durability: Durability
                    ) -> Tuple["lmdb.Environment", int]:
    """Open the generation of ``leaf`` in use: ``(environment, generation)``.

    ``CURRENT`` names a generation; its environment is opened, then ``CURRENT`` is read again
    (a compaction may have switched and deleted the files meanwhile: generation numbers are
    never reused, so still being named means the real files were opened), and the environment
    is checked for a seal (a compactor that died before writing ``CURRENT``). Without
    ``CURRENT``, the generation is found from the folders (:func:`_generation_without_current`).
    A data file missing or empty where a store was raises :class:`CorruptStoreError`.
    """
    check_folder(leaf)
    ensure_local_filesystem(leaf)
    generation = read_current(leaf)
    env: Optional[lmdb.Environment] = None
    if not generation:
        try:
            generation, env = _generation_without_current(leaf, durability)
        except (lmdb.Error, OSError, CorruptStoreError):
            generation = read_current(leaf)  # a compaction switched and deleted meanwhile
            if not generation:
                raise
    for _ in range(MAX_GENERATION_HOPS):
        folder = generation_folder(leaf, generation)
        if env is None:
            if not os.path.isfile(os.path.join(folder, DATA_FILE)):
                if generation:
                    newer = read_current(leaf)
                    if newer > generation:
                        generation = newer
                        continue
                    raise CorruptStoreError(
                        f"The cache store in {leaf} names generation {generation}, but {folder} "
                        f"has no {DATA_FILE}. Nothing was deleted: run `ptd verify {leaf}`, or "
                        "move the folder aside to start that cache afresh.")
                traces = store_traces(leaf)
                if traces:
                    raise CorruptStoreError(
                        f"The cache store in {leaf} lost its data file: "
                        f"{os.path.join(leaf, DATA_FILE)} is missing, but {', '.join(traces)} "
                        "show that a store was there (deleted by hand, or by a cleanup?). It "
                        "was not created again empty. Restore the file from a backup, or move "
                        "the folder aside to start that cache afresh.")
            try:
                env = _open_environment(folder, durability, create=not generation)
            except (lmdb.Error, OSError, CorruptStoreError):
                newer = read_current(leaf)
                if newer > generation:
                    generation = newer  # deleted by a compaction between our look and the open
                    continue
                raise
        newer = read_current(leaf)
        if newer > generation:
            env.close()
            env, generation = None, newer
            continue
        try:
            with begin_transaction(env) as txn:
                sealed = parse_seal(txn.get(SEAL_KEY), folder, generation)
                made_by_compaction = generation == 0 or txn.get(GENERATION_KEY) is not None
        except BaseException:
            env.close()
            raise
        if sealed is not None:
            env.close()
            env, generation = None, sealed
            continue
        if not made_by_compaction:
            env.close()
            raise CorruptStoreError(
                f"The cache store in {leaf} names generation {generation}, but {folder} holds "
                "an empty environment that compaction did not make (its files were deleted "
                f"by hand?). Nothing was deleted: run `ptd verify {leaf}`, or move the folder "
                "aside to start that cache afresh.")
        return env, generation
    if env is not None:
        env.close()
    raise CorruptStoreError(
        f"The cache store in {leaf} keeps changing generation ({generation} after "
        f"{MAX_GENERATION_HOPS} switches). Is a compaction looping? Stop it and run "
        f"`ptd verify {leaf}`.")


def _generation_without_current(leaf: str, durability: Durability
                                ) -> Tuple[int, Optional["lmdb.Environment"]]:
    """Where following seals starts when ``CURRENT`` names no generation: ``(generation,
    its open environment or None)``.

    ``CURRENT`` is missing before the first compaction, and when it was deleted. The
    generation in use is then, in this order of proof:

    1. the highest ``gen-N`` marked ``SWITCHED_KEY`` (compaction marks a generation once every
       process was sent there; a rebuild not switched to yet, or never, has no mark);
    2. generation 0 if ``data.mdb`` is there (no compaction has switched: the ``gen-N`` folders
       are rebuilds in progress or abandoned);
    3. the lowest complete ``gen-N``, for stores compacted before the mark existed.

    Seals are followed from there by the caller. Without any ``gen-N`` folder this opens
    nothing: a store that was never compacted (or does not exist yet) is generation 0.
    """
    numbers = [generation for generation in generation_folders(leaf)
               if os.path.isfile(os.path.join(generation_folder(leaf, generation), DATA_FILE))]
    if not numbers:
        return 0, None
    complete = []
    for generation in reversed(numbers):
        env = _open_environment(generation_folder(leaf, generation), durability, create=False)
        try:
            with begin_transaction(env) as txn:
                switched = txn.get(SWITCHED_KEY) is not None
                made_by_compaction = txn.get(GENERATION_KEY) is not None
        except BaseException:
            env.close()
            raise
        if switched:
            return generation, env
        env.close()
        if made_by_compaction:
            complete.append(generation)
    if os.path.isfile(os.path.join(leaf, DATA_FILE)):
        return 0, None
    if complete:
        return min(complete), None
    raise CorruptStoreError(
        f"The cache store in {leaf} has no {DATA_FILE} and no CURRENT, and none of its "
        f"generation folders ({', '.join(f'gen-{n}' for n in numbers)}) is complete. Nothing "
        "was deleted: run `ptd verify` on it, or move the folder aside to start that cache "
        "afresh.")


def _open_environment(path: str, durability: Durability, create: bool = True
                      ) -> "lmdb.Environment":
    """Open the LMDB environment in the folder ``path`` (one generation of a store).

    ``create=False`` for generations made by compaction: only the compactor creates those,
    and a folder it has deleted must not be brought back empty. A data file that is empty, or
    missing where ``create`` is False, is :class:`CorruptStoreError`: LMDB would initialise it
    as a new, empty store.
    """
    policy = trust.current_policy()
    trust.check_trusted(path, policy)  # a cache is code: refuse folders others can write
    data_file = os.path.join(path, DATA_FILE)
    try:
        size: Optional[int] = os.stat(data_file).st_size
    except FileNotFoundError:
        size = None
    except NotADirectoryError:
        size = None  # reported below by LMDB, or by check_folder before
    if size == 0 and not _being_created(path):
        raise CorruptStoreError(
            f"The cache store in {path} is damaged: {data_file} is empty (0 bytes; truncated?). "
            "A store's data file is never empty, not even a new one, so every result it held "
            "is gone from it; it was not initialised afresh. Nothing was deleted: restore the "
            "file from a backup, or move the folder aside to start that cache afresh.")
    if size is None and not create and os.path.isdir(path):
        raise CorruptStoreError(
            f"The cache store in {path} has no {DATA_FILE} (deleted meanwhile?). Nothing was "
            "created there: run `ptd verify` on the store's folder.")
    if os.path.isdir(path) and _read_only_filesystem(path):
        # LMDB's lock file cannot be written here, so read without it, as LMDB itself does on a
        # read-only filesystem (MDB_ROFS); every write fails and is reported. Safe as long as no
        # process writes the same store through another, writable mount at the same time.
        options = {"readonly": True, "lock": False}
    else:
        if create:
            make_dirs(path, policy.sharing.folder_mode)
            if size is None:
                create_data_file(path, policy.sharing.file_mode)
        if os.path.isdir(path):
            reserve_lock_file(path)
        options = {"readonly": False, "lock": True, "create": create,
                   "mode": policy.sharing.file_mode,
                   **durability.lmdb_flags}
    try:
        env = open_lmdb(
            path,
            map_size=initial_map_size(),
            subdir=True,
            readahead=False,
            meminit=False,
            max_readers=MAX_READERS,
            max_spare_txns=0,
            **options,
        )
    except (lmdb.InvalidError, lmdb.CorruptedError, lmdb.VersionMismatchError,
            lmdb.InvalidParameterError) as err:
        raise CorruptStoreError(
            f"The cache store in {path} cannot be opened ({err}). It is not a valid LMDB "
            "environment of a compatible version. Nothing was deleted: move the folder aside "
            "to start that cache afresh, or run `ptd verify` to inspect it."
        ) from err
    except lmdb.Error as err:
        if error_number(err) in _OUT_OF_DESCRIPTORS:
            raise  # the pool closes idle environments and tries again
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise PermissionError(
                f"Cannot open the cache store in {path}: permission denied ({err}). Give your "
                "user read and write access to it, or point persist_path elsewhere."
            ) from err
        raise
    try:
        if not options["readonly"]:
            env.reader_check()  # free read slots left behind by killed processes
            trust.share_store_files(path, policy)  # group modes despite the umask
        _check_length(path, env)
    except BaseException:
        env.close()
        raise
    return env


_temporary_names = itertools.count()
#: ``link`` failing with these means the filesystem has no hard links (FAT, some FUSE mounts).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS,
                  errno.EXDEV}


def create_data_file(folder: str, mode: int) -> None:
    """Put a new LMDB data file, its meta pages written, at ``folder/data.mdb``, unless one is
    there already.

    LMDB itself creates ``data.mdb`` empty and writes its meta pages after; a process killed,
    or a disk filling up, in between leaves an empty file that cannot be told from one
    truncated to nothing (damage: every result gone), which LMDB would silently initialise
    afresh. So the file is made under a temporary name (by LMDB, without a lock file: no one
    else knows the name) and hard-linked into place. ``link`` never replaces: of two processes
    creating one store at once, one links and the other uses that file, and an empty
    ``data.mdb`` is always damage. Where the filesystem has no hard links, LMDB creates the file
    as it always did (a creator racing there is recognised by its lock, ``_being_created``).
    """
    target = os.path.join(folder, DATA_FILE)
    temporary = os.path.join(
        folder, f".{DATA_FILE}.{os.getpid()}.{threading.get_ident()}.{next(_temporary_names)}.tmp")
    try:
        try:
            lmdb.open(temporary, subdir=False, lock=False, create=True, mode=mode,
                      map_size=initial_map_size(), readahead=False, meminit=False,
                      max_spare_txns=0).close()
        except lmdb.Error as err:
            code = error_number(err)
            if code in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(code, f"No space left on the disk of {folder} to create the "
                              "cache store; free some space") from err
            if code in _OUT_OF_DESCRIPTORS:
                raise OSError(code, f"{os.strerror(code)} while creating the cache store in "
                              f"{folder}") from err
            raise
        try:
            os.link(temporary, target)
        except FileExistsError:
            pass  # another process created it first: everyone uses that one
        except OSError as err:
            if err.errno not in _NO_HARD_LINKS:
                raise
    finally:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass


def _being_created(folder: str) -> bool:
    """Whether another process is initialising the environment in ``folder`` right now: it
    holds LMDB's exclusive lock (a write lock on byte 0 of ``lock.mdb``, taken before LMDB
    creates ``data.mdb`` and downgraded once the meta pages are written). Only an LMDB that
    creates the data file itself (where there are no hard links, or an older version of this
    library) leaves it empty for that moment; an empty data file nobody is initialising is
    damage."""
    try:
        fd = os.open(os.path.join(folder, LOCK_FILE),
                     os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        found = conflicting_lock(fd, 0)
        return found is not None and found[0] == fcntl.F_WRLCK
    finally:
        os.close(fd)


# LMDB's lock file: a header and 64 bytes per reader slot, rounded up to whole pages.
LOCK_FILE_BYTES = ((MAX_READERS * 64 + 4096) + 4095) // 4096 * 4096


def reserve_lock_file(path: str) -> None:
    """Give ``lock.mdb`` real disk blocks before LMDB maps it.

    LMDB makes the lock file with ``ftruncate`` (a sparse file) and writes it through a memory
    map; on a full disk, the first write to a page with no block behind it kills the process
    with SIGBUS instead of raising. Allocating the blocks first turns that into an ``OSError``
    (ENOSPC), which the caller reports. ``posix_fallocate`` never changes bytes already
    written, so it is safe on a lock file another process is using.
    """
    lock_file = os.path.join(path, LOCK_FILE)
    mode = trust.current_policy().sharing.file_mode
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, mode)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"No space left on the disk of {path} to create the "
                          "cache store's lock file; free some space") from err
        return  # read-only, permissions: LMDB reports it with its own message
    try:
        info = os.fstat(fd)
        if info.st_size >= LOCK_FILE_BYTES:
            return
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)  # open() applied the umask; teammates must open it too
        try:
            os.posix_fallocate(fd, 0, LOCK_FILE_BYTES)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"No space left on the disk of {path} for the "
                              "cache store's lock file; free some space") from err
            # EOPNOTSUPP and the like: no preallocation on this filesystem; LMDB goes on as
            # it always does.
    finally:
        os.close(fd)


def _check_length(path: str, env: "lmdb.Environment") -> None:
    """Refuse a data file shorter than its own meta page says: reading the missing pages
    through the memory map would kill the process with SIGBUS instead of raising."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    actual = os.path.getsize(os.path.join(path, DATA_FILE))
    if actual < needed:
        env.close()
        raise CorruptStoreError(
            f"The cache store in {path} is truncated: {DATA_FILE} has {actual} bytes but its "
            f"records need {needed}. Nothing was deleted: move the folder aside to start that "
            "cache afresh, or run `ptd verify` to inspect it.")


class EnvironmentPool:
    """The process-wide registry of open environments."""

    def __init__(self, max_open: Optional[int] = None) -> None:
        self._max_open = max_open
        self._handles: Dict[str, _Handle] = {}
        self._lock = threading.Lock()
        self._clock = itertools.count(1)
        self._held_for_fork: list = []

    @property
    def max_open(self) -> int:
        """How many environments stay open: as given, or :func:`environment_budget`."""
        return self._max_open if self._max_open is not None else environment_budget()

    # --- using an environment -------------------------------------------------------------
    def read(self, path: str, durability: Durability,
             action: Callable[["lmdb.Transaction"], T]) -> T:
        """Run ``action`` in one short read transaction (no file lock, never blocks writers)."""
        while True:
            handle = self._checkout(path, durability, write=False)
            try:
                txn = begin_transaction(handle.env)
                try:
                    result = action(txn)
                    # Found nothing: make sure it is because there is nothing, not because a
                    # compaction moved the store on (a hit in a sealed generation is still
                    # right; the periodic recheck moves this process over within a second).
                    if result is None and txn.get(SEAL_KEY) is not None:
                        raise _Superseded
                    return result
                finally:
                    txn.abort()
            except _Superseded:
                self._retire(handle)
            finally:
                handle.lock.release()

    def newest(self, path: str, durability: Durability, prefix: bytes, after: bytes,
               large: Optional[Callable[[bytes, memoryview], T]] = None,
               large_size: int = 64 * 1024):
        """``(key, value)`` of the last key starting with ``prefix`` (``after`` sorts after all
        of them), or None: the hit path's one lookup, without a callback.

        With ``large``, a value over ``large_size`` bytes is not copied out of the memory map:
        ``(key, large(key, view))`` is returned, ``large`` having run inside the transaction,
        while the view is valid. Copying a large result and then unpickling it holds two
        copies at once, which made glibc return and re-fault the memory on every hit (1 MB
        results loaded 6x slower than LMDB reads them).
        """
        while True:
            handle = self._handles.get(path)
            if handle is not None and handle.durability is durability:
                handle.lock.acquire()  # the common case of _checkout, inline
                handle.last_used = next(self._clock)
                if handle.env is None or time.monotonic() - handle.checked_at > RECHECK_SECONDS:
                    handle.lock.release()
                    handle = self._checkout(path, durability, write=False)
            else:
                handle = self._checkout(path, durability, write=False)
            try:
                env = handle.env
                views = large is not None
                try:
                    txn = env.begin(buffers=views)
                except lmdb.MapResizedError:  # kept off the hit path's common case
                    txn = begin_transaction(env, buffers=views)
                try:
                    cursor = txn.cursor()
                    if (cursor.set_range(after) and cursor.prev()) or cursor.last():
                        if not views:
                            key, value = cursor.item()
                            if key[:len(prefix)] == prefix:
                                return key, value
                        else:
                            key = bytes(cursor.key())
                            if key[:len(prefix)] == prefix:
                                value = cursor.value()
                                if len(value) > large_size:
                                    return key, large(key, value)
                                return key, bytes(value)
                    if txn.get(SEAL_KEY) is None:
                        return None
                finally:
                    txn.abort()
                self._retire(handle)
            finally:
                handle.lock.release()

    def write(self, path: str, durability: Durability,
              action: Callable[["lmdb.Transaction"], T]) -> T:
        """Run ``action`` in one write transaction, growing the map and retrying when full."""
        while True:
            handle = self._checkout(path, durability, write=True)
            try:
                env = handle.env
                while True:
                    try:
                        with begin_transaction(env, write=True) as txn:
                            if txn.get(SEAL_KEY) is not None:
                                raise _Superseded  # compacted: write to the new generation
                            return action(txn)
                    except lmdb.MapFullError:  # the transaction is aborted: no txn is open
                        env.set_mapsize(env.info()["map_size"] * 2)
            except _Superseded:
                self._retire(handle)
            finally:
                handle.lock.release()

    @contextlib.contextmanager
    def exclusive(self, path: str, durability: Durability) -> Iterator[_Handle]:
        """Hold the open handle of ``path`` for a long operation (compaction).

        No other thread of this process runs a transaction on the store meanwhile; other
        processes are not affected. The handle's ``env`` and ``generation`` may be used freely
        inside; ``retire`` it when the generation it has open has been superseded.
        """
        handle = self._checkout(path, durability, write=True)
        try:
            yield handle
        finally:
            handle.lock.release()

    def retire(self, handle: _Handle) -> None:
        """Close a handle held through :meth:`exclusive` (its generation was superseded)."""
        if handle.env is not None:
            self._retire(handle)

    def _checkout(self, path: str, durability: Durability, write: bool) -> _Handle:
        """Return the open handle of ``path`` with its lock held.

        A handle whose data file was deleted or replaced, or that was opened with another
        durability, is closed and the store reopened (writes check every time, reads at most
        every ``RECHECK_SECONDS``). A read of a store that no longer exists raises
        :class:`StoreMissing`; a write creates it again.

        Whatever the checks raise, the handle's lock is released on the way out: a lock kept
        would block every later call of this process on the store for good.
        """
        while True:
            handle = self._handles.get(path)
            if handle is None:
                if not write and not store_exists(path):
                    raise StoreMissing(path)
                handle = self._open(path, durability)
            handle.lock.acquire()
            try:
                if handle.env is not None:
                    if handle.durability is not durability:
                        stale = True
                    elif write:
                        stale = not handle.is_current(generation_too=False)
                    else:
                        stale = (time.monotonic() - handle.checked_at > RECHECK_SECONDS
                                 and not handle.is_current())
                    if not stale:
                        handle.last_used = next(self._clock)
                        return handle
                    self._retire(handle)
            except BaseException:
                handle.lock.release()
                raise
            handle.lock.release()  # closed (evicted, stale) since lookup: look again

    def _retire(self, handle: _Handle) -> None:
        """Close a handle whose lock the caller holds, then unregister it.

        Takes no pool lock (the pool lock is always taken before handle locks, never after).
        Popping is safe without it: ``_open`` only adds a handle for a path that has none, and
        this one stays registered until popped here.
        """
        handle.env.close()
        handle.env = None
        if self._handles.get(handle.path) is handle:
            self._handles.pop(handle.path, None)

    def _open(self, path: str, durability: Durability) -> _Handle:
        """Open and register the store of ``path``, closing idle ones to stay within
        ``max_open``, and more of them when the process runs out of file descriptors anyway
        (other files of the process count too): only when none is left to close is that an
        error."""
        with self._lock:
            handle = self._handles.get(path)
            if handle is not None:
                return handle
            if len(self._handles) >= self.max_open:
                self._evict_idle(len(self._handles) - self.max_open + 1)
            while True:
                try:
                    env, generation = open_generation(path, durability)
                    break
                except (lmdb.Error, OSError) as err:
                    if error_number(err) not in _OUT_OF_DESCRIPTORS:
                        raise
                    if not self._evict_idle(max(1, len(self._handles) // 2)):
                        raise OSError(err.errno if isinstance(err, OSError) else errno.EMFILE,
                                      f"Too many open files to open the cache store in {path} "
                                      f"({err}), and no idle cache store is left to close. "
                                      "Raise the limit (`ulimit -n`), or close files the "
                                      "program keeps open.") from err
            handle = _Handle(path, generation, env, durability)
            self._handles[path] = handle
            return handle

    def relieve_descriptors(self) -> bool:
        """Close half of the idle environments (at least one), because the process ran out of
        file descriptors somewhere else in the engine (listing a leaf); whether any closed.

        Registered with ``generations.register_descriptor_reliever`` for ``POOL``: a process
        whose descriptors are all held by idle environments lists a new leaf instead of
        failing with ``Too many open files``, as ``_open`` does when opening one.

        Takes no pool lock: listings run inside ``_open`` (which holds it) and under a handle
        lock (compaction), and the pool lock is never taken after a handle lock. Handles are
        only taken without blocking, so one in use (or held by this thread) is skipped.
        """
        return self._evict_idle(max(1, len(self._handles) // 2)) > 0

    def _evict_idle(self, count: int) -> int:
        """Close up to ``count`` of the least recently used handles that no transaction is
        using; return how many were closed."""
        closed = 0
        for handle in sorted(self._handles.values(), key=lambda h: h.last_used):
            if closed >= count:
                break
            if handle.lock.acquire(blocking=False):
                try:
                    if handle.env is not None:  # not closed already by another thread
                        closed += 1
                    self._close_handle(handle)
                finally:
                    handle.lock.release()
        return closed

    def _close_handle(self, handle: _Handle) -> None:
        # Only this handle: retired meanwhile, its path may already have a new one.
        if self._handles.get(handle.path) is handle:
            self._handles.pop(handle.path, None)
        if handle.env is not None:
            handle.env.close()
            handle.env = None

    # --- lifecycle ------------------------------------------------------------------------
    def close(self, path: str) -> None:
        with self._lock:
            handle = self._handles.get(path)
            if handle is None:
                return
            with handle.lock:
                self._close_handle(handle)

    def close_all(self) -> None:
        with self._lock:
            for handle in list(self._handles.values()):
                with handle.lock:
                    self._close_handle(handle)

    def open_paths(self):
        return list(self._handles)

    def _before_fork(self) -> None:
        """Wait until no transaction runs: take the pool lock, then every handle's lock.

        The handles are snapshotted first: a handle retired meanwhile (``_retire`` pops it
        without the pool lock) must neither break the iteration nor be released twice.
        """
        self._lock.acquire()
        held = []
        try:
            for handle in list(self._handles.values()):
                handle.lock.acquire()
                held.append(handle)
        finally:
            self._held_for_fork = held

    def _after_fork_in_parent(self) -> None:
        try:
            for handle in self._held_for_fork:
                handle.lock.release()
        finally:
            self._held_for_fork = []
            self._lock.release()

    def _after_fork_in_child(self) -> None:
        """The child must not use what it inherited: close it (no transaction is running,
        _before_fork made sure) and start with an empty registry."""
        for handle in self._handles.values():
            try:
                if handle.env is not None:
                    handle.env.close()
            except lmdb.Error:
                pass
            handle.env = None
        self._handles = {}
        self._held_for_fork = []
        self._lock = threading.Lock()


POOL = EnvironmentPool()
register_descriptor_reliever(POOL.relieve_descriptors)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=POOL._before_fork,
        after_in_parent=POOL._after_fork_in_parent,
        after_in_child=POOL._after_fork_in_child,
    )
