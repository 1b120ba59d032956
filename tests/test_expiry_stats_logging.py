"""Results that expire, what the cache did for you, and what it logs.

* **Expiry.** ``persistf(max_age=...)`` (seconds or a ``datetime.timedelta``; ``None``, the
  default: for ever) and, per call, the keyword ``cache_max_age=`` (its name set with
  ``max_age_kwarg=``, as ``switch_kwarg=`` names ``cache_switch=``). A stored result at least
  ``max_age`` old counts as absent: the call computes it again and stores it as the newest
  version, the old one staying until ``ptd compact``. Ages are measured with the settings'
  clock (``ptd.config.set_clock``), which also dates the records: these tests advance a fake
  clock instead of sleeping.
* **Statistics.** ``f.cache_info()`` adds ``hits``, ``misses``, ``computed_seconds`` and
  ``saved_seconds`` (what happened in this process; ``reset=True`` zeroes them after reading),
  and ``ptd.cache_stats()`` sums them over every decorated function.
* **Logging** on the logger ``persist_to_disk``: DEBUG lines for hit, miss and store (function,
  leaf, bucket, milliseconds), INFO for settings written, WARNING for every ``PersistWarning``;
  the library never prints.
"""

import datetime
import json
import logging
import os
import select
import signal
import threading
import time
import traceback

import pytest

import persist_to_disk as ptd
from helpers import counting


class FakeClock:
    """Seconds since the epoch that only move when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(ptd_env, request):
    """The settings' clock replaced by a :class:`FakeClock` for this test (restored after)."""
    fake = FakeClock()
    ptd.config.set_clock(fake)
    request.addfinalizer(lambda: ptd.config.set_clock(None))
    return fake


def stored_record(func, *args, **kwargs):
    """The newest stored record of ``func(*args, **kwargs)``, read through the engine."""
    place = func.__persisted__.locate(args, kwargs)
    return place.store.latest(place.bucket, place.digest)


def counts(func) -> dict:
    """The statistics part of ``func.cache_info()``."""
    info = func.cache_info()
    return {name: info[name] for name in ("hits", "misses", "computed_seconds", "saved_seconds")}


# --- expiry -----------------------------------------------------------------------------------

def test_a_result_younger_than_max_age_hits_and_an_older_one_is_computed_again(clock):
    compute, calls = counting(max_age=60)
    assert compute(1) == (1, 1)
    clock.advance(59)
    assert compute(1) == (1, 1)
    clock.advance(2)  # 61 s after it was stored
    assert compute(1) == (1, 2)
    assert compute(1) == (1, 2)  # the new version is dated now, so it is fresh again
    assert calls == [1, 1]
    info = compute.cache_info()
    assert (info["entries"], info["versions"]) == (1, 2)  # the old version stays until compaction
    assert (info["hits"], info["misses"]) == (2, 2)  # an expired lookup is one miss
    assert stored_record(compute, 1).created == clock.now  # dated by the settings' clock


def test_a_result_exactly_max_age_old_has_expired(clock):
    compute, calls = counting(max_age=60)
    compute(1)
    clock.advance(60)
    assert compute(1) == (1, 2)


def test_max_age_accepts_a_timedelta(clock):
    compute, calls = counting(max_age=datetime.timedelta(hours=1))
    assert compute.__persisted__.options.max_age == 3600.0
    compute(1)
    clock.advance(3599)
    assert compute(1) == (1, 1)
    clock.advance(2)
    assert compute(1) == (1, 2)


def test_max_age_zero_computes_at_every_call_and_stores_every_result(clock):
    compute, calls = counting(max_age=0)
    assert [compute(1) for _ in range(3)] == [(1, 1), (1, 2), (1, 3)]  # even at the same instant
    assert compute.cache_info()["versions"] == 3


def test_without_max_age_a_result_never_expires(clock):
    compute, calls = counting()
    compute(1)
    clock.advance(100 * 365 * 86400)
    assert compute(1) == (1, 1)


RECEIVED = []  # what kwargs_seen received (a global, so no part of its key)


def kwargs_seen(**options):
    """A cached ``f(x, **kwargs)`` returning the keyword names it was called with."""
    @ptd.persistf(**options)
    def seen(x, **kwargs):
        RECEIVED.append(sorted(kwargs))
        return x, sorted(kwargs), len(RECEIVED)
    return seen


