"""The write path of a miss (issue 15): what it creates on disk, and the shortcuts it takes.

* The first miss of a bucket creates no file: compute locks are bytes of one file per leaf
  (``locks/calls.lock``), so only the leaf's first miss creates files (the store and that one
  lock file); a lock file per bucket cost 100-300 µs per first miss of each bucket.
* ``build_record`` writes the header and checksums in place and encodes a function's texts
  once: its bytes must stay exactly those of ``encode_record``.
* The compute lock notifies its condition only when a thread waits on it, and still wakes
  one that waits without a time slice (so it would hang if it were not notified). (That the
  pool's write checks the files before every transaction on its inline common case too is
  ``test_engine.test_an_append_after_the_store_folder_was_deleted_lands_on_disk``.)
"""

import pickle
import threading
from pathlib import Path

import pytest

from helpers import counting
from persist_to_disk.engine import Record, RecordKind, keys
from persist_to_disk.engine.locks import ComputeLock, LockScope, compute_lock, lock_place
from persist_to_disk.engine.records import build_record, decode_record, encode_record
from persist_to_disk.keying import bucket_of
from persist_to_disk.serialization import PICKLE_TAG, PYTHON_VERSION, dump_into


def files_under(folder: Path) -> set:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def test_the_first_miss_of_a_bucket_creates_no_file(ptd_env):
    compute, calls = counting(hashsize=500)
    compute(0)  # the leaf's first miss: its store and its one lock file
    leaf = Path(compute.__persisted__.store_for(()).path)
    before = files_under(ptd_env.persist)
    assert (leaf / "locks" / "calls.lock").is_file()
    hashsize = compute.__persisted__.hashsize
    buckets = set()
    for x in range(1, 60):
        compute(x)
        buckets.add(bucket_of(compute.__persisted__._keyer.digest((x,), {}), hashsize))
    assert len(calls) == 60 and len(buckets) > 40  # misses of many buckets not seen before
    assert files_under(ptd_env.persist) == before


@pytest.mark.parametrize("code", ["", "f" * 64 + "|v1"])
@pytest.mark.parametrize("origin", ["", "ptd-0.0.7"])
def test_build_record_writes_the_bytes_encode_record_writes(code, origin):
    prefix = keys.record_prefix(7, b"d" * keys.DIGEST_SIZE)
    value = {"i": 3, "s": "x" * 100}
    key_blob = pickle.dumps((("i", 3),), protocol=4)
    for _ in range(2):  # the second time with the texts encoded once already
        payload = build_record(prefix, RecordKind.VALUE, 1234.5, 0.25, PYTHON_VERSION,
                               key_blob, lambda out: dump_into(out, value, "it"), origin, code)
        data = bytes(payload)
        payload.release()
        record = decode_record(data, 0, True, prefix)
        assert record == Record(RecordKind.VALUE, 1234.5, 0.25, PICKLE_TAG, PYTHON_VERSION,
                                key_blob, pickle.dumps(value, protocol=5), 0, origin, code)
        assert encode_record(record, prefix) == data


def test_a_thread_waiting_for_the_same_call_is_woken_when_the_lock_is_released(tmp_path):
    path, offset = lock_place(LockScope.CALL, str(tmp_path), b"c" * 16, str(tmp_path))
    first = compute_lock(path, offset, call="same")
    assert first.acquire() is None
    taken = threading.Event()

    def wait_for_it():  # nested_safe=False: waits on the condition with no time slice
        second = ComputeLock(path, offset, None, "same", nested_safe=False)
        assert second.acquire() is None
        taken.set()
        second.release()

    waiter = threading.Thread(target=wait_for_it, daemon=True)
    waiter.start()
    assert not taken.wait(0.3)  # it waits: the same call is being computed here
    first.release()
    assert taken.wait(10), "the waiting thread was not woken when the lock was released"
    waiter.join(10)
