"""Generations: how a store is rebuilt while other processes keep using it.

LMDB files never shrink, and replacing ``data.mdb`` under an environment that another process
has open loses data (DESIGN.md). So compaction never touches the environment in use: it builds a
new *generation* beside it and then switches every process over.

Layout of a leaf folder::

    <leaf>/data.mdb, lock.mdb     generation 0 (every store starts here)
    <leaf>/CURRENT                "N": the generation in use, once a compaction has run
    <leaf>/gen-N/data.mdb, ...    generation N >= 1

The switch is decided inside LMDB, not by the files: the compactor writes a *seal* record
(``SEAL_KEY`` = the next generation's number) into the old environment in the same write
transaction that copies the last changes across. LMDB serialises writers, so every write that
committed before the seal was copied, and every write transaction that begins after it sees the
seal and goes to the new generation instead. ``CURRENT`` is written afterwards, as a hint for
processes that open the store later; when the two disagree (a compactor killed between them),
the seal wins. Old generations are deleted only after ``CURRENT`` names a newer one, and
generation numbers are never reused, so a process that opened a generation and then still finds
it named by ``CURRENT`` knows it opened the real files.

A store knows it existed, and finds its generation without ``CURRENT``:

* Right after sealing, the compactor writes ``SWITCHED_KEY`` into the new generation: proof that
  every process was sent there. Without ``CURRENT`` (deleted by hand), the highest generation
  holding that mark is where following seals starts; a rebuild that was never switched to (a
  compaction still running, or one that died) has no mark and is never used.
* Every ``data.mdb`` is created with LMDB's meta pages already in it (see
  ``environments.create_data_file``), so an empty ``data.mdb`` is always damage (a truncation),
  never a store being created, and it is reported, never initialised afresh. A missing
  ``data.mdb`` beside the traces of a store (``store_traces``: its lock file, ``CURRENT``,
  generation folders) is reported too.
* Compaction deletes a generation only once it is proven superseded (sealed to one not newer than
  the generation in use), or proven never used (a rebuild of the generation in use that was
  never switched to).
"""

import errno
import os
import re
from typing import Callable, Iterator, List, Optional

from .errors import CorruptStoreError

DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"
CURRENT_FILE = "CURRENT"
GENERATION_PREFIX = "gen-"
SEAL_KEY = b"\xff\xff\xff\xff" + b"next"  # sorts with the store's metadata, after every record
#: Written by compaction into every generation it makes: a ``gen-N`` environment without it was
#: re-created empty (LMDB creates missing files when it opens) and is never used.
GENERATION_KEY = b"\xff\xff\xff\xff" + b"generation"
#: Written by compaction into a new generation, beside ``GENERATION_KEY``: the generation it was
#: rebuilt from. A rebuild of the generation in use that was never switched to (its compactor
#: died) is thereby proven unused, and deleted by the next compaction.
BUILT_FROM_KEY = b"\xff\xff\xff\xff" + b"built-from"
#: Written by compaction into the new generation once the old one is sealed (every process was
#: sent there): how a store finds its generation when ``CURRENT`` is gone.
SWITCHED_KEY = b"\xff\xff\xff\xff" + b"switched"
#: The store's own bookkeeping of generations: never copied from one generation to the next.
GENERATION_KEYS = (SEAL_KEY, GENERATION_KEY, BUILT_FROM_KEY, SWITCHED_KEY)
_GENERATION_NAME = re.compile(r"gen-([1-9][0-9]*)\Z")
#: Folders inside a store folder that belong to the store, not to groupby leaves below it.
STORE_INTERNAL_FOLDERS = ("locks",)
#: What the engine may call a file or folder it makes in a store's folder or a project's folder,
#: now or in a later version: LMDB files (``*.mdb``), lock files (``*.lock``), temporary files
#: (``*.tmp``), ``CURRENT``, ``locks`` and ``gen-N``. A new internal name must fit this pattern
#: (tests/test_closures_and_leaves.py checks every name a store, its compaction and each lock
#: scope create). Never a name containing ``%``: the layer above escapes groupby folder names
#: with it (a groupby value ``lock.mdb`` is the folder ``%lock.mdb``).
_INTERNAL_NAME = re.compile(r"CURRENT|locks|gen-[0-9]+|.*\.(?:mdb|lock|tmp)", re.DOTALL)
FREE_NAME_MARK = "%"


