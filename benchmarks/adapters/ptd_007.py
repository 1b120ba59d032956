"""persist-to-disk 0.0.7 from PyPI, the original this project replaces.

It has our import name, so it runs in its own virtual environment (``venv007.py``) with
``HOME`` pointing into the job's folder (it keeps its settings in ``~/.cache/persist_to_disk``).
Its project path must contain the cached function's source file, so it is the repository root.
"""

import os
from collections import defaultdict
from typing import Any, Callable, Iterable

from .base import Adapter, Unsupported

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _persister_of(cached: Callable):
    """The ``Persister`` behind a function decorated by 0.0.7 (its wrapper closes over it)."""
    from persist_to_disk.persister import Persister
    for cell in cached.__closure__ or ():
        if isinstance(cell.cell_contents, Persister):
            return cell.cell_contents
    raise RuntimeError("cannot find the Persister of a 0.0.7-decorated function")


class PersistToDisk007(Adapter):
    name = "persist-to-disk-0.0.7"
    label = "persist-to-disk 0.0.7"
    interpreter = "ptd-0.0.7"
    bulk_fill = True

    def setup(self) -> None:
        import persist_to_disk as ptd
        if getattr(ptd, "__version__", "") != "0.0.7":
            raise RuntimeError(f"imported {ptd.__file__}, which is not persist-to-disk 0.0.7")
        self.ptd = ptd
        ptd.config.set_persist_path(self.folder)
        ptd.config.set_project_path(REPOSITORY_ROOT)

    def cached(self, function: Callable) -> Callable:
        return self.ptd.persistf()(function)

    def fill(self, cached: Callable, function: Callable, arguments: Iterable[tuple]) -> None:
        """Write each bucket file once with all its entries, through 0.0.7's own key, bucket
        and file functions: the files its decorator would have written call by call (which
        costs a read and a rewrite of the whole bucket per call, hours for a million)."""
        from persist_to_disk import _utils, persister
        from persist_to_disk.myfilelock import FileLock
        owner = _persister_of(cached)
        buckets = defaultdict(dict)
        for args in arguments:
            full = persister._get_full_kwargs_noargs(function, args, {})
            cleaned, _ = persister._clean_kwargs(full, owner.skip_kwargs,
                                                 owner.expand_dict_kwargs)
            path, key = persister._get_hashed_path_and_key(
                owner.cache_dir, cleaned, owner.hashsize, owner.groupby, owner.hash_method)
            buckets[path][key] = function(*args)
        for path, entries in buckets.items():
            with FileLock(persister._get_lock_path(path, owner.config, owner.lock_granularity)):
                stored = _utils.read_pickle(path) if os.path.exists(path) else {}
                stored.update(entries)
                _utils.to_pickle(stored, path)

    def recompute(self, cached: Callable, *args: Any) -> None:
        cached(*args, cache_switch=self.ptd.RECACHE)

    def compact(self, cached: Callable) -> None:
        raise Unsupported("none needed: every write rewrites its bucket file")

    def version(self) -> str:
        return self.ptd.__version__
