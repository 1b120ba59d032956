"""What one call does: the cache modes, how results are stored, and what happens when storing or
loading goes wrong.

Modes (as in persist-to-disk 0.0.7) are chosen per call with the ``cache_switch=`` keyword (its
name is set by ``switch_kwarg``) or for every call with the decorator's ``cache=``:

* ``NOCACHE`` (0) calls the function and reads and writes nothing;
* ``CACHE`` (1, the default) returns the stored result or computes and stores it;
* ``RECACHE`` (2) computes again and appends a newer version, which later calls return;
* ``READONLY`` (3) returns the stored result, and on a miss raises ``CacheMissError`` (also an
  ``AssertionError``, what 0.0.7 raised, and a ``LookupError``) without computing;
* ``CHECKONLY`` (4) answers True/False and never computes.

Results are pickled; what pickle cannot store goes through cloudpickle; what neither can store
is returned with a ``PersistWarning`` (once per function) and stores nothing. A stored record this interpreter must not
or cannot load (cloudpickle from another Python minor version, a class that no longer exists) is
a miss with a ``PersistWarning``, never a crash. A failure to write the store never loses the
computed result: the call warns and returns it.
"""

import errno
import pickle
import sys
import threading
import time
import warnings

import cloudpickle
import lmdb
import pytest

import persist_to_disk as ptd
from persist_to_disk.engine import Record, RecordKind, Store
from persist_to_disk.engine.errors import storage_io_error
from conftest import write_module
from helpers import counting, store_folders


# --- helpers ----------------------------------------------------------------------------------

def stats_of(func, *args, **kwargs):
    """The engine's statistics of the store that holds ``func(*args, **kwargs)``."""
    store, _, _, _ = func.__persisted__.locate(args, kwargs)
    return Store(store.path).stats()


def write_record(func, args, kwargs, value_blob, serializer, python_version):
    """Append a record for ``func(*args, **kwargs)`` directly through the engine, as another
    interpreter would have written it."""
    store, bucket, digest, key = func.__persisted__.locate(args, kwargs)
    record = Record(RecordKind.VALUE, time.time(), 0.0, serializer, python_version,
                    pickle.dumps(key, protocol=4), value_blob)
    store.append(bucket, digest, record)
    return store, bucket, digest


def persist_warnings(caught):
    return [w for w in caught if issubclass(w.category, ptd.PersistWarning)]


# --- the mode constants -----------------------------------------------------------------------

def test_mode_constants_are_exported_with_0_0_7_values():
    assert (ptd.NOCACHE, ptd.CACHE, ptd.RECACHE, ptd.READONLY, ptd.CHECKONLY) == (0, 1, 2, 3, 4)


# --- NOCACHE ----------------------------------------------------------------------------------

def test_nocache_computes_every_time_and_stores_nothing(ptd_env):
    compute, calls = counting()
    assert compute(1, cache_switch=ptd.NOCACHE) == (1, 1)
    assert compute(1, cache_switch=ptd.NOCACHE) == (1, 2)
    assert calls == [1, 1]
    assert store_folders(ptd_env.persist) == []
    assert compute.is_cached(1) is False


def test_nocache_ignores_a_stored_result():
    compute, calls = counting()
    assert compute(1) == (1, 1)
    assert compute(1, cache_switch=ptd.NOCACHE) == (1, 2)
    assert compute(1) == (1, 1), "NOCACHE must not overwrite the stored result"
    assert compute.cache_info()["versions"] == 1


# --- CACHE ------------------------------------------------------------------------------------

def test_cache_is_the_default_and_the_explicit_mode_alike():
    compute, calls = counting()
    assert compute(1) == (1, 1)
    assert compute(1, cache_switch=ptd.CACHE) == (1, 1)
    assert compute(1) == (1, 1)
    assert calls == [1]


def test_the_mode_keyword_is_not_passed_to_the_function_nor_part_of_the_key():
    seen = []

    @ptd.persistf()
    def record_kwargs(x, **kwargs):
        seen.append(dict(kwargs))
        return x

    record_kwargs(1, cache_switch=ptd.CACHE)
    record_kwargs(1)
    assert seen == [{}]


# --- RECACHE ----------------------------------------------------------------------------------