def test_the_per_call_keyword_overrides_max_age_either_way_and_none_means_never(clock):
    RECEIVED.clear()
    seen = kwargs_seen(max_age=60)
    assert seen(1) == (1, [], 1)
    clock.advance(100)  # expired under the decorator's 60 s
    assert seen(1, cache_max_age=3600) == (1, [], 1)  # longer: still good
    assert seen(1, cache_max_age=datetime.timedelta(minutes=2)) == (1, [], 1)
    assert seen(1, cache_max_age=None) == (1, [], 1)  # None: never expires
    assert seen(1, cache_max_age=99) == (1, [], 2)  # shorter: computed again
    clock.advance(10)
    assert seen(1) == (1, [], 2)  # the decorator's 60 s again
    assert seen(1, cache_max_age=5) == (1, [], 3)
    assert RECEIVED == [[], [], []]  # the keyword never reached the function


def test_the_per_call_keyword_works_without_a_decorator_max_age(clock):
    compute, calls = counting()
    compute(1)
    clock.advance(30)
    assert compute(1, cache_max_age=60) == (1, 1)
    assert compute(1, cache_max_age=10) == (1, 2)
    assert compute(1) == (1, 2)


def test_the_per_call_keyword_combines_with_a_mode(clock):
    compute, calls = counting(max_age=60)
    compute(1)
    clock.advance(100)
    assert compute(1, cache_switch=ptd.READONLY, cache_max_age=None) == (1, 1)
    assert compute(1, cache_switch=ptd.NOCACHE, cache_max_age=5) == (1, 2)  # computes, stores nothing
    assert compute.cache_info()["versions"] == 1


def test_max_age_kwarg_renames_the_per_call_keyword(clock):
    RECEIVED.clear()
    seen = kwargs_seen(max_age=60, max_age_kwarg="fresh_for")
    seen(1)
    clock.advance(30)
    assert seen(1, fresh_for=10) == (1, [], 2)
    assert RECEIVED == [[], []]
    # cache_max_age is then an ordinary keyword argument of the function, part of the key
    assert seen(1, cache_max_age=10) == (1, ["cache_max_age"], 3)


@pytest.mark.parametrize("bad", [-1, -0.5, "1h", True, float("nan"), float("inf"),
                                 datetime.timedelta(seconds=-1), [60]])
def test_a_bad_max_age_is_a_config_error_at_decoration_and_a_value_error_at_a_call(bad, ptd_env):
    with pytest.raises(ptd.ConfigError, match="max_age"):
        counting(max_age=bad)
    compute, calls = counting()
    with pytest.raises(ValueError, match="cache_max_age"):
        compute(1, cache_max_age=bad)
    assert calls == []
    compute, calls = counting(max_age_kwarg="fresh_for")
    with pytest.raises(ValueError, match="fresh_for"):
        compute(1, fresh_for=bad)


def test_max_age_kwarg_must_differ_from_the_parameters_and_from_switch_kwarg(ptd_env):
    with pytest.raises(ptd.ConfigError, match="cache_max_age"):
        @ptd.persistf()
        def takes_it(x, cache_max_age=1):
            return x
    with pytest.raises(ptd.ConfigError, match="'ttl'"):
        @ptd.persistf(max_age_kwarg="ttl")
        def takes_ttl(x, ttl):
            return x
    with pytest.raises(ptd.ConfigError, match="switch_kwarg and max_age_kwarg"):
        @ptd.persistf(max_age_kwarg="cache_switch")
        def same(x):
            return x
    with pytest.raises(ptd.ConfigError, match="switch_kwarg and max_age_kwarg"):
        @ptd.persistf(switch_kwarg="mode", max_age_kwarg="mode")
        def same_again(x):
            return x
    with pytest.raises(ptd.ConfigError, match="max_age_kwarg"):
        ptd.persistf(max_age_kwarg="")(lambda_free)


def lambda_free(x):
    return x


