"""The local tier: stores in LMDB environments on this machine's disk (``StorageTier``).

:class:`LocalStorage` is what the API layer holds: built from one :class:`EngineSettings`,
it opens the store of a leaf folder, having checked the folder first, walks the stores under
a folder, and compacts one. Checking at open, not at first write, is the point: a cache
folder on NFS, one that others could have planted pickles in, or one holding another
program's files is refused before the decorated function spends its time computing, and the
decorator no longer runs that protocol by hand.

The checks cost a few ``stat`` calls per leaf opened (the filesystem type is looked up once
per device, trusted parent folders once per process), and nothing per call: the API layer
keeps the returned store for the leaf.
"""

import os
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from . import generations, lazy_imports, trust
from .durability import Durability
from .generations import check_folder
from .pool import POOL, EnvironmentPool
from .errors import EngineError, ForeignFolderError, storage_io_error
from .filesystem import ensure_local_filesystem
from .settings import EngineSettings, install
from .store import Store

if TYPE_CHECKING:  # (imported when compacting: it brings filelock, see lazy_imports.py)
    from . import compaction


class LocalStorage:
    """Stores on the local disk, configured by ``settings`` (installed as the process's when
    a store is opened or compacted: the environment pool, the lock files and the trust check
    are process-wide)."""

    def __init__(self, settings: Optional[EngineSettings] = None,
                 pool: EnvironmentPool = POOL) -> None:
        self.settings = settings if settings is not None else EngineSettings()
        self._policy = trust.policy_of(self.settings)
        self._pool = pool

    def open_store(self, leaf: str, durability: Durability = Durability.STANDARD, *,
                   lock_root: Optional[str] = None, meta: Optional[dict] = None) -> Store:
        """The store of the leaf folder ``leaf``, checked but not created (see the module
        docstring): :class:`~.errors.UnsafeFilesystemError` on a network filesystem,
        :class:`~.errors.UntrustedFolderError` for a folder others could write,
        :class:`~.errors.ForeignFolderError` for a path that is a file, or a folder without a
        store that the settings' ``foreign_folder`` check refuses. ``lock_root``: the folder
        whose lock serialises the ``global`` compute-lock scope (the project); ``meta``: the
        store's description, written with its first record when an append brings none."""
        install(self.settings)
        leaf = os.path.abspath(leaf)
        try:
            ensure_local_filesystem(leaf)
            check_folder(leaf)
            trust.check_trusted(leaf, self._policy)
            foreign = self.settings.foreign_folder
            if foreign is not None and not generations.store_exists(leaf):
                message = foreign(leaf)
                if message:
                    raise ForeignFolderError(message)
        except EngineError:
            raise
        except OSError as err:
            raise storage_io_error(leaf, err, "open") from err
        return Store(leaf, durability, pool=self._pool, settings=self.settings,
                     lock_root=lock_root, meta=meta)

    def find_stores(self, root: str) -> Iterator[str]:
        """Every leaf under ``root`` (itself included) that holds a store, in sorted order,
        including leaves below a folder that is itself a store."""
        return generations.find_stores(root)

    def clear_tree(self, root: str, *, lock_root: Optional[str] = None) -> int:
        """Remove every record of every store under ``root`` (itself included); return how
        many calls were live."""
        return sum(self.open_store(leaf, lock_root=lock_root).clear()
                   for leaf in self.find_stores(root))

    def compact(self, leaf: str, policy: Optional["compaction.CompactionPolicy"] = None, *,
                dry_run: bool = False, progress: Optional[Callable[[int], None]] = None,
                durability: Durability = Durability.STANDARD) -> "compaction.CompactionReport":
        """Rebuild the store in ``leaf`` without what it no longer needs (see
        :func:`~.compaction.compact`)."""
        install(self.settings)
        return lazy_imports.load("compaction").compact(leaf, policy, dry_run=dry_run, progress=progress,
                                  durability=durability, pool=self._pool)
