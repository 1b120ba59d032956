"""Record integrity: a damaged store never returns a wrong value (issue 9.5), and the cost of
storing and inspecting large results (issue 10.11).

* **Checksums.** Every record (format 2) ends with a CRC-32 of the key prefix it is stored under
  (bucket and digest) and of all its bytes, checked on every read of a value. A bit flipped in a
  stored value, a zeroed page or garbage written into ``data.mdb`` is a miss with a
  ``PersistWarning`` (the damaged record is kept, the call recomputes and appends a newer
  version) or a ``CorruptStoreError`` naming the store, never a value; a record found under
  another call's key fails the same check. ``ptd verify`` reports each damaged record and exits
  1. Records of format 1 (written before checksums) stay readable.
* **Damage trials.** A store of 40 results, copied and damaged at random (bit flips inside
  values, a zeroed 4 KiB page, a few hundred bytes of garbage), is opened by a fresh process
  that runs ``ptd verify`` and then makes every call. Counted per kind: returned right,
  recomputed, named error, wrong (must stay 0), and processes stopped by LMDB itself (see
  below). ``PTD_DAMAGE_TRIALS=25`` runs 25 trials per kind instead of 6.
* **A result nothing can pickle** is returned with one warning per function (issue 10.8; the
  behaviour itself is in ``test_modes.py``).
* **Cost.** ``is_cached()``, ``CHECKONLY`` and ``forget()`` read a record's header, never its
  value; storing a large result holds it at most twice besides the object itself (the record
  buffer and LMDB's copy while it writes), measured as peak memory in fresh processes.

Known limit, counted by the trials: LMDB 0.9 (py-lmdb builds it with its assertions on) stops
the process with ``Assertion 'IS_LEAF(mp)' failed`` (SIGABRT) when a cursor steps from one leaf
page to a zeroed or garbage sibling, instead of returning an error; a page reached by a search
is reported as ``MDB_CORRUPTED``, which becomes ``CorruptStoreError``. ``ptd verify`` checks
the page structure without LMDB first (``lmdb.verify``), so it reports such a store instead of
dying. Any other signal fails the trials.
"""

import collections
import json
import os
import pickle
import random
import shutil
import signal
import struct
import sys
import warnings
from pathlib import Path

import lmdb
import pytest

import persist_to_disk as ptd
from conftest import run_python, write_module
from helpers import counting
from persist_to_disk.cli import main as ptd_main
from persist_to_disk.engine import POOL, CorruptStoreError, Record, RecordKind, Store, keys
from persist_to_disk.engine.records import (RECORD_FORMAT, DamagedRecordError, decode_record,
                                            encode_record)
from persist_to_disk.serialization import PICKLE_TAG, PYTHON_VERSION

PAGE = 4096


def persist_warnings(caught):
    return [w for w in caught if issubclass(w.category, ptd.PersistWarning)]


def leaf_of(func) -> Path:
    return Path(func.__persisted__.locate((1,), {})[0].path)


def damage_live_record(leaf: Path, needle: bytes, offset_in_needle: int, mask: int) -> None:
    """XOR ``mask`` into byte ``offset_in_needle`` of ``needle`` where it lies in the store's
    one live record (the file may also hold stale copies of it in free pages)."""
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("finds records in the file through /proc/self/maps (Linux)")
    (start, end), = _live_record_ranges(leaf).values()
    data_file = leaf / "data.mdb"
    data = bytearray(data_file.read_bytes())
    where = bytes(data[start:end]).find(needle)
    assert where >= 0
    data[start + where + offset_in_needle] ^= mask
    data_file.write_bytes(bytes(data))


def run_verify(capsys, *args):
    capsys.readouterr()
    code = ptd_main(["verify", *args])
    return code, capsys.readouterr().out


# =================================================================================================
# 1. The checksum
# =================================================================================================

PREFIX = keys.record_prefix(7, b"\x11" * 16)
FULL = Record(RecordKind.VALUE, 1_700_000_000.5, 2.25, "pickle:5", "3.11.7", b"key-blob" * 3,
              b"value-blob" * 5, 3)