def test_checkonly_and_is_cached_report_an_expired_result_as_absent(clock):
    compute, calls = counting(max_age=60)
    compute(1)
    assert compute(1, cache_switch=ptd.CHECKONLY) is True and compute.is_cached(1) is True
    clock.advance(61)
    assert compute(1, cache_switch=ptd.CHECKONLY) is False
    assert compute.is_cached(1) is False
    assert compute(1, cache_switch=ptd.CHECKONLY, cache_max_age=3600) is True
    assert calls == [1]
    assert (compute.cache_info()["hits"], compute.cache_info()["misses"]) == (0, 1)


def test_readonly_on_an_expired_result_raises_cache_miss_error(clock):
    compute, calls = counting(max_age=60)
    compute(1)
    clock.advance(61)
    with pytest.raises(ptd.CacheMissError, match="max_age=60"):
        compute(1, cache_switch=ptd.READONLY)
    assert compute(1, cache_switch=ptd.READONLY, cache_max_age=120) == (1, 1)
    assert calls == [1]


def test_recache_stores_a_fresh_version_that_then_hits(clock):
    compute, calls = counting(max_age=60)
    compute(1)
    clock.advance(50)
    assert compute(1, cache_switch=ptd.RECACHE) == (1, 2)
    clock.advance(50)  # 100 s after the first, 50 s after the second
    assert compute(1) == (1, 2)


def test_expiry_applies_on_the_general_path_too(clock):
    RECEIVED.clear()

    @ptd.persistf(groupby=["dataset"], max_age=60)
    def train(dataset, epochs):
        RECEIVED.append((dataset, epochs))
        return dataset, epochs, len(RECEIVED)

    assert train("mnist", 3) == ("mnist", 3, 1)
    clock.advance(59)
    assert train("mnist", 3) == ("mnist", 3, 1)
    assert train("mnist", 3, cache_max_age=10) == ("mnist", 3, 2)
    clock.advance(61)
    assert train("mnist", 3) == ("mnist", 3, 3)
    info = train.cache_info()
    assert (info["leaves"], info["entries"], info["versions"]) == (1, 1, 3)


def test_a_result_stored_before_max_age_was_set_expires_by_its_date(clock):
    """``max_age`` is not part of a call's identity: adding it to a function finds the results
    it stored without it, and judges them by when they were stored."""
    def build(**options):
        @ptd.persistf(**options)
        def fetch(x):
            RECEIVED.append(x)
            return x, len(RECEIVED)
        return fetch

    RECEIVED.clear()
    build()(1)
    clock.advance(30)
    assert build(max_age=60)(1) == (1, 1)
    assert build(max_age=10)(1) == (1, 2)


# --- statistics -------------------------------------------------------------------------------

def sleepy(**options):
    """A cached ``f(x)`` that takes at least 50 ms of real time to compute."""
    @ptd.persistf(**options)
    def slow(x):
        time.sleep(0.05)
        return x * 10
    return slow


def test_statistics_are_exact_over_a_scripted_sequence_of_calls(ptd_env):
    slow = sleepy()
    assert counts(slow) == {"hits": 0, "misses": 0, "computed_seconds": 0.0,
                            "saved_seconds": 0.0}
    assert slow(1) == 10  # miss: computed and stored
    first = stored_record(slow, 1).compute_seconds
    assert 0.05 <= first <= 1
    assert counts(slow) == {"hits": 0, "misses": 1, "computed_seconds": first,
                            "saved_seconds": 0.0}
    assert slow(1) == 10 and slow(1) == 10  # two hits, each saving the stored compute time
    assert slow(1, cache_switch=ptd.RECACHE) == 10  # a miss: computed again
    second = stored_record(slow, 1).compute_seconds
    assert 0.05 <= second <= 1
    assert slow(1, cache_switch=ptd.NOCACHE) == 10  # neither: the cache is not used
    assert slow(1, cache_switch=ptd.CHECKONLY) is True  # neither: nothing returned from it
    assert slow.is_cached(1) is True
    with pytest.raises(ptd.CacheMissError):
        slow(2, cache_switch=ptd.READONLY)  # a miss, computing nothing
    assert slow(1) == 10  # a hit on the second version
    assert counts(slow) == {"hits": 3, "misses": 3, "computed_seconds": first + second,
                            "saved_seconds": first + first + second}


