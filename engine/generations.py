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
"""

import os
import re
from typing import Iterator, List, Optional

from .errors import CorruptStoreError

DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"
CURRENT_FILE = "CURRENT"
GENERATION_PREFIX = "gen-"
SEAL_KEY = b"\xff\xff\xff\xff" + b"next"  # sorts with the store's metadata, after every record
#: Written by compaction into every generation it makes: a ``gen-N`` environment without it was
#: re-created empty (LMDB creates missing files when it opens) and is never used.
GENERATION_KEY = b"\xff\xff\xff\xff" + b"generation"
_GENERATION_NAME = re.compile(r"gen-([1-9][0-9]*)\Z")
#: Folders inside a store folder that belong to the store, not to groupby leaves below it.
STORE_INTERNAL_FOLDERS = ("locks",)


def generation_folder(leaf: str, generation: int) -> str:
    """The folder holding the LMDB files of ``generation``."""
    return leaf if generation == 0 else os.path.join(leaf, f"{GENERATION_PREFIX}{generation}")


def read_current(leaf: str) -> int:
    """The generation named by ``CURRENT`` (0 when there is none: no compaction ran yet)."""
    try:
        with open(os.path.join(leaf, CURRENT_FILE), "rb") as handle:
            text = handle.read(32)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    try:
        generation = int(text.decode("ascii").strip())
        if generation < 1:
            raise ValueError
    except ValueError:
        raise CorruptStoreError(
            f"{os.path.join(leaf, CURRENT_FILE)} should hold a generation number but holds "
            f"{text[:32]!r}. Nothing was deleted. Restore it (the highest gen-N folder is usually "
            "the one in use), or move the folder aside to start that cache afresh."
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


def generation_folders(leaf: str) -> List[int]:
    """The number of every ``gen-N`` folder in ``leaf``, complete or not, in increasing order."""
    try:
        names = os.listdir(leaf)
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
    """Whether ``leaf`` holds a store (of any generation)."""
    return (os.path.isfile(os.path.join(leaf, DATA_FILE))
            or os.path.isfile(os.path.join(leaf, CURRENT_FILE)))


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


def parse_seal(value: Optional[bytes]) -> Optional[int]:
    """The generation a seal record points to, or None for an unsealed environment."""
    if value is None:
        return None
    return int(bytes(value).decode("ascii"))


def encode_seal(generation: int) -> bytes:
    return str(generation).encode("ascii")
