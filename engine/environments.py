"""Opening one LMDB environment (one generation of a store, in one folder), and running a
transaction in it. Every ``lmdb.open`` of the engine is :func:`open_lmdb`, every transaction
begins in :func:`begin_transaction`, and every write that may fill the map runs through
:func:`write_transaction`: the options and the two retries are stated once.

Facts this module is built around (see DESIGN.md):

* ``map_size`` is address space, not disk. A full map is grown and the transaction retried
  (``MapFullError`` aborts the whole transaction, so the retry runs it again from the start).
  A map grown by another process makes LMDB refuse every new transaction (``MapResizedError``)
  until it is adopted with ``set_mapsize(0)``: every transaction of the engine is begun
  through :func:`begin_transaction`, which does that. ``set_mapsize`` remaps the file and
  invalidates every transaction of that environment in this process, so it is only ever
  called by the one thread that holds the handle's lock, with no other transaction of it
  open. Even opening meets it (py-lmdb begins a transaction inside ``lmdb.open``):
  :func:`open_lmdb` opens again.
* ``max_spare_txns=0``: a spare read transaction kept across ``fork()`` gave ``MDB_BAD_RSLOT``
  in the parent. ``readahead=False`` and ``meminit=False``: random reads of a large map, and
  no zeroing of pages about to be written.
* A store knows it existed: ``data.mdb`` is created with its meta pages already written
  (:func:`create_data_file`), so an empty one is damage, never initialised afresh (all
  results gone). ``lock.mdb`` gets its disk blocks before LMDB maps it
  (:func:`reserve_lock_file`): on a full disk LMDB's first write to a sparse page killed the
  process with SIGBUS. A data file shorter than its meta page says is refused
  (:func:`_check_length`) for the same reason.
* The folder is checked before LMDB opens anything in it: trusted (``trust.py``: a cache is
  code), and a read-only filesystem is read without LMDB's lock file, as LMDB itself does.

Which generation of a store to open, and following a compaction's switch, is
``generations.py``; keeping environments open and shared in a process is ``pool.py``.
"""

import errno
import fcntl
import itertools
import os
import stat
import threading
from typing import Callable, Optional, TypeVar

import lmdb

try:  # py-lmdb >= 3 imports this from inside lmdb.open, on the first open of a process: here
    # instead, so that a child forked while another thread opened its first environment never
    # waits for that thread's import lock (held for ever in the child), and so that a first
    # call does not pay for an import (~0.1 ms)
    import lmdb._envid  # noqa: F401
except ImportError:  # (older py-lmdb: nothing imported there)
    pass

from . import settings as _settings
from . import trust
from .durability import Durability
from .errors import CorruptStoreError, EngineError, error_number
from .filesystem import make_dirs
from .locks import conflicting_lock
from .settings import DEFAULT_MAP_SIZE, wording

T = TypeVar("T")

DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"
#: The bytes a new environment maps first (it grows by doubling when full): copied from the
#: installed ``EngineSettings`` (``_apply_settings``), never read from the environment here.
INITIAL_MAP_SIZE = DEFAULT_MAP_SIZE
MAX_READERS = 1024  # concurrent read transactions across all processes of one store
MAX_RESIZE_ADOPTIONS = 64  # maps adopted in a row before giving up (growth doubles the map)
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


def initial_map_size() -> int:
    """The map size a new environment is opened with (``EngineSettings.initial_map_size``,
    rounded up to whole pages, or 1 GiB). A store whose data is larger is mapped at its data
    size anyway (LMDB raises it)."""
    return INITIAL_MAP_SIZE


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


def open_lmdb(path: str, *, map_size: Optional[int] = None, mode: int = 0o600,
              subdir: bool = True, **options) -> "lmdb.Environment":
    """``lmdb.open(path, ...)`` with the options every environment of the engine shares (see
    the module docstring), and ``options`` (durability, locking, creation) on top: the only
    ``lmdb.open`` of the engine. Opened again when the map grew while it opened: LMDB maps an
    existing store at least at its data size, then py-lmdb begins a transaction to open the
    main database, and another process growing the data in between makes that
    ``MapResizedError``; opening again maps the new size."""
    arguments = dict(map_size=map_size or INITIAL_MAP_SIZE, subdir=subdir, readahead=False,
                     meminit=False, max_readers=MAX_READERS, max_spare_txns=0, mode=mode,
                     **options)
    for attempt in range(MAX_RESIZE_ADOPTIONS + 1):
        try:
            return lmdb.open(path, **arguments)
        except lmdb.MapResizedError:
            if attempt == MAX_RESIZE_ADOPTIONS:
                raise
    raise AssertionError("unreachable")