def test_recache_recomputes_and_later_calls_return_the_newer_version():
    compute, calls = counting()
    assert compute(1) == (1, 1)
    assert compute(1, cache_switch=ptd.RECACHE) == (1, 2)
    assert compute(1) == (1, 2)
    assert calls == [1, 1]
    info = compute.cache_info()
    assert info["entries"] == 1
    assert info["versions"] == 2, "RECACHE appends a version; the old one stays until compaction"
    assert stats_of(compute, 1).versions == 2


def test_recache_on_a_miss_computes_and_stores_once():
    compute, calls = counting()
    assert compute(5, cache_switch=ptd.RECACHE) == (5, 1)
    assert compute(5) == (5, 1)
    assert compute.cache_info()["versions"] == 1


# --- READONLY ---------------------------------------------------------------------------------

def test_readonly_returns_the_stored_result():
    compute, calls = counting()
    compute(1)
    assert compute(1, cache_switch=ptd.READONLY) == (1, 1)
    assert calls == [1]


def test_readonly_miss_raises_without_computing_or_creating_a_store(ptd_env):
    compute, calls = counting()
    with pytest.raises(ptd.CacheMissError) as raised:
        compute(1, cache_switch=ptd.READONLY)
    assert isinstance(raised.value, AssertionError), "0.0.7 raised AssertionError"
    assert isinstance(raised.value, LookupError)
    assert "READONLY" in str(raised.value)
    assert calls == []
    assert store_folders(ptd_env.persist) == []


def test_readonly_miss_for_one_call_while_others_are_stored():
    compute, calls = counting()
    compute(1)
    with pytest.raises(ptd.CacheMissError):
        compute(2, cache_switch=ptd.READONLY)
    assert calls == [1]
    assert compute.cache_info()["entries"] == 1


# --- CHECKONLY --------------------------------------------------------------------------------

def test_checkonly_answers_without_computing(ptd_env):
    compute, calls = counting()
    assert compute(1, cache_switch=ptd.CHECKONLY) is False
    assert store_folders(ptd_env.persist) == [], "a check must not create a store"
    compute(1)
    assert compute(1, cache_switch=ptd.CHECKONLY) is True
    assert compute(2, cache_switch=ptd.CHECKONLY) is False
    assert calls == [1]


# --- a custom switch keyword ------------------------------------------------------------------

def test_custom_switch_kwarg_selects_the_mode_and_is_removed_before_the_call(ptd_env):
    compute, calls = counting(switch_kwarg="mode")
    assert compute(1, mode=ptd.NOCACHE) == (1, 1)
    assert store_folders(ptd_env.persist) == []
    assert compute(1, mode=ptd.CHECKONLY) is False
    assert compute(1) == (1, 2)
    assert compute(1, mode=ptd.RECACHE) == (1, 3)
    assert compute(1, mode=ptd.READONLY) == (1, 3)
    assert compute(1, mode=ptd.CHECKONLY) is True
    with pytest.raises(ptd.CacheMissError):
        compute(2, mode=ptd.READONLY)
    assert calls == [1, 1, 1]


def test_with_a_custom_switch_kwarg_cache_switch_is_an_ordinary_argument():
    compute, calls = counting(switch_kwarg="mode")
    with pytest.raises(TypeError):
        compute(1, cache_switch=ptd.NOCACHE)  # compute() has no such parameter
    assert calls == []


# --- invalid modes ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [5, -1, 2.5, "recache", None, [1]])
def test_an_invalid_mode_raises_valueerror_naming_the_keyword(ptd_env, bad):
    compute, calls = counting()
    with pytest.raises(ValueError, match="cache_switch"):
        compute(1, cache_switch=bad)
    assert calls == []
    assert store_folders(ptd_env.persist) == []


def test_an_invalid_mode_names_the_custom_keyword():
    compute, calls = counting(switch_kwarg="mode")
    with pytest.raises(ValueError, match="mode"):
        compute(1, mode=7)
    assert calls == []


# --- decorator-level cache= -------------------------------------------------------------------

def test_decorator_nocache_overrides_every_call(ptd_env):
    compute, calls = counting(cache=ptd.NOCACHE)
    compute(1)
    compute(1, cache_switch=ptd.CACHE)
    compute(1, cache_switch=ptd.RECACHE)
    assert calls == [1, 1, 1]
    assert store_folders(ptd_env.persist) == []


