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

This module holds all of that: the layout and its names, ``CURRENT``, opening the generation
in use (:func:`open_generation`, following ``CURRENT`` and seals), creating a new one, the
seal and the switch mark, and removing generations. ``compaction.py`` decides what a new
generation holds and when to seal; the pool (``pool.py``) keeps the one in use open.
"""

import errno
import os
import re
import shutil
from typing import Callable, Iterator, List, Optional, Tuple

import lmdb

from . import environments, trust
from .durability import Durability
from .environments import (DATA_FILE, LOCK_FILE, begin_transaction, create_data_file,
                           initial_map_size, open_lmdb, reserve_lock_file, write_transaction)
from .errors import CorruptStoreError, EngineError, ForeignFolderError
from .filesystem import ensure_local_filesystem, make_dirs
from .settings import sentence, wording

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
MAX_GENERATION_HOPS = 64  # following CURRENT and seals; more means something rewrites them


def is_internal_name(name: str) -> bool:
    """Whether the engine may create an entry called ``name`` in a store's folder (or a
    project's), so that no groupby leaf folder may be called so: a leaf ``lock.mdb`` below a
    store would stand where LMDB keeps its lock file, and ``gen-1`` would be deleted by a
    compaction as an old generation."""
    return FREE_NAME_MARK not in name and _INTERNAL_NAME.fullmatch(name) is not None


def generation_folder(leaf: str, generation: int) -> str:
    """The folder holding the LMDB files of ``generation``."""
    return leaf if generation == 0 else os.path.join(leaf, f"{GENERATION_PREFIX}{generation}")


def leaf_of(folder: str) -> str:
    """The leaf whose generation's files are in ``folder`` (the inverse of
    :func:`generation_folder`)."""
    if _GENERATION_NAME.match(os.path.basename(folder)):
        return os.path.dirname(folder)
    return folder


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
            f"next {wording().compact_command(leaf)} writes it again. Or move the folder "
            f"{leaf} aside to start that cache afresh."
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
            f"{sentence(wording().verify_command(folder))} and move the folder aside to start "
            "that cache afresh, or restore it from a backup."
        ) from None
    return sealed


def encode_seal(generation: int) -> bytes:
    return str(generation).encode("ascii")


# --- opening the generation in use ---------------------------------------------------------
def check_folder(path: str) -> None:
    """Refuse a path that is a file before using it as a store's folder. (What else a folder
    may hold that is not ours is the layer above's to say: ``EngineSettings.foreign_folder``,
    asked by ``LocalStorage.open_store``.)"""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ForeignFolderError(
            f"{path} should be a cache folder but is a file. Move it away or choose another "
            f"{wording().persist_path}."
        )


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
                        f"has no {DATA_FILE}. Nothing was deleted: "
                        f"{wording().verify_command(leaf)}, or move the folder aside to start "
                        "that cache afresh.")
                traces = store_traces(leaf)
                # Looked at again: a process creating the store makes data.mdb, then lock.mdb,
                # so a store created between the two looks leaves traces and a data file.
                # Taken for a lost file, it cost the first write of that process its result
                # (the call stored nothing and was computed again by the next process).
                if traces and not os.path.isfile(os.path.join(folder, DATA_FILE)):
                    raise CorruptStoreError(
                        f"The cache store in {leaf} lost its data file: "
                        f"{os.path.join(leaf, DATA_FILE)} is missing, but {', '.join(traces)} "
                        "show that a store was there (deleted by hand, or by a cleanup?). It "
                        "was not created again empty. Restore the file from a backup, or move "
                        "the folder aside to start that cache afresh.")
            try:
                env = environments.open_environment(folder, durability, create=not generation,
                                                    leaf=leaf)
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
                f"by hand?). Nothing was deleted: {wording().verify_command(leaf)}, or move "
                "the folder aside to start that cache afresh.")
        return env, generation
    if env is not None:
        env.close()
    raise CorruptStoreError(
        f"The cache store in {leaf} keeps changing generation ({generation} after "
        f"{MAX_GENERATION_HOPS} switches). Is a compaction looping? Stop it and "
        f"{wording().verify_command(leaf)}.")


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
        env = environments.open_environment(generation_folder(leaf, generation), durability,
                                            create=False, leaf=leaf)
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
        f"was deleted: {wording().verify_command(leaf)}, or move the folder aside to start "
        "that cache afresh.")


# --- a new generation: creating it, sealing the old one, marking the switch -----------------
def create_generation(folder: str, map_size: int) -> "lmdb.Environment":
    """A new, empty environment for the rebuild. It is flushed once at the end
    (``compaction._seal``), so the bulk copy runs without a sync per transaction. Its data file appears with its meta
    pages written (``create_data_file``), as every store's does."""
    if os.path.exists(folder):
        shutil.rmtree(folder)  # a partial rebuild by a compactor that died
    sharing = trust.current_policy().sharing
    make_dirs(folder, sharing.folder_mode)
    create_data_file(folder, sharing.file_mode)
    reserve_lock_file(folder)
    env = open_lmdb(folder, map_size=max(map_size, initial_map_size()), sync=False,
                    metasync=False, mode=sharing.file_mode)
    trust.share_store_files(folder)
    return env