def is_internal_name(name: str) -> bool:
    """Whether the engine may create an entry called ``name`` in a store's folder (or a
    project's), so that no groupby leaf folder may be called so: a leaf ``lock.mdb`` below a
    store would stand where LMDB keeps its lock file, and ``gen-1`` would be deleted by a
    compaction as an old generation."""
    return FREE_NAME_MARK not in name and _INTERNAL_NAME.fullmatch(name) is not None


def generation_folder(leaf: str, generation: int) -> str:
    """The folder holding the LMDB files of ``generation``."""
    return leaf if generation == 0 else os.path.join(leaf, f"{GENERATION_PREFIX}{generation}")


def read_current(leaf: str) -> int:
    """The generation named by ``CURRENT`` (0 when there is none: no compaction ran yet, or the
    file was deleted; the caller then finds the generation without it)."""
    path = os.path.join(leaf, CURRENT_FILE)
    try:
        with open(path, "rb") as handle:
            text = handle.read(32)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    except IsADirectoryError:
        text = None
    try:
        if text is None:
            raise ValueError
        generation = int(text.decode("ascii").strip())
        if generation < 1:
            raise ValueError
    except ValueError:  # UnicodeDecodeError included
        held = "is a folder" if text is None else f"holds {text[:32]!r}"
        raise CorruptStoreError(
            f"{path} should hold a generation number but {held}. Nothing was deleted. Remove "
            "it: the store then finds the generation in use from its gen-N folders, and the "
            f"next `ptd compact {leaf}` writes it again. Or move the folder {leaf} aside to "
            "start that cache afresh."
        ) from None
    return generation