def test_cache_info_reset_returns_the_counts_then_starts_again_from_zero(ptd_env):
    compute, calls = counting()
    compute(1), compute(1), compute(2)
    info = compute.cache_info(reset=True)
    assert (info["hits"], info["misses"]) == (1, 2)
    assert info["computed_seconds"] > 0
    assert info["entries"] == 2  # what is stored is untouched
    assert counts(compute) == {"hits": 0, "misses": 0, "computed_seconds": 0.0,
                               "saved_seconds": 0.0}
    compute(1)
    assert (compute.cache_info()["hits"], compute.cache_info()["misses"]) == (1, 0)


def test_cache_info_also_names_the_code_identity(ptd_env):
    compute, calls = counting()
    compute(1)
    info = compute.cache_info()
    assert set(info) >= {"function", "folder", "leaves", "entries", "versions", "file_bytes",
                         "hits", "misses", "computed_seconds", "saved_seconds",
                         "code_fingerprint", "version", "code_changes"}
    assert (info["version"], info["code_changes"]) == (None, "warn")
    assert len(info["code_fingerprint"]) == 32


def test_cache_stats_sums_every_decorated_function_and_resets_them_all(ptd_env):
    ptd.cache_stats(reset=True)  # (functions of earlier tests may still be alive)
    slow = sleepy()
    compute, calls = counting()
    slow(1), slow(1), slow(1)
    compute(1), compute(2), compute(1)
    mine = [counts(slow), counts(compute)]
    total = ptd.cache_stats()
    assert total == {"hits": 3, "misses": 3, "functions": 2,
                     "computed_seconds": sum(c["computed_seconds"] for c in mine),
                     "saved_seconds": sum(c["saved_seconds"] for c in mine)}
    assert ptd.cache_stats(reset=True) == total
    assert ptd.cache_stats() == {"hits": 0, "misses": 0, "functions": 0,
                                 "computed_seconds": 0.0, "saved_seconds": 0.0}
    assert counts(slow)["hits"] == counts(compute)["hits"] == 0


