"""Small helpers shared by tests (importable as ``helpers`` since pytest puts tests/ on sys.path)."""

from pathlib import Path
from typing import List


def store_folders(root) -> List[Path]:
    """Every folder under ``root`` that holds an LMDB store (a ``data.mdb`` file), sorted."""
    return sorted(p.parent for p in Path(root).rglob("data.mdb"))


def files_under(root) -> List[Path]:
    root = Path(root)
    return sorted(p for p in root.rglob("*")) if root.exists() else []