def seal(txn: "lmdb.Transaction", generation: int) -> None:
    """Seal the environment of ``txn`` (a write transaction) to ``generation``: every write
    transaction that begins after this one commits goes there instead."""
    txn.put(SEAL_KEY, encode_seal(generation))


def sealed_to(env: "lmdb.Environment", generation: int) -> bool:
    """Whether ``env`` is sealed to ``generation`` (True when that cannot be read: keep what
    may be in use)."""
    try:
        with begin_transaction(env) as txn:
            seal = txn.get(SEAL_KEY)
        return seal is not None and bytes(seal) == encode_seal(generation)
    except Exception:
        return True


def mark_switched(target: "lmdb.Environment", generation: int) -> bool:
    """Write ``SWITCHED_KEY`` into the new generation, now that the old one is sealed, and
    flush it; return whether that worked (a full disk may refuse it: the seal still proves the
    switch for as long as the old generation is kept)."""
    try:
        write_transaction(target, lambda txn: txn.put(SWITCHED_KEY, encode_seal(generation)))
        target.sync(True)
        return True
    except (lmdb.Error, OSError):
        return False


# --- removing old generations --------------------------------------------------------------
def highest_folder(leaf: str) -> int:
    """The highest generation number of any ``gen-N`` folder, complete or not (never reuse)."""
    return max(generation_folders(leaf), default=0)


def remove_generation(leaf: str, generation: int) -> None:
    """Delete a superseded generation. Processes that still map it keep reading the unlinked
    files until they move on; a failure leaves it for the next compaction."""
    if generation == 0:
        for name in (DATA_FILE, LOCK_FILE):
            try:
                os.unlink(os.path.join(leaf, name))
            except FileNotFoundError:
                pass
    else:
        shutil.rmtree(generation_folder(leaf, generation), ignore_errors=True)


def remove_other_generations(leaf: str, in_use: int, durability: Durability) -> None:
    """Delete the generations beside the one in use that are proven superseded or proven never
    used: superseded ones whose removal failed, and rebuilds a compactor left unfinished. Runs
    under the maintenance lock, so no other compaction is building one right now. Anything
    else is left as it is: a store is never lost to a guess."""
    present = generation_folders(leaf)
    if in_use and (os.path.exists(os.path.join(leaf, DATA_FILE))
                   or os.path.exists(os.path.join(leaf, LOCK_FILE))):
        present = [0] + present
    for generation in present:
        if generation != in_use and _unused(leaf, generation, in_use, durability):
            remove_generation(leaf, generation)


def _unused(leaf: str, generation: int, in_use: int, durability: Durability) -> bool:
    """Whether ``generation`` of ``leaf`` is proven not to hold anything the generation in use
    (``in_use``) lacks:

    * it has no data file (a removal or a rebuild cut short);
    * it is sealed to a generation no newer than the one in use (superseded);
    * it was never switched to, and it is either an incomplete copy or a complete rebuild of
      the generation in use whose compactor died before sealing;
    * it is generation 0 without a single key, where one is in use: re-created empty by LMDB
      when a process opened it just as a compaction deleted it.
    """
    folder = generation_folder(leaf, generation)
    if not os.path.isfile(os.path.join(folder, DATA_FILE)):
        return True
    try:
        env = environments.open_environment(folder, durability, create=False, leaf=leaf)
    except (lmdb.Error, OSError, EngineError):
        return False  # cannot tell: keep it
    try:
        with begin_transaction(env) as txn:
            seal = txn.get(SEAL_KEY)
            switched = txn.get(SWITCHED_KEY) is not None
            complete = txn.get(GENERATION_KEY) is not None
            built_from = txn.get(BUILT_FROM_KEY)
            empty = txn.stat()["entries"] == 0
    except (lmdb.Error, OSError, EngineError):
        return False
    finally:
        env.close()
    try:
        sealed = parse_seal(seal, folder, generation)
    except CorruptStoreError:
        return False
    if sealed is not None:
        return sealed <= in_use
    if switched:
        return False
    if generation == 0:
        return empty
    if not complete:
        return True  # the switch happens only after a complete copy
    return built_from is not None and bytes(built_from) == str(in_use).encode("ascii")