def write_transaction(env: "lmdb.Environment",
                      action: Callable[["lmdb.Transaction"], T]) -> T:
    """Run ``action`` in one write transaction of ``env`` and commit it; when the map is full,
    grow it (double) and run ``action`` again from the start (``MapFullError`` aborted the
    transaction, so no transaction of ``env`` is open while it grows). The engine's one
    map-full retry: the pool's writes, compaction's copy and its seal all run through it.
    Whatever else ``action`` raises aborts the transaction and propagates."""
    while True:
        try:
            try:
                txn = env.begin(write=True)
            except lmdb.MapResizedError:  # kept off the common case, as the hit path does
                txn = begin_transaction(env, write=True)
            with txn:
                return action(txn)
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def _identity_of(path: str):
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def file_identity(folder: str):
    """(device, inode) of the data file and of the lock file. A lock file deleted under an
    open store would let the next process make a new one and write beside us unserialised,
    so a changed lock file makes the handle stale like a changed data file."""
    return (_identity_of(os.path.join(folder, DATA_FILE)),
            _identity_of(os.path.join(folder, LOCK_FILE)))


def _read_only_filesystem(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def open_environment(path: str, durability: Durability, create: bool = True,
                     leaf: Optional[str] = None) -> "lmdb.Environment":
    """Open the LMDB environment in the folder ``path`` (one generation of a store).

    ``create=False`` for generations made by compaction: only the compactor creates those,
    and a folder it has deleted must not be brought back empty. A data file that is empty, or
    missing where ``create`` is False, is :class:`CorruptStoreError`: LMDB would initialise it
    as a new, empty store. ``leaf``: the store's folder, named in messages (``path`` itself
    when not given).
    """
    leaf = leaf or path
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
            f"created there: {wording().verify_command(leaf)}.")
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
                   **durability.lmdb_flags}
    try:
        env = open_lmdb(path, mode=policy.sharing.file_mode, **options)
    except (lmdb.InvalidError, lmdb.CorruptedError, lmdb.VersionMismatchError,
            lmdb.InvalidParameterError) as err:
        raise CorruptStoreError(
            f"The cache store in {path} cannot be opened ({err}). It is not a valid LMDB "
            "environment of a compatible version. Nothing was deleted: move the folder aside "
            f"to start that cache afresh, or {wording().verify_command(leaf)} to "
            "inspect it."
        ) from err
    except lmdb.Error as err:
        if error_number(err) in _OUT_OF_DESCRIPTORS:
            raise  # the pool closes idle environments and tries again
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise PermissionError(
                f"Cannot open the cache store in {path}: permission denied ({err}). Give your "
                f"user read and write access to it, or point {wording().persist_path} "
                "elsewhere."
            ) from err
        raise
    try:
        if not options["readonly"]:
            env.reader_check()  # free read slots left behind by killed processes
            trust.share_store_files(path, policy)  # group modes despite the umask
        _check_length(path, env, leaf)
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
            open_lmdb(temporary, subdir=False, lock=False, create=True, mode=mode).close()
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


def _check_length(path: str, env: "lmdb.Environment", leaf: str) -> None:
    """Refuse a data file shorter than its own meta page says: reading the missing pages
    through the memory map would kill the process with SIGBUS instead of raising."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    actual = os.path.getsize(os.path.join(path, DATA_FILE))
    if actual < needed:
        env.close()
        raise CorruptStoreError(
            f"The cache store in {path} is truncated: {DATA_FILE} has {actual} bytes but its "
            f"records need {needed}. Nothing was deleted: move the folder aside to start that "
            f"cache afresh, or {wording().verify_command(leaf)} to inspect it.")


def _apply_settings(settings: "_settings.EngineSettings") -> None:
    """Copy the initial map size of newly installed settings (read at every open)."""
    global INITIAL_MAP_SIZE
    INITIAL_MAP_SIZE = settings.map_size


_settings.on_install(_apply_settings)
