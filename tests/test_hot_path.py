"""The fast hit and miss paths answer exactly as the general ones did.

* **Keys.** ``keying.CallKeyer`` keys a call without binding it to a dict: it learns, once per
  call shape, where each parameter's value comes from, and encodes the values with a compiled,
  type-speculating encoder. It must hash exactly the bytes ``call_digest`` hashes for the same
  call (whatever the spelling, defaults, keyword order, ``**kwargs``, ``skip_kwargs``, captured
  variables, and values whose type differs from the first call's), and the digests of the
  version before it must not change (fixed values below), so existing caches still hit.
* **Records.** Decoding looks the serializer and Python version up by their bytes; two records
  whose texts concatenate to the same bytes must still decode apart.
* **Scope locks** (``engine/locks.py``) keep their lock file open between misses. They must
  still be reentrant per thread, exclusive between threads and between processes, released by
  the kernel when a holder dies, never shared with a forked child, re-opened when the file is
  deleted under them, and bounded in open descriptors.
"""

import math
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import persist_to_disk as ptd
from helpers import lock_held_elsewhere
from persist_to_disk.engine import Record, RecordKind, StoreFormatError, locks
from persist_to_disk.engine import settings as engine_settings
from persist_to_disk.engine.records import decode_record, encode_record
from persist_to_disk.keying import CallKeyer, call_digest


# --- keys -------------------------------------------------------------------------------------
def general_digest(function, args=(), kwargs=None):
    """The digest the general path (bind, normalise, call_digest) gives ``function(*args,
    **kwargs)``."""
    persisted = function.__persisted__
    bound = persisted.binder.bind(args, dict(kwargs or {}))
    group_values, key = persisted.normalizer.normalize(bound)
    return call_digest(group_values, key + persisted.closure_key, "f", persisted.group_names)


def general_key(function, args=(), kwargs=None):
    persisted = function.__persisted__
    return persisted.normalizer.normalize(persisted.binder.bind(args, dict(kwargs or {})))[1]


def keyer_of(function):
    persisted = function.__persisted__
    return CallKeyer(persisted.binder.bind, persisted.options.skip_kwargs, persisted.closure_key)


@ptd.persistf()
def positional(a, b, c=3):
    return (a, b, c)


@ptd.persistf()
def keyword_only(a, *, b=2, c):
    return (a, b, c)


@ptd.persistf()
def open_ended(a, b=2, **extra):
    return (a, b, extra)


@ptd.persistf()
def positional_only(a, /, b=1, **extra):
    return (a, b, extra)


@ptd.persistf(skip_kwargs=["verbose"])
def skipping(a, verbose=False):
    return a


def make_scaled(factor):
    @ptd.persistf()
    def scaled(x):
        return x * factor
    return scaled


SPELLINGS = [
    (positional, (1, 2), {}),
    (positional, (1,), {"b": 2}),
    (positional, (), {"c": 3, "b": 2, "a": 1}),
    (positional, (1, 2, 3), {}),
    (keyword_only, (1,), {"c": 3}),
    (keyword_only, (), {"c": 3, "a": 1, "b": 2}),
    (open_ended, (1,), {"z": 1, "y": "two"}),
    (open_ended, (1,), {"y": "two", "z": 1}),
    (open_ended, (1, 5), {"b_": 0}),
    (positional_only, (1,), {"a": "shadow", "b": 4}),
    (skipping, (7,), {"verbose": True}),
    (make_scaled(3), (2,), {}),
]


@pytest.mark.parametrize("function, args, kwargs", SPELLINGS,
                         ids=[f"{f.__name__}-{i}" for i, (f, _, _) in enumerate(SPELLINGS)])
def test_the_keyer_hashes_what_the_general_path_hashes_for_every_call_shape(function, args,
                                                                             kwargs):
    keyer = keyer_of(function)
    for _ in range(2):  # the first call learns the shape and compiles its encoder
        assert keyer.digest(args, kwargs) == general_digest(function, args, kwargs)
    assert keyer.key(args, kwargs) == general_key(function, args, kwargs)


def test_captured_variables_and_skipped_arguments_count_as_the_general_path_counts_them():
    triple, double = make_scaled(3), make_scaled(2)
    assert keyer_of(triple).digest((2,), {}) != keyer_of(double).digest((2,), {})
    keyer = keyer_of(skipping)
    assert keyer.digest((7,), {"verbose": True}) == keyer.digest((7,), {})


SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
           | st.binary(max_size=20))
VALUES = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(max_size=3), SCALARS,
                                                                  max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.tuples(VALUES, VALUES, VALUES), later=st.lists(st.tuples(VALUES, VALUES, VALUES),
                                                              min_size=1, max_size=4))
def test_values_of_any_type_give_the_general_digest_even_when_the_first_calls_types_differ(
        first, later):
    keyer = keyer_of(positional)
    for a, b, c in [first] + later:  # the encoder speculates on the first call's types
        assert keyer.digest((a, b, c), {}) == general_digest(positional, (a, b, c))
        assert keyer.digest((a,), {"c": c, "b": b}) == general_digest(positional, (a, b, c))