def test_decorator_recache_overrides_every_call():
    compute, calls = counting(cache=ptd.RECACHE)
    assert compute(1) == (1, 1)
    assert compute(1, cache_switch=ptd.CACHE) == (1, 2)
    assert compute(1, cache_switch=ptd.READONLY) == (1, 3)
    assert compute.cache_info()["versions"] == 3


def test_decorator_readonly_overrides_every_call_and_reads_what_is_stored():
    compute, calls = counting(cache=ptd.READONLY)
    with pytest.raises(ptd.CacheMissError):
        compute(1, cache_switch=ptd.CACHE)
    with pytest.raises(ptd.CacheMissError):
        compute(1, cache_switch=ptd.RECACHE)
    assert calls == []
    write_record(compute, (1,), {}, pickle.dumps("stored elsewhere"), "pickle:5",
                 "3.11.0")
    assert compute(1) == "stored elsewhere"
    assert compute(1, cache_switch=ptd.NOCACHE) == "stored elsewhere"
    assert calls == []


def test_decorator_checkonly_overrides_every_call():
    compute, calls = counting(cache=ptd.CHECKONLY)
    assert compute(1) is False
    assert compute(1, cache_switch=ptd.CACHE) is False
    assert calls == []


def test_decorator_cache_value_is_validated_at_decoration():
    with pytest.raises(ValueError, match="cache"):
        counting(cache=9)


# --- results pickle cannot store: cloudpickle -------------------------------------------------

def test_a_lambda_result_is_stored_with_cloudpickle_and_read_back_in_a_fresh_interpreter(
        ptd_env, python_runner):
    write_module(ptd_env.project, "adders.py", """
        import sys
        import persist_to_disk as ptd

        @ptd.persistf()
        def make_adder(n):
            print("computing", file=sys.stderr)
            return lambda x: x + n
    """)
    first = python_runner("import adders; print(adders.make_adder(3)(4))")
    assert first.stdout.strip() == "7"
    assert "computing" in first.stderr
    second = python_runner("""
        import adders
        print(adders.make_adder(3)(4))
        store, bucket, digest, _ = adders.make_adder.__persisted__.locate((3,), {})
        print(store.latest(bucket, digest).serializer)
    """)
    value, serializer = second.stdout.split()
    assert value == "7"
    assert "computing" not in second.stderr, "the second interpreter must read the stored lambda"
    assert serializer.startswith("cloudpickle")


def test_an_instance_of_a_class_defined_in_a_function_is_stored_with_cloudpickle():
    class Local:
        def __init__(self, value):
            self.value = value

    calls = []

    # The captured class cannot be keyed (it is local): decoration says so, and caching works.
    with pytest.warns(ptd.PersistWarning, match="captured variable 'Local'"):
        @ptd.persistf()
        def make(value):
            calls.append(value)
            return Local(value)

    assert make(3).value == 3
    again = make(3)
    assert type(again).__name__ == "Local" and again.value == 3
    assert calls == [3]
    store, bucket, digest, _ = make.__persisted__.locate((3,), {})
    assert store.latest(bucket, digest).serializer.startswith("cloudpickle")


def test_plain_results_are_stored_with_pickle_not_cloudpickle():
    compute, _ = counting()
    compute(1)
    store, bucket, digest, _ = compute.__persisted__.locate((1,), {})
    assert store.latest(bucket, digest).serializer.startswith("pickle")


# --- results nothing can store ----------------------------------------------------------------

def _generator():
    yield 1


@pytest.mark.parametrize("make_result", [_generator, threading.Lock],
                         ids=["generator", "threading.Lock"])