def test_every_byte_of_a_record_is_covered_by_its_checksum():
    """Header fields, the key blob, the value blob and the text fields: one flipped bit
    anywhere is a damaged record, never a record with other contents."""
    data = encode_record(FULL, PREFIX)
    assert decode_record(data, 3, True, PREFIX) == FULL
    for offset in range(len(data)):
        for bit in (0, 7):
            damaged = bytearray(data)
            damaged[offset] ^= 1 << bit
            with pytest.raises(DamagedRecordError):
                decode_record(bytes(damaged), 3, True, PREFIX)
            with pytest.raises(DamagedRecordError):  # views of the map are checked the same
                decode_record(memoryview(bytes(damaged)), 3, True, PREFIX)


def test_a_record_read_under_another_calls_key_fails_its_checksum():
    data = encode_record(FULL, PREFIX)
    for other in (keys.record_prefix(8, b"\x11" * 16), keys.record_prefix(7, b"\x12" * 16)):
        with pytest.raises(DamagedRecordError, match="another call's key"):
            decode_record(data, 3, True, other)
        with pytest.raises(DamagedRecordError):  # the header alone is bound to the key too
            decode_record(data, 3, False, other)


def test_the_header_check_covers_the_header_and_texts_but_never_reads_the_value():
    """What ``is_cached()`` needs (kind, serializer, Python) is checked; the value is not
    touched, so a damaged value is found by the next load, not by an existence check."""
    data = encode_record(FULL, PREFIX)
    value_start = data.index(FULL.value_blob)
    value_end = value_start + len(FULL.value_blob)
    key_start = data.index(FULL.key_blob)
    for offset in range(len(data) - 4):
        damaged = bytearray(data)
        damaged[offset] ^= 1
        if key_start <= offset < value_end:
            header = decode_record(bytes(damaged), 3, False, PREFIX)
            assert (header.serializer, header.value_blob) == ("pickle:5", b"")
        else:
            with pytest.raises(DamagedRecordError):
                decode_record(bytes(damaged), 3, False, PREFIX)


def _format_1(record: Record) -> bytes:
    """A record as persist_to_disk wrote it before checksums (format 1)."""
    serializer, python = record.serializer.encode(), record.python_version.encode()
    header = struct.pack("<BBxxddHHI", 1, int(record.kind), record.created,
                         record.compute_seconds, len(serializer), len(python),
                         len(record.key_blob))
    return b"".join((header, serializer, python, record.key_blob, record.value_blob))


def test_records_of_format_1_without_a_checksum_stay_readable(ptd_env, capsys):
    assert RECORD_FORMAT > 1
    compute, calls = counting()
    compute(0)  # creates the store
    store, bucket, digest, key = compute.__persisted__.locate((5,), {})
    old = Record(RecordKind.VALUE, 1.0, 0.5, PICKLE_TAG, PYTHON_VERSION,
                 pickle.dumps(key, protocol=4), pickle.dumps("written by format 1"))
    record_key = keys.record_key(keys.record_prefix(bucket, digest), 0)
    POOL.write(store.path, store.durability, lambda txn: txn.put(record_key, _format_1(old)))

    assert decode_record(_format_1(old), 0, True, b"any prefix: format 1 has no checksum") == old
    assert compute.is_cached(5) is True
    assert compute(5) == "written by format 1" and calls == [0]
    assert run_verify(capsys, store.path)[0] == 0