def test_hits_counted_from_eight_threads_are_exact(ptd_env):
    compute, calls = counting()
    compute(1)
    compute.cache_info(reset=True)
    start = threading.Barrier(8, timeout=60)
    failures = []

    def hit_200_times():
        try:
            start.wait()
            for _ in range(200):
                assert compute(1) == (1, 1)
        except BaseException as err:  # reported by the main thread
            failures.append(err)

    threads = [threading.Thread(target=hit_200_times) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert (compute.cache_info()["hits"], compute.cache_info()["misses"]) == (1600, 0)
    assert calls == [1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_counts_from_zero_and_leaves_the_parents_counts_alone(ptd_env):
    compute, calls = counting()
    compute(1), compute(1)
    parent_before = counts(compute)
    assert (parent_before["hits"], parent_before["misses"]) == (1, 1)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and never return into pytest
        status = 1
        try:
            os.close(read_end)
            before = counts(compute)
            value = compute(1)
            after = counts(compute)
            os.write(write_end, json.dumps([before, list(value), after]).encode())
            status = 0
        except BaseException:
            os.write(write_end, traceback.format_exc().encode())
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        deadline = time.monotonic() + 60
        chunks = []
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 1)
            if ready:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish within 60 s")
    finally:
        os.close(read_end)
    report = b"".join(chunks).decode()
    assert os.waitstatus_to_exitcode(status) == 0, report
    before, value, after = json.loads(report)
    assert before == {"hits": 0, "misses": 0, "computed_seconds": 0.0, "saved_seconds": 0.0}
    assert value == [1, 1]
    assert (after["hits"], after["misses"]) == (1, 0)
    assert counts(compute) == parent_before


# --- logging ----------------------------------------------------------------------------------

def ptd_messages(caplog, level=None):
    return [record.getMessage() for record in caplog.records
            if record.name == "persist_to_disk" and (level is None or record.levelno == level)]


def test_debug_logs_a_line_per_miss_store_and_hit_naming_function_leaf_bucket_and_ms(caplog,
                                                                                   ptd_env):
    slow = sleepy()
    caplog.set_level(logging.DEBUG, logger="persist_to_disk")
    slow(1)
    place = slow.__persisted__.locate((1,), {})
    name, where = slow.__persisted__.name, f"{place.store.path} bucket {place.bucket} "
    lines = ptd_messages(caplog, logging.DEBUG)
    misses = [line for line in lines if line.startswith(f"miss {name} in {where}")]
    stores = [line for line in lines if line.startswith(f"store {name} in {where}")]
    assert misses and stores, lines
    assert any(line.endswith(" ms)") for line in misses)
    assert len(stores) == 1 and " ms" in stores[0] and "computed in" in stores[0]
    computed_ms = float(stores[0].rsplit("computed in ", 1)[1].split(" ms")[0])
    assert 50 <= computed_ms <= 1000
    caplog.clear()
    slow(1)
    lines = ptd_messages(caplog, logging.DEBUG)
    hits = [line for line in lines if line.startswith(f"hit {name} in {where}(")]
    assert len(hits) == 1 and hits[0].endswith(" ms)"), lines
    assert not [line for line in lines if line.startswith(("miss", "store"))]


def test_debug_logs_an_expired_result_as_such(caplog, clock):
    compute, calls = counting(max_age=60)
    compute(1)
    clock.advance(3600)
    caplog.set_level(logging.DEBUG, logger="persist_to_disk")
    compute(1)
    assert any(line.startswith(f"expired {compute.__persisted__.name} in ")
               and "3600 s ago" in line for line in ptd_messages(caplog, logging.DEBUG))


def test_nothing_is_logged_for_hits_and_misses_at_the_default_warning_level(caplog, ptd_env):
    caplog.set_level(logging.WARNING, logger="persist_to_disk")
    compute, calls = counting()
    compute(1), compute(1), compute(2, cache_switch=ptd.RECACHE)
    compute(1, cache_switch=ptd.CHECKONLY)
    assert caplog.records == []


def test_every_persist_warning_is_also_a_warning_record(caplog, ptd_env):
    caplog.set_level(logging.WARNING, logger="persist_to_disk")

    @ptd.persistf()
    def unpicklable(x):
        return threading.Lock()

    with pytest.warns(ptd.PersistWarning) as caught:
        unpicklable(1)
    [warning] = [w for w in caught if issubclass(w.category, ptd.PersistWarning)]
    assert [(r.levelno, r.getMessage()) for r in caplog.records
            if r.name == "persist_to_disk"] == [(logging.WARNING, str(warning.message))]
    assert "neither pickle nor cloudpickle" in str(warning.message)


def test_a_warning_about_config_ini_is_also_a_warning_record(caplog, ptd_env):
    ptd_env.home.mkdir(parents=True, exist_ok=True)
    (ptd_env.home / "config.ini").write_text("[global_settings]\nhash_size = 7\n")
    caplog.set_level(logging.WARNING, logger="persist_to_disk")
    ptd.config.reload()
    with pytest.warns(ptd.PersistWarning, match="unknown key 'hash_size'") as caught:
        ptd.config.get_hashsize()
    assert str(caught[0].message) in ptd_messages(caplog, logging.WARNING)


def test_a_warning_about_a_captured_variable_is_also_a_warning_record(caplog, ptd_env):
    caplog.set_level(logging.WARNING, logger="persist_to_disk")

    def build():
        @ptd.persistf()
        def guarded(x):
            with lock:
                return x
        lock = threading.Lock()
        return guarded

    guarded = build()
    with pytest.warns(ptd.PersistWarning, match="captured variable 'lock'") as caught:
        guarded(1)
    assert str(caught[0].message) in ptd_messages(caplog, logging.WARNING)


def test_generate_config_logs_where_it_wrote_and_prints_nothing(caplog, capsys, ptd_env):
    caplog.set_level(logging.INFO, logger="persist_to_disk")
    path = ptd.config.generate_config()
    assert capsys.readouterr() == ("", "")
    assert ptd_messages(caplog, logging.INFO) == [f"Settings written to {path}"]


def test_the_library_prints_nothing_on_hits_misses_and_warnings(capsys, ptd_env):
    compute, calls = counting()
    compute(1), compute(1)

    @ptd.persistf()
    def unpicklable(x):
        return threading.Lock()

    with pytest.warns(ptd.PersistWarning):
        unpicklable(1)
    compute.cache_info(), ptd.cache_stats()
    assert capsys.readouterr() == ("", "")