def write_current(leaf: str, generation: int, mode: int = 0o600) -> None:
    """Name ``generation`` in ``CURRENT`` atomically and durably (write, fsync, rename).

    ``mode`` is the sharing level's file mode: every user of a shared cache must read it.
    """
    target = os.path.join(leaf, CURRENT_FILE)
    temporary = f"{target}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # open() applies the umask
        os.write(fd, f"{generation}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, target)
    _fsync_folder(leaf)


def _fsync_folder(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Called, in order, when listing a leaf runs out of file descriptors: each closes descriptors
#: the engine keeps open but is not using (the environment pool registers its idle
#: environments, see ``register_descriptor_reliever``) and returns whether it closed any.
_descriptor_relievers: List[Callable[[], bool]] = []
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


def register_descriptor_reliever(reliever: Callable[[], bool]) -> None:
    """Have ``reliever`` close idle descriptors when a listing here runs out of them.

    This module sits below the environment pool (which imports it), so the pool hands its
    close-idle step in rather than being imported: a process whose descriptors are all held by
    idle environments then lists a new leaf instead of failing with ``Too many open files``.
    """
    if reliever not in _descriptor_relievers:
        _descriptor_relievers.append(reliever)


def list_folder(folder: str) -> List[str]:
    """``os.listdir(folder)``; out of descriptors (``listdir`` needs one), idle ones the engine
    keeps are closed and the listing tried again, until none is left to close."""
    while True:
        try:
            return os.listdir(folder)
        except OSError as err:
            if err.errno not in _OUT_OF_DESCRIPTORS:
                raise
            if not any(reliever() for reliever in _descriptor_relievers):
                raise OSError(err.errno, f"{os.strerror(err.errno)} to list the cache folder "
                              f"{folder}, and no idle cache store is left to close. Raise the "
                              "limit (`ulimit -n`), or close files the program keeps "
                              "open.") from err


def generation_folders(leaf: str) -> List[int]:
    """The number of every ``gen-N`` folder in ``leaf``, complete or not, in increasing order."""
    try:
        names = list_folder(leaf)
    except (FileNotFoundError, NotADirectoryError):
        return []
    matches = (_GENERATION_NAME.match(name) for name in names)
    return sorted(int(match.group(1)) for match in matches if match)


def existing_generations(leaf: str) -> List[int]:
    """Every generation with a data file in ``leaf``, in increasing order."""
    found = [0] if os.path.isfile(os.path.join(leaf, DATA_FILE)) else []
    return found + [generation for generation in generation_folders(leaf)
                    if os.path.isfile(os.path.join(generation_folder(leaf, generation),
                                                   DATA_FILE))]


def store_exists(leaf: str) -> bool:
    """Whether ``leaf`` holds a store (of any generation), or the traces of one whose data file
    is gone (opening it then reports the damage instead of finding nothing)."""
    return os.path.isfile(os.path.join(leaf, DATA_FILE)) or bool(store_traces(leaf))


def store_traces(leaf: str) -> List[str]:
    """What in ``leaf`` shows that a store was there, besides its data file: LMDB's lock file
    (made only once ``data.mdb`` exists, and never empty once LMDB used it), ``CURRENT``, and
    ``gen-N`` folders. Not the ``locks`` folder of compute locks: a function whose first call
    raised has one and never stored anything."""
    traces = []
    try:
        if os.path.getsize(os.path.join(leaf, LOCK_FILE)) > 0:
            traces.append(LOCK_FILE)
    except OSError:
        pass
    if os.path.isfile(os.path.join(leaf, CURRENT_FILE)):
        traces.append(CURRENT_FILE)
    traces.extend(f"{GENERATION_PREFIX}{generation}" for generation in generation_folders(leaf))
    return traces


def is_store_folder(path: str) -> bool:
    return store_exists(path)


def is_internal_folder(leaf: str, name: str) -> bool:
    """Whether ``name`` inside the store folder ``leaf`` is the store's own (a generation or
    its lock files) rather than a groupby leaf below it."""
    return name in STORE_INTERNAL_FOLDERS or bool(_GENERATION_NAME.match(name))


def find_stores(root: str) -> Iterator[str]:
    """Every leaf folder under ``root`` (itself included) that holds a store, in sorted order.

    Groupby leaves may sit below a folder that is itself a store (a function whose ``groupby``
    changed), so the walk goes on below stores, skipping only their own generation and lock
    folders.
    """
    root = os.path.abspath(root)
    for folder, subfolders, _ in os.walk(root):
        subfolders.sort()
        if store_exists(folder):
            yield folder
            subfolders[:] = [name for name in subfolders
                             if not is_internal_folder(folder, name)]


def store_file_bytes(leaf: str) -> int:
    """Bytes of every generation's data file: what the store occupies on disk."""
    total = 0
    for generation in existing_generations(leaf):
        try:
            total += os.path.getsize(os.path.join(generation_folder(leaf, generation), DATA_FILE))
        except FileNotFoundError:
            pass  # removed by a compaction meanwhile
    return total


def parse_seal(value: Optional[bytes], folder: str = "", generation: int = -1
               ) -> Optional[int]:
    """The generation a seal record in ``generation`` (whose files are in ``folder``) points to,
    or None for an unsealed environment.

    A seal that is not a number above ``generation`` is damage: :class:`CorruptStoreError`
    naming the folder (following it would fail on every call, or loop).
    """
    if value is None:
        return None
    raw = bytes(value)
    try:
        sealed = int(raw.decode("ascii"))
        if sealed <= generation:
            raise ValueError
    except ValueError:  # UnicodeDecodeError included
        raise CorruptStoreError(
            f"The cache store in {folder or 'this store'} is damaged: its seal record (which "
            "names the generation a compaction moved the store to) holds "
            f"{raw[:32]!r}, not a generation number above {generation}. Nothing was deleted. "
            f"Run `ptd verify {folder}` and move the folder aside to start that cache afresh, "
            "or restore it from a backup."
        ) from None
    return sealed


def encode_seal(generation: int) -> bytes:
    return str(generation).encode("ascii")