def test_equal_values_of_distinct_types_stay_distinct_calls_on_the_fast_path():
    keyer = keyer_of(positional)
    digests = {keyer.digest((value, 0), {}) for value in (1, 1.0, True, "1", b"1", 0.0, -0.0)}
    assert len(digests) == 7
    floats = keyer_of(positional)
    floats.digest((0.5, 0), {})  # its encoder now expects floats in first place
    for nan in (math.nan, -math.nan):  # every NaN has the one canonical encoding
        assert floats.digest((nan, 0), {}) == general_digest(positional, (math.nan, 0))


def test_shapes_the_keyer_does_not_plan_go_to_the_general_path():
    @ptd.persistf()
    def rest(a, *more):
        return a

    assert keyer_of(rest).digest((1, 2, 3), {}) is None  # extra *args
    assert keyer_of(positional).digest((1,), {}) is None  # Python rejects it: b is missing
    assert keyer_of(positional).digest((lambda: 0, 2), {}) is None  # the general path explains
    assert keyer_of(rest).digest((1,), {}) == general_digest(rest, (1,))


def test_a_call_stored_through_the_fast_path_is_found_by_the_general_path(ptd_env):
    assert open_ended(1, y="two", z=[3]) == (1, 2, {"y": "two", "z": [3]})
    assert open_ended.is_cached(1, z=[3], y="two")  # bind + normalise + call_digest
    assert open_ended.forget(1, 2, z=[3], y="two")
    assert not open_ended.is_cached(1, y="two", z=[3])


# Computed by persist_to_disk's keying.py as it was before the fast path (git f3bbaf5).
GOLDEN_DIGESTS = [
    ((), (("flag", True), ("i", 5), ("label", "run"), ("scale", 0.5)),
     "c492ff06764c6bc8429a963e61f315af"),
    ((), (("x", -0.0),), "868f5b53529f17951fbb48363a1b881f"),
    ((), (("x", 0.0),), "8f828f890618d8675c76c7787a7040ef"),
    ((), (("x", float("nan")),), "8a466552b7b9f704bfa78dcaaf62e609"),
    ((), (("x", 10**30),), "08fa55675dd958da8416b538b340cecc"),
    ((), (("x", -7),), "aaa7d6100bdc9df156bfbeeadde344c5"),
    ((), (("a", None), ("b", b"\x00bytes"), ("c", "é\ud800")), "0f9dd02ec02e434210824bb873112cdc"),
    ((), (("a", [1, 2.5, "x"]), ("b", {"k": (1, None)}), ("c", {3, 1, 2})),
     "cf2d4d940e8f7df0e1d728bcde08b169"),
    ((), (("a", 1), ("b", 1.0), ("c", True)), "3010710c7cc73beccf3dde9c584ee907"),
    ((), (("*args", (3, 4)), ("**a", 1), ("a", 2)), "ef7a33a2fca8f68c1d679ac4c14f7da7"),
    (("mnist", (1, "x")), (("x", 1),), "766329d8d3d5948e690a79ed7a48684a"),
    ((), (("x", 1), ("<closure>k", b"\x01" * 16)), "aaa245b5134339c49ea179c7e13a7a7e"),
]


@pytest.mark.parametrize("groups, key, expected", GOLDEN_DIGESTS)
def test_digests_are_those_of_the_version_before_the_fast_path(groups, key, expected):
    assert call_digest(groups, key, "f", ("dataset", "pair")).hex() == expected


def test_the_fast_path_gives_the_previous_versions_digest_of_a_call():
    @ptd.persistf()
    def small(i, scale=1.0, label="run", flag=True):
        return i

    assert keyer_of(small).digest((5, 0.5), {}).hex() == GOLDEN_DIGESTS[0][2]


# --- records ----------------------------------------------------------------------------------
def record(serializer, python_version, key=b"k", value=b"v"):
    return Record(RecordKind.VALUE, 1.5, 0.25, serializer, python_version, key, value, 7)


def test_records_whose_text_fields_concatenate_alike_decode_apart():
    one, other = record("pickle:5", "3.11.7"), record("pickle:53", ".11.7")
    for _ in range(2):  # the second round reads the cached texts
        assert decode_record(encode_record(one), 7) == one
        assert decode_record(encode_record(other), 7) == other


def test_record_decoding_refuses_what_it_cannot_read():
    data = bytearray(encode_record(record("pickle:5", "3.11.7")))
    with pytest.raises(StoreFormatError, match="shorter than its header"):
        decode_record(bytes(data[:10]))
    data[1] = 9
    with pytest.raises(StoreFormatError, match="kind 9"):
        decode_record(bytes(data))
    data[0] = 4  # a future format (3 is records with code)
    with pytest.raises(StoreFormatError, match="format 4"):
        decode_record(bytes(data))