def test_a_result_copied_under_another_calls_key_is_recomputed_never_returned(ptd_env):
    """The hit checks that the record belongs to the call it is stored under, without
    unpickling the key: the key prefix is part of the checksummed bytes."""
    compute, calls = counting()
    assert compute(1) == (1, 1) and compute(2) == (2, 2)
    store, bucket, digest, _ = compute.__persisted__.locate((1,), {})
    _, other_bucket, other_digest, _ = compute.__persisted__.locate((2,), {})
    copied = Store(store.path).latest(bucket, digest)
    raw = {}
    POOL.read(store.path, store.durability, lambda txn: raw.update(
        value=txn.get(keys.record_key(keys.record_prefix(bucket, digest), copied.sequence))))
    newer = keys.record_key(keys.record_prefix(other_bucket, other_digest), 1)
    POOL.write(store.path, store.durability, lambda txn: txn.put(newer, raw["value"]))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert compute(2) == (2, 3), "recomputed: never call 1's result"
    (warning,) = persist_warnings(caught)
    assert "damaged" in str(warning.message) and store.path in str(warning.message)
    assert compute(2) == (2, 3) and compute(1) == (1, 1) and calls == [1, 2, 2]
    assert Store(store.path).stats().versions == 4, "the misplaced record is kept"


@pytest.mark.parametrize("size", [300, 1 << 20], ids=["small-in-a-leaf-page", "1MB-in-place"])
def test_a_flipped_bit_in_a_stored_result_is_a_miss_with_a_warning_and_is_kept(
        ptd_env, capsys, size):
    rng = random.Random(size)
    payload = rng.randbytes(size)
    calls = []

    @ptd.persistf(skip_kwargs=["calls"])
    def load_weights(n):
        calls.append(n)
        return payload

    assert load_weights(1) == payload
    POOL.close_all()
    data_file = leaf_of(load_weights) / "data.mdb"
    damage_live_record(data_file.parent, payload, rng.randrange(size), 1 << rng.randrange(8))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_weights(1) == payload, "recomputed, never the altered bytes"
    (warning,) = persist_warnings(caught)
    message = str(warning.message)
    assert "damaged" in message and "checksum" in message and "ptd verify" in message
    assert str(data_file.parent) in message
    assert calls == [1, 1] and load_weights(1) == payload and calls == [1, 1]
    stats = Store(str(data_file.parent)).stats()
    assert (stats.versions, stats.entries) == (2, 1), "the damaged record is kept"

    code, out = run_verify(capsys, str(data_file.parent))
    assert code == 1 and "version 0: record fails its checksum" in out, out


def test_a_damaged_header_is_not_cached_and_forget_leaves_the_record(ptd_env):
    compute, calls = counting()
    compute(1)
    POOL.close_all()
    data_file = leaf_of(compute) / "data.mdb"
    # "pickle:5" becomes "Pickle:5": still a serializer name, but not what was written
    damage_live_record(data_file.parent, (PICKLE_TAG + PYTHON_VERSION).encode(), 0, 0x20)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert compute.is_cached(1) is False
        assert compute(1, cache_switch=ptd.CHECKONLY) is False
        assert compute.forget(1) is False
    assert any("damaged" in str(w.message) for w in persist_warnings(caught))
    assert Store(str(data_file.parent)).stats().versions == 1, "no tombstone over it"
    assert compute(1) == (1, 2) and compute.is_cached(1) is True


def _page_size(leaf: Path) -> int:
    env = lmdb.open(str(leaf), readonly=True, lock=False)
    try:
        return env.stat()["psize"]
    finally:
        env.close()


def _main_db_root(data: bytes, page: int) -> int:
    """The root page of LMDB's main B-tree, from the newer of the two meta pages (LMDB 0.9
    layout: 16-byte page header, magic, version, address, map size, two 48-byte database
    records whose root is their last field, last page, transaction id)."""
    metas = []
    for meta in (0, 1):
        base = meta * page + 16
        magic, = struct.unpack_from("<I", data, base)
        assert magic == 0xBEEFC0DE
        root, = struct.unpack_from("<Q", data, base + 24 + 48 + 40)
        txnid, = struct.unpack_from("<Q", data, base + 24 + 96 + 8)
        metas.append((txnid, root))
    return max(metas)[1]


