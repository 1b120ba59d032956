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


def flock_held_elsewhere(path) -> bool:
    """Whether another open file description (another process, or a lock object of ours) holds
    the ``flock`` on ``path``: a fresh descriptor of our own tries it without waiting."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