# --- scope locks ------------------------------------------------------------------------------
HOLDER = """
    import sys, time
    from persist_to_disk.engine.locks import scope_lock
    scope_lock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def restore_settings():
    """The engine settings installed before the test, installed again after it."""
    before = engine_settings.current()
    yield before
    engine_settings.install(before)


@pytest.fixture
def holder():
    """Start a process that takes the lock of a path and keeps it until killed."""
    started = []

    def start(path):
        process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(path)],
                                   stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_a_lock_is_reentrant_in_its_thread_and_released_by_the_outermost_release(tmp_path):
    path = str(tmp_path / "locks" / "1.lock")
    outer = locks.scope_lock(path)
    outer.acquire()
    inner = locks.scope_lock(path, timeout=0)
    inner.acquire()  # a nested cached call under the same lock: no deadlock
    inner.release()
    assert lock_held_elsewhere(path), "the inner release unlocked the outer hold"
    outer.release()
    assert not lock_held_elsewhere(path)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)


def test_other_threads_wait_for_the_holding_thread(tmp_path):
    path = str(tmp_path / "func.lock")
    outcome = []

    def try_briefly():
        try:
            locks.scope_lock(path, timeout=0.05).acquire()
        except locks.Timeout:
            outcome.append("timed out")

    with locks.scope_lock(path):
        thread = threading.Thread(target=try_briefly)
        thread.start()
        thread.join(10)
    assert outcome == ["timed out"]
    thread = threading.Thread(target=lambda: locks.scope_lock(path, timeout=5).acquire()
                              and outcome.append("taken"))
    thread.start()
    thread.join(10)
    assert outcome == ["timed out", "taken"]


def test_another_process_holding_the_lock_excludes_us_until_it_dies(tmp_path, holder):
    path = tmp_path / "global.lock"
    with locks.scope_lock(str(path)):  # create it and keep our descriptor open
        pass
    process = holder(path)
    with pytest.raises(locks.Timeout):
        locks.scope_lock(str(path), timeout=0.1).acquire()
    process.kill()
    process.wait()
    with locks.scope_lock(str(path), timeout=5):  # the kernel released the dead holder's lock
        assert lock_held_elsewhere(path)


def test_a_lock_file_deleted_under_a_kept_descriptor_is_opened_again(tmp_path, holder):
    path = tmp_path / "locks" / "3.lock"
    with locks.scope_lock(str(path)):
        pass
    path.unlink()  # say, the cache folder was deleted while this process runs
    holder(path)  # another process creates the file again and holds it
    with pytest.raises(locks.Timeout):  # locking our orphaned inode would have "succeeded"
        locks.scope_lock(str(path), timeout=0.1).acquire()


def test_a_lock_folder_moved_aside_is_noticed_at_the_next_recheck(tmp_path, holder,
                                                                  restore_settings):
    path = tmp_path / "leaf" / "locks" / "4.lock"
    with locks.scope_lock(str(path)):
        pass
    (tmp_path / "leaf").rename(tmp_path / "leaf.old")  # the file stays linked, elsewhere
    holder(path)  # another process creates the path again and holds it
    engine_settings.install(restore_settings.replace(lock_recheck_seconds=0.0))
    with pytest.raises(locks.Timeout):
        locks.scope_lock(str(path), timeout=0.1).acquire()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_neither_inherits_nor_releases_the_parents_lock(tmp_path):
    path = str(tmp_path / "func.lock")
    hold = locks.scope_lock(path)
    hold.acquire()
    pid = os.fork()
    if pid == 0:  # the child: the lock is not its own, and it must not unlock it
        code = 3
        try:
            locks.scope_lock(path, timeout=0.05).acquire()
            code = 1  # it thought the parent's lock was reentrant for it
        except locks.Timeout:
            hold.release()  # as a child forked inside a cached call returns from it
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lock_held_elsewhere(path), "the child released the parent's lock"
    hold.release()
    assert not lock_held_elsewhere(path)


def test_open_lock_files_are_bounded_but_held_ones_stay_open(tmp_path, restore_settings):
    engine_settings.install(restore_settings.replace(max_open_lock_files=3))
    paths = [str(tmp_path / "locks" / f"{i}.lock") for i in range(6)]

    def open_lock_files():
        return sum(os.path.realpath(f"/proc/self/fd/{fd}").startswith(str(tmp_path))
                   for fd in os.listdir("/proc/self/fd")
                   if os.path.exists(f"/proc/self/fd/{fd}"))

    for path in paths:
        with locks.scope_lock(path):
            pass
    assert open_lock_files() <= 3
    holds = [locks.scope_lock(path) for path in paths[:5]]
    for hold in holds:
        hold.acquire()
    assert all(lock_held_elsewhere(path) for path in paths[:5])  # none closed while held
    for hold in holds:
        hold.release()
    with locks.scope_lock(paths[5]):
        assert open_lock_files() <= 3


def test_lock_descriptors_are_not_inherited_by_programs_started_from_the_process(tmp_path):
    path = str(tmp_path / "func.lock")
    with locks.scope_lock(path) as lock:
        assert not os.get_inheritable(lock._fd)
