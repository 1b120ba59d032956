"""joblib.Memory: one folder per call, holding the pickled output and a metadata file."""

from typing import Any, Callable

from .base import Adapter, Unsupported


class JoblibMemory(Adapter):
    name = "joblib"
    label = "joblib.Memory"

    def setup(self) -> None:
        import joblib
        self.joblib = joblib
        self.memory = joblib.Memory(location=self.folder, verbose=0)

    def cached(self, function: Callable) -> Callable:
        return self.memory.cache(function)

    def recompute(self, cached: Callable, *args: Any) -> None:
        cached.call(*args)  # computes and stores, whatever is stored

    def compact(self, cached: Callable) -> None:
        raise Unsupported("none needed: a recomputation overwrites its files")

    def version(self) -> str:
        return self.joblib.__version__
