"""cachier with its default backend: one pickle file per function, re-read on every call and
rewritten on every miss (``pickle_reload=True``, ``separate_files=False``)."""

from typing import Any, Callable

from .base import Adapter, Unsupported


class CachierPickle(Adapter):
    name = "cachier"
    label = "cachier (pickle)"

    def setup(self) -> None:
        import cachier
        self.cachier = cachier
        self._version = _distribution_version("cachier")

    def cached(self, function: Callable) -> Callable:
        return self.cachier.cachier(cache_dir=self.folder)(function)

    def recompute(self, cached: Callable, *args: Any) -> None:
        cached(*args, cachier__overwrite_cache=True)

    def compact(self, cached: Callable) -> None:
        raise Unsupported("none needed: every write rewrites its file")

    def version(self) -> str:
        return self._version


def _distribution_version(name: str) -> str:
    from importlib.metadata import version
    return version(name)
