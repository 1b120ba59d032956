"""A look-up reads only its own call's record: never the value of the call beside it.

The engine finds a call's newest record by seeking past its last possible key and stepping
back once; on a miss the cursor then stands on the *previous* call's newest record. Its key is
read to see that it belongs to another call, and its value must not be: py-lmdb touches every
page of a value it hands out, so a miss beside a 400 MB result read all of it from disk
(3.4-4.2 s, 102,386 page faults) where reading the key alone costs 0.1 ms. Measured here by
the page faults of a fresh process (``getrusage``), with the neighbour's pages dropped from the
page cache first.
"""

import os
import pickle
import subprocess
import sys
import textwrap

import pytest

from persist_to_disk.engine import keys
from persist_to_disk.engine.store import Store

NEIGHBOUR_BYTES = 64 * 1024 * 1024  # 16,384 pages of 4 KiB

PROBE = textwrap.dedent("""
    import pickle, resource, sys, time
    from persist_to_disk.engine import keys
    from persist_to_disk.engine.store import Store
    store = Store(sys.argv[1])
    store.read_meta()  # opens the environment without touching any record
    def faults():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_minflt + usage.ru_majflt
    before = faults()
    digest = b"\\x20" * keys.DIGEST_SIZE  # sorts just after the neighbour's
    if sys.argv[2] == "load_latest":
        found = store.load_latest(0, digest, lambda record: pickle.loads(record.value_blob))
    else:
        found = store.latest(0, digest, with_value=sys.argv[2] == "latest")
    print(found, faults() - before)
""")


def _drop_from_page_cache(folder: str) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            if name == "data.mdb":
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


@pytest.mark.parametrize("lookup", ["load_latest", "latest", "latest_header"])
def test_a_miss_beside_a_large_result_does_not_read_it(tmp_path, lookup):
    path = str(tmp_path / "leaf")
    store = Store(path)
    neighbour = pickle.dumps(b"\x01" * NEIGHBOUR_BYTES, protocol=5)
    store.append_value(0, b"\x10" * keys.DIGEST_SIZE,
                       lambda f: (f.write(neighbour), "pickle:5")[1],
                       created=1.0, compute_seconds=0.0, python_version="3", key_blob=b"")
    store.close()
    _drop_from_page_cache(path)
    out = subprocess.run([sys.executable, "-c", PROBE, path, lookup], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    found, faults = out.stdout.split()
    assert found == "None"
    assert int(faults) < 1000, f"{lookup}: a miss touched {faults} pages of its neighbour's value"