def test_a_damaged_btree_page_is_a_corrupt_store_error_naming_the_store(ptd_env, capsys):
    """LMDB's own errors on damaged pages (``MDB_CORRUPTED``, ``MDB_PAGE_NOTFOUND``, ...)
    reach the user as ``CorruptStoreError`` naming the store and what to do, before anything
    is computed, on every call; the file is left as it is."""
    compute, calls = counting()
    for i in range(200):
        compute(i)
    POOL.close_all()
    data_file = leaf_of(compute) / "data.mdb"
    data = bytearray(data_file.read_bytes())
    page = _page_size(data_file.parent)
    root = _main_db_root(bytes(data), page)
    data[root * page:(root + 1) * page] = bytes(page)
    data_file.write_bytes(bytes(data))

    for i in (3, 150, 999):
        with pytest.raises(CorruptStoreError) as raised:
            compute(i)
        message = str(raised.value)
        assert str(data_file.parent) in message and "ptd verify" in message
        assert "CorruptedError" in message and "move that folder aside" in message
    assert len(calls) == 200, "nothing computed into a damaged store"
    assert data_file.read_bytes() == bytes(data), "never repaired or wiped"
    code, out = run_verify(capsys, str(data_file.parent))
    assert code == 1 and "LMDB's page structure" in out, out


# =================================================================================================
# 2. Damage trials: random damage, a fresh process, every call
# =================================================================================================

TRIALS = int(os.environ.get("PTD_DAMAGE_TRIALS", "6"))
CALLS = 40
KINDS = ("bit flips in values", "zeroed 4 KiB page", "garbage")
VALUES_MODULE = """
    import hashlib
    import persist_to_disk as ptd

    COMPUTED = []

    def true_value(i):
        # Mostly small results (in leaf pages), every 8th one on overflow pages; each unique.
        size = 200 + 37 * i if i % 8 else 6000 + 1500 * i
        seed = hashlib.sha256(b"value %d" % i).digest()
        return (seed * (size // 32 + 1))[:size]

    @ptd.persistf()
    def value_of(i):
        COMPUTED.append(i)
        return true_value(i)
"""
TRIAL_CHILD = """
    import io, json, sys, warnings
    from contextlib import redirect_stdout
    from persist_to_disk.cli import main
    import damage_values as m

    leaf = sys.argv[1]
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["verify", leaf])
    print(json.dumps({"verify": code, "report": out.getvalue()[-2000:]}), flush=True)
    outcomes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(int(sys.argv[2])):
            before = len(m.COMPUTED)
            try:
                value = m.value_of(i)
            except Exception as err:
                outcomes.append(f"error {type(err).__name__}: {err}")
                continue
            if value != m.true_value(i):
                outcomes.append("wrong")
            else:
                outcomes.append("recomputed" if len(m.COMPUTED) > before else "right")
    folder = m.value_of.cache_folder()
    print(json.dumps({"calls": outcomes, "folder": folder,
                      "warnings": [str(w.message) for w in caught]}), flush=True)
"""


def _live_record_ranges(leaf: Path) -> dict:
    """``{record key: (start, end)}`` of each record's bytes in ``leaf/data.mdb``, read from
    where LMDB's memory map puts them (the file also holds stale copies in free pages, which
    damage may hit harmlessly)."""
    import numpy as np
    data_file = str((leaf / "data.mdb").resolve())
    env = lmdb.open(str(leaf), readonly=True, lock=False)
    ranges = {}
    try:
        with env.begin(buffers=True) as txn:
            with open("/proc/self/maps") as maps:
                bases = [int(line.split("-")[0], 16) for line in maps
                         if line.rstrip().endswith(data_file) and line.split()[2] == "00000000"]
            (base,) = bases
            for key, value in txn.cursor():
                key = bytes(key)
                if keys.is_record_key(key):
                    start = np.frombuffer(value, dtype=np.uint8).__array_interface__["data"][0]
                    ranges[key] = (start - base, start - base + len(value))
    finally:
        env.close()
    return ranges


