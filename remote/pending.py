"""Uploads that could not be made yet, kept until they can.

A result computed while the remote was unreachable is stored locally and returned; the upload
is owed. Each owed upload is one small file in ``pending_folder`` (named after the object, so a
call owed twice is owed once), written atomically (temporary file, then rename) and removed once
the object is on the remote, or once the local record it points to is gone. The files outlive
the process: the next process whose upload succeeds retries them in the background, and the
command line pushes them on demand. Nothing here knows about S3: an entry says which local store
and call the object's bytes come from, and the object's name.

Without a folder (no settings folder to write to) the queue lives in the process's memory.
"""

import hashlib
import json
import os
import tempfile
import threading
from typing import Dict, Iterator, NamedTuple, Optional


class PendingUpload(NamedTuple):
    """One owed upload: the object ``name`` whose bytes are the newest record of ``digest``
    in ``bucket`` of the local store in ``leaf`` (opened with ``lock_root``)."""

    name: str
    leaf: str
    lock_root: str
    bucket: int
    digest: bytes
    replace: bool = False


class PendingUploads:
    """The queue (see the module docstring). Safe from several threads and processes: each
    entry is its own file, written by rename and removed by unlink."""

    def __init__(self, folder: Optional[str]) -> None:
        self.folder = folder
        self._memory: Dict[str, PendingUpload] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _file_name(name: str) -> str:
        return hashlib.sha256(name.encode("utf-8")).hexdigest()[:40] + ".json"

    def add(self, entry: PendingUpload) -> None:
        """Owe ``entry``'s upload (an OSError writing the file keeps it in memory instead: the
        local copy is safe either way, and ``push`` of the store finds it)."""
        if self.folder is not None:
            document = {"name": entry.name, "leaf": entry.leaf, "lock_root": entry.lock_root,
                        "bucket": entry.bucket, "digest": entry.digest.hex(),
                        "replace": entry.replace}
            try:
                os.makedirs(self.folder, mode=0o700, exist_ok=True)
                fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=".owed-",
                                                 suffix=".tmp")
                try:
                    with os.fdopen(fd, "w", encoding="utf-8") as out:
                        json.dump(document, out)
                    os.replace(temporary, os.path.join(self.folder, self._file_name(entry.name)))
                except BaseException:
                    _unlink(temporary)
                    raise
                return
            except OSError:
                pass
        with self._lock:
            self._memory[entry.name] = entry

    def done(self, name: str) -> None:
        """The upload of ``name`` is no longer owed."""
        with self._lock:
            self._memory.pop(name, None)
        if self.folder is not None:
            _unlink(os.path.join(self.folder, self._file_name(name)))

    def entries(self) -> Iterator[PendingUpload]:
        """Every owed upload (files that cannot be read are skipped, and left in place)."""
        with self._lock:
            in_memory = list(self._memory.values())
        yield from in_memory
        if self.folder is None:
            return
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:
            return
        for file_name in names:
            if not file_name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.folder, file_name), encoding="utf-8") as file:
                    document = json.load(file)
                yield PendingUpload(str(document["name"]), str(document["leaf"]),
                                    str(document["lock_root"]), int(document["bucket"]),
                                    bytes.fromhex(document["digest"]),
                                    bool(document.get("replace", False)))
            except (OSError, ValueError, KeyError, TypeError):
                continue

    def any(self) -> bool:
        """Whether any upload is owed (without reading the entries: asked after every
        successful upload that may retry them)."""
        if self._memory:
            return True
        if self.folder is None:
            return False
        try:
            with os.scandir(self.folder) as found:
                return any(entry.name.endswith(".json") for entry in found)
        except OSError:
            return False

    def count(self) -> int:
        return sum(1 for _ in self.entries())


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