def test_a_result_neither_serializer_can_store_is_returned_with_one_warning_and_stores_nothing(
        ptd_env, make_result):
    """The function ran: its result is never thrown away (issue 10.8), only not cached."""
    calls, results = [], []

    @ptd.persistf()
    def produce_unstorable(x):
        calls.append(x)
        results.append(make_result())
        return results[-1]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert produce_unstorable(1) is results[0]
        assert produce_unstorable(1) is results[1]
        assert produce_unstorable(2) is results[2]
    (warning,) = persist_warnings(caught)  # once per function, not once per call
    message = str(warning.message)
    assert "produce_unstorable" in message and type(results[0]).__qualname__ in message
    assert "not cached" in message and "picklable" in message and "NOCACHE" in message
    assert produce_unstorable.cache_info()["entries"] == 0
    assert produce_unstorable.cache_info()["versions"] == 0
    assert produce_unstorable.is_cached(1) is False
    assert calls == [1, 1, 2], "nothing was stored, so every call computes"
    assert issubclass(ptd.UnpicklableResultError, ptd.PersistError)  # still exported


# --- records this interpreter must not or cannot load -----------------------------------------

def test_a_cloudpickle_record_from_another_python_minor_version_is_a_miss_with_a_warning():
    compute, calls = counting()
    foreign = cloudpickle.dumps(lambda: "from Python 3.1")
    store, bucket, digest = write_record(compute, (1,), {}, foreign, "cloudpickle:3.1.0",
                                         "3.1.0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert compute.is_cached(1) is False
        assert compute(1) == (1, 1)
    found = persist_warnings(caught)
    assert len(found) >= 1
    assert "3.1.0" in str(found[0].message)
    assert calls == [1]

    assert compute(1) == (1, 1), "the recomputed result is stored and read from then on"
    assert calls == [1]
    stats = Store(store.path).stats()
    assert stats.versions == 2, "the old record is kept beside the new one, not deleted"
    assert stats.entries == 1


def test_a_pickle_record_from_another_python_version_is_still_a_hit():
    compute, calls = counting()
    write_record(compute, (1,), {}, pickle.dumps(("stored", 0), protocol=4), "pickle:4",
                 "3.9.18")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ptd.PersistWarning)
        assert compute(1) == ("stored", 0)
    assert calls == []


def test_a_record_whose_class_no_longer_exists_is_a_miss_with_a_warning(ptd_env, monkeypatch):
    module_dir = ptd_env.tmp / "vanishing_modules"
    write_module(module_dir, "vanishing_shapes.py", """
        class Circle:
            def __init__(self, radius):
                self.radius = radius
    """)
    monkeypatch.syspath_prepend(str(module_dir))
    import vanishing_shapes

    factory = {"make": vanishing_shapes.Circle}
    calls = []

    @ptd.persistf()
    def shape(radius):
        calls.append(radius)
        return factory["make"](radius)

    assert shape(2).radius == 2
    assert shape.cache_info()["entries"] == 1

    # The module disappears (uninstalled, renamed): the stored Circle cannot be unpickled.
    factory["make"] = lambda radius: {"radius": radius}
    monkeypatch.delitem(sys.modules, "vanishing_shapes")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(module_dir)])
    (module_dir / "vanishing_shapes.py").unlink()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert shape(2) == {"radius": 2}
    assert len(persist_warnings(caught)) >= 1
    assert calls == [2, 2]
    assert shape(2) == {"radius": 2}
    assert calls == [2, 2]
    assert shape.cache_info()["versions"] == 2


# --- a store that cannot be written -----------------------------------------------------------

@pytest.mark.parametrize("error", [storage_io_error(  # as the engine reports LMDB's error
    "leaf", lmdb.DiskError("mdb_txn_commit: No space left on device"), "write to"),
                                   OSError(errno.ENOSPC, "No space left on device")],
                         ids=["lmdb.DiskError", "OSError-ENOSPC"])
def test_a_failed_store_write_returns_the_result_with_one_warning(error):
    # Simulates the OS refusing the write (a full disk); the only mock in this file, because
    # tests run as root, for whom permissions do not stop a write.
    def fail(self, *args, **kwargs):
        raise error

    compute, calls = counting()
    leaf = compute.__persisted__.locate((1,), {})[0].path
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Store, "append_value", fail)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert compute(1) == (1, 1)
        found = persist_warnings(caught)
        assert len(found) == 1
        assert leaf in str(found[0].message)

        assert compute(1) == (1, 2), "nothing was stored, so the next call computes again"
        assert calls == [1, 1]

    assert compute(1) == (1, 3)
    assert compute(1) == (1, 3), "once the store can be written again, results are cached"