def _pristine_store(ptd_env):
    """The store of ``CALLS`` results, filled by a fresh process; its file's bytes and where
    each record lies in them."""
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("finds records in the file through /proc/self/maps (Linux)")
    write_module(ptd_env.project, "damage_values.py", VALUES_MODULE)
    run_python(f"import damage_values as m\nfor i in range({CALLS}): m.value_of(i)",
               ptd_env.project, ptd_env.home, timeout=60)
    (data_file,) = ptd_env.home.rglob("data.mdb")
    ranges = list(_live_record_ranges(data_file.parent).values())
    assert len(ranges) == CALLS
    return data_file.parent, data_file.read_bytes(), ranges


def _damage(data: bytearray, pristine: bytes, kind: str, rng: random.Random, true_values,
            ranges) -> str:
    if kind == "bit flips in values":
        flips = []
        for _ in range(rng.randint(1, 3)):
            start, end = rng.choice(ranges)
            record = pristine[start:end]
            inside = [v for v in true_values if v in record]
            assert len(inside) == 1
            offset = start + record.find(inside[0]) + rng.randrange(len(inside[0]))
            data[offset] ^= 1 << rng.randrange(8)
            flips.append(offset)
        return f"bits flipped at {flips}"
    if kind == "zeroed 4 KiB page":
        page = rng.randrange(len(data) // PAGE)
        data[page * PAGE:(page + 1) * PAGE] = bytes(PAGE)
        return f"page {page} of {len(data) // PAGE} zeroed"
    size = rng.randrange(100, 500)
    offset = rng.randrange(len(data) - size)
    data[offset:offset + size] = rng.randbytes(size)
    return f"{size} bytes of garbage at {offset}"


def _lmdb_abort(result) -> bool:
    """The process was stopped by one of LMDB's own assertions (see the module docstring)."""
    return result.returncode == -signal.SIGABRT and "mdb.c" in result.stderr \
        and "Assertion" in result.stderr


def test_random_damage_never_returns_a_wrong_value_and_verify_reports_every_altered_record(
        ptd_env):
    leaf, pristine, ranges = _pristine_store(ptd_env)
    sys.path.insert(0, str(ptd_env.project))
    try:
        import damage_values
        true_values = [damage_values.true_value(i) for i in range(CALLS)]
    finally:
        sys.path.remove(str(ptd_env.project))
        sys.modules.pop("damage_values", None)
    rng = random.Random(int(os.environ.get("PTD_DAMAGE_SEED", "20261130")))
    counts = {kind: collections.Counter() for kind in KINDS}
    failures = []
    trial = 0
    for kind in KINDS:
        for _ in range(TRIALS):
            trial += 1
            home = ptd_env.tmp / f"trial-{trial}"
            shutil.copytree(ptd_env.home, home, symlinks=True)
            trial_leaf = home / leaf.relative_to(ptd_env.home)
            data = bytearray(pristine)
            what = _damage(data, pristine, kind, rng, true_values, ranges)
            (trial_leaf / "data.mdb").write_bytes(bytes(data))
            altered = any(data[start:end] != pristine[start:end] for start, end in ranges)
            result = run_python(TRIAL_CHILD, ptd_env.project, home, str(trial_leaf), str(CALLS),
                                timeout=60, check=False)
            lines = [json.loads(line) for line in result.stdout.splitlines()
                     if line.startswith("{")]
            where = f"trial {trial} ({kind}: {what})"
            if not lines:
                failures.append(f"{where}: `ptd verify` died ({result.returncode}): "
                                f"{result.stderr[-500:]}")
                continue
            verify = lines[0]
            if verify["verify"] not in (0, 1):
                failures.append(f"{where}: `ptd verify` exited {verify['verify']}")
            if altered and verify["verify"] != 1:
                failures.append(f"{where}: a record was altered but `ptd verify` exited "
                                f"{verify['verify']}:\n{verify['report']}")
            counts[kind]["verify found damage"] += verify["verify"] == 1
            counts[kind]["records altered"] += altered
            if len(lines) < 2:
                if _lmdb_abort(result):
                    counts[kind]["process stopped by an LMDB assertion"] += 1
                else:
                    failures.append(f"{where}: the calls died ({result.returncode}): "
                                    f"{result.stderr[-500:]}")
                continue
            calls = lines[1]
            assert calls["folder"].startswith(str(home)), "the trial uses its own copy"
            for outcome in calls["calls"]:
                counts[kind][outcome.split(" ")[0] if outcome.startswith("error") else
                             outcome] += 1
                if outcome.startswith("error") and "CorruptStoreError" not in outcome:
                    failures.append(f"{where}: a call raised something else than "
                                    f"CorruptStoreError: {outcome}")
            if "wrong" in calls["calls"]:
                failures.append(f"{where}: {calls['calls'].count('wrong')} call(s) returned "
                                "a wrong value")
            if "recomputed" in calls["calls"] and not calls["warnings"]:
                failures.append(f"{where}: a damaged result was recomputed without a warning")
    summary = "\n".join(f"  {kind}: {dict(counts[kind])}" for kind in KINDS)
    print(f"\ndamage trials ({TRIALS} per kind, {CALLS} calls each):\n{summary}")
    assert not failures, "\n".join(failures) + "\n" + summary
    assert all(counts[kind]["wrong"] == 0 for kind in KINDS)
    # The checksum did the work: damaged values were recomputed, not returned.
    assert counts["bit flips in values"]["recomputed"] >= TRIALS


# =================================================================================================
# 3. Cost: what storing and inspecting a large result holds in memory
# =================================================================================================

LARGE_MB = 200
LARGE_PROGRAM = """
    import resource, sys
    import numpy as np
    import persist_to_disk as ptd

    SIZE = {size}

    def peak_bytes():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @ptd.persistf()
    def make(n):
        if sys.argv[1] != "store":
            raise AssertionError("must not compute")
        return VALUE

    @ptd.persistf()
    def tiny(n):
        return n

    tiny(0)  # imports, settings and an open store: all before the baseline
    make.is_cached(2)
    if sys.argv[1] == "store":
        VALUE = np.random.default_rng(0).integers(0, 255, SIZE, dtype=np.uint8)
        baseline = peak_bytes()
        make(1)
        print(baseline, peak_bytes())
    else:
        import tracemalloc  # Python's allocations: copies, not pages of the map LMDB touches
        tracemalloc.start()
        found = [make.is_cached(1), make(1, cache_switch=ptd.CHECKONLY), make.forget(1),
                 make.is_cached(1)]
        print(0, tracemalloc.get_traced_memory()[1], found)
"""


def _run_large(ptd_env, step: str):
    result = run_python(LARGE_PROGRAM.format(size=LARGE_MB << 20), ptd_env.project, ptd_env.home,
                        step, timeout=120)
    return result.stdout.split(" ", 2)


def test_storing_a_large_result_holds_it_at_most_twice_besides_the_result(ptd_env):
    """The result is pickled straight into the record's buffer (one copy) and LMDB copies it
    into its pages while writing (a second); ``pickle.dumps`` and joining the record made two
    more (a 500 MB result peaked at 2 GB). Peak memory of a fresh process over its own baseline
    taken once the result exists: a memory ratio, not a timing."""
    baseline, peak = map(int, _run_large(ptd_env, "store"))
    extra = (peak - baseline) / (LARGE_MB << 20)
    assert extra < 2.3, f"storing a {LARGE_MB} MB result took {extra:.2f}x its size on top"


def test_is_cached_checkonly_and_forget_never_copy_a_large_result(ptd_env):
    """They read and check the record's header only; copying the whole value out of the map
    cost 0.86 s for a 500 MB result. (py-lmdb still touches every page of a value it hands
    out, to fault them in without the GIL: pages of the file mapped, not a copy.)"""
    _run_large(ptd_env, "store")
    _, peak, found = _run_large(ptd_env, "inspect")
    assert found.strip() == "[True, True, True, False]"
    copied = int(peak) / (LARGE_MB << 20)
    assert copied < 0.01, f"inspecting a stored {LARGE_MB} MB result copied {copied:.2f}x it"
