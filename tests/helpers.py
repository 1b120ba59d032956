"""Small helpers shared by tests (importable as ``helpers`` since pytest puts tests/ on sys.path)."""

import fcntl
import os
from pathlib import Path
from typing import List

import persist_to_disk as ptd
from persist_to_disk.engine import find_stores


def store_folders(root) -> List[Path]:
    """Every leaf folder under ``root`` that holds a store (of any generation), sorted."""
    return sorted(Path(folder) for folder in find_stores(root)) if Path(root).exists() else []


def files_under(root) -> List[Path]:
    root = Path(root)
    return sorted(p for p in root.rglob("*")) if root.exists() else []


def counting(**options):
    """Decorate a function that records each computation in ``calls`` and returns
    ``(x, number of the computation)``, so a recomputation is visible in the result."""
    calls = []

    @ptd.persistf(**options)
    def compute(x):
        calls.append(x)
        return (x, len(calls))

    return compute, calls


def lock_held_elsewhere(path, offset: int = 0) -> bool:
    """Whether anyone, this process included, holds the compute lock at byte ``offset`` of
    ``path`` (POSIX record locks: an open-file-description lock query conflicts with them even
    when this process holds them)."""
    import struct
    fd = os.open(path, os.O_RDWR)
    try:
        query = struct.Struct("hhqqi4x")  # Linux struct flock
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK,
                             query.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
        return query.unpack(answer)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


def fill_up(path) -> None:
    """Write zeros to ``path`` until its filesystem is full (a small tmpfs)."""
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
