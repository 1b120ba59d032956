"""The storage floor: a bare memoizer on LMDB, with nothing but what a disk cache cannot skip:
a blake2b digest of the pickled arguments as the key, the pickled result as the value, one
read transaction per hit and one write transaction per miss, no fsync (``sync=False``)."""

import functools
import hashlib
import os
import pickle
import shutil
from typing import Any, Callable, Iterable

from .base import Adapter

MAP_SIZE = 1 << 36  # 64 GiB of address space, not disk


def _key(args: tuple) -> bytes:
    return hashlib.blake2b(pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL),
                           digest_size=16).digest()


def _value(result: Any) -> bytes:
    return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)


class RawLmdb(Adapter):
    name = "raw-lmdb"
    label = "raw LMDB get/put (floor, no sync)"
    floor = True

    def setup(self) -> None:
        import lmdb
        self.lmdb = lmdb
        self.env = None

    def _open(self):
        if self.env is None:
            self.env = self.lmdb.open(self.folder, map_size=MAP_SIZE, sync=False,
                                      metasync=False, readahead=False, max_readers=1024)
        return self.env

    def cached(self, function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args):
            env = self._open()
            key = _key(args)
            with env.begin() as txn:
                found = txn.get(key)
            if found is not None:
                return pickle.loads(found)
            result = function(*args)
            with env.begin(write=True) as txn:
                txn.put(key, _value(result))
            return result
        return wrapper

    def fill(self, cached: Callable, function: Callable, arguments: Iterable[tuple]) -> None:
        env, batch = self._open(), []
        for args in arguments:
            batch.append((_key(args), _value(function(*args))))
            if len(batch) == 10_000:
                with env.begin(write=True) as txn:
                    txn.cursor().putmulti(batch)
                batch = []
        with env.begin(write=True) as txn:
            txn.cursor().putmulti(batch)

    def recompute(self, cached: Callable, *args: Any) -> None:
        result = cached.__wrapped__(*args)
        with self._open().begin(write=True) as txn:
            txn.put(_key(args), _value(result))

    def compact(self, cached: Callable) -> None:
        """LMDB's compacting copy, swapped in while nothing has the environment open."""
        env = self._open()
        copy = self.folder.rstrip(os.sep) + ".compact"
        os.makedirs(copy)
        env.copy(copy, compact=True)
        self.close()
        os.replace(os.path.join(copy, "data.mdb"), os.path.join(self.folder, "data.mdb"))
        shutil.rmtree(copy)

    def version(self) -> str:
        return f"lmdb {self.lmdb.__version__}"

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
