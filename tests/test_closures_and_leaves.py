"""Issue 9, items 3, 4 and 6.

* 9.4: what a closure captures is keyed as it is at each call (a variable assigned after the
  ``def``, a dict filled after it, a ``nonlocal`` rebinding), and both keying paths agree; a
  captured value another thread changes while it is keyed never fails the call.
* 9.6: a groupby value named like one of a store's own files (``lock.mdb``, ``gen-1``, ...) gets
  an escaped leaf folder, so neither the leaf nor the store above it breaks.
* 9.3: a forked child never inherits a held resolve lock.
"""

import json
import os
import sys
import threading
import warnings
from pathlib import Path

import pytest

import persist_to_disk as ptd
from persist_to_disk import keying
from persist_to_disk.cli import main
from persist_to_disk.engine import POOL
from persist_to_disk.engine.compaction import compact
from persist_to_disk.engine.generations import is_internal_name
from persist_to_disk.keying import call_digest, value_digest
from persist_to_disk.legacy.exporting import export_tree
from persist_to_disk.normalization import escape_folder_name, unescape_folder_name

from conftest import write_module


# =================================================================================================
# 9.4 Closures are keyed as they are at the call
# =================================================================================================
def test_a_variable_assigned_after_the_def_is_keyed_as_the_call_sees_it():
    def build(name):
        @ptd.persistf()
        def predict(x):
            return f"{model}:{x}"
        model = f"weights-of-{name}"
        return predict

    assert build("a")(1) == "weights-of-a:1"
    assert build("b")(1) == "weights-of-b:1"
    assert build("a")(1) == "weights-of-a:1"


def test_a_dict_filled_after_the_def_is_keyed_as_the_call_sees_it():
    def build(name):
        state = {}

        @ptd.persistf()
        def predict(x):
            return f"{state['model']}:{x}"
        state["model"] = f"weights-of-{name}"
        return predict

    assert build("a")(1) == "weights-of-a:1"
    assert build("b")(1) == "weights-of-b:1"


def test_a_captured_dict_changed_between_calls_gives_the_later_call_another_key():
    state = {"model": "a"}

    @ptd.persistf()
    def predict(x):
        return f"{state['model']}:{x}"

    assert predict(1) == "a:1"
    state["model"] = "b"
    assert predict(1) == "b:1"
    state["model"] = "a"
    assert predict(1) == "a:1" and predict.cache_info()["entries"] == 2


def test_a_nonlocal_rebinding_of_an_immutable_value_gives_later_calls_another_key():
    def build():
        scale = 2

        @ptd.persistf()
        def times(x):
            return x * scale

        def set_scale(value):
            nonlocal scale
            scale = value
        return times, set_scale

    times, set_scale = build()
    assert times(5) == 10
    set_scale(3)
    assert times(5) == 15
    set_scale(2)
    assert times(5) == 10 and times.cache_info()["entries"] == 2


def test_a_variable_still_empty_at_the_call_is_left_out_and_keyed_once_assigned():
    def build():
        @ptd.persistf()
        def describe(x, with_label=False):
            return f"{label}:{x}" if with_label else str(x)
        first = describe(1)  # `label` is not assigned yet: no entry, and no error
        label = "L"
        return describe, first

    describe, first = build()
    assert first == "1"
    assert describe.__persisted__.closure_key == (("<closure>label", value_digest("L")),)
    assert describe(1, with_label=True) == "L:1"
    assert describe.cache_info()["entries"] == 2  # with and without the label: two keys


def test_a_recursive_closure_keys_what_it_captures_but_never_itself():
    def build(scale):
        @ptd.persistf()
        def triangle(n):
            return 0 if n == 0 else triangle(n - 1) + n * factor
        factor = scale
        return triangle

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the captured wrapper is skipped, not reported
        assert build(1)(10) == 55
        assert build(2)(10) == 110
        assert [name for name, _ in build(3).__persisted__.closure_key] == ["<closure>factor"]


def test_an_unkeyable_value_assigned_after_the_def_is_reported_at_the_first_call_only():
    def build():
        @ptd.persistf()
        def guarded(x):
            with lock:
                return x
        lock = threading.Lock()
        return guarded

    guarded = build()
    with pytest.warns(ptd.PersistWarning, match="captured variable 'lock' cannot be part"):
        assert guarded(1) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert guarded(1) == 1 and guarded(2) == 2


def test_an_immutable_captured_value_is_keyed_once_and_a_mutable_one_at_every_call(monkeypatch):
    keyed = []
    real = keying.value_digest

    def spy(value):
        keyed.append(type(value).__name__)
        return real(value)

    def build(k, state):
        @ptd.persistf()
        def f(x):
            return (x, k, state["n"])
        return f

    f = build(7, {"n": 1})
    f(1)
    monkeypatch.setattr(keying, "value_digest", spy)
    for _ in range(5):
        f(1)
    assert keyed == ["dict"] * 5


def test_both_keying_paths_give_a_closure_one_digest_after_every_change_and_the_old_one_before():
    """The fast path (keying.CallKeyer, with the captured values read at each call) and the
    general path (call_digest of the key plus ``closure_key``) key a closure alike after every
    change; while the values are those it had at decoration, the digest is the one earlier
    versions computed, so existing caches of closures keep hitting."""
    def build(k, state):
        @ptd.persistf()
        def f(x):
            return (x, k, state["n"])

        def rebind(value):
            nonlocal k
            k = value
        return f, rebind

    state = {"n": 1}
    f, rebind = build(7, state)
    persisted = f.__persisted__

    def general(x):
        key = persisted.normalizer.normalize(persisted.binder.bind((x,), {}))[1]
        return call_digest((), key + persisted.closure_key, "f")

    def fast(x):
        f(x)
        return persisted._keyer.digest((x,), {})

    before = call_digest((), (("x", 1), ("<closure>k", value_digest(7)),
                              ("<closure>state", value_digest({"n": 1}))))
    assert fast(1) == general(1) == before
    digests = {before}
    for change in (lambda: rebind(8), lambda: state.update(n=2), lambda: rebind(None)):
        change()
        assert fast(1) == general(1)
        digests.add(general(1))
    assert len(digests) == 4 and f.cache_info()["entries"] == 4


def test_the_general_path_keys_a_closure_with_groupby_as_the_call_sees_it():
    def build(name):
        @ptd.persistf(groupby=["dataset"])
        def train(dataset, x):
            return f"{dataset}:{model}:{x}"
        model = name
        return train

    assert build("a")("MNIST", 1) == "MNIST:a:1"
    assert build("b")("MNIST", 1) == "MNIST:b:1"
    assert build("b").is_cached("MNIST", 1) and not build("c").is_cached("MNIST", 1)


# --- what the function changes in what it captures, while it runs ----------------------------
def test_a_closure_that_appends_to_its_captured_accumulator_computes_each_call_once():
    """joblib's own tests count computations this way; no skip_kwargs, and nothing to warn."""
    accumulator = list()

    @ptd.persistf()
    def f(x):
        accumulator.append(1)
        return x

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(1) == 1 and f(1) == 1
        assert len(accumulator) == 1
        assert f(2) == 2 and len(accumulator) == 2
        assert f(1) == 1 and f(2) == 2 and len(accumulator) == 2


ACCUMULATOR_JOB = """
import persist_to_disk as ptd

def main():
    accumulator = []

    @ptd.persistf()
    def f(x):
        accumulator.append(x)
        return 10 * x

    results = [f(1), f(1), f(2), f(1), f(3)]
    print(results, accumulator)
"""


def test_a_second_process_finds_what_a_closure_appending_to_its_accumulator_stored(
        ptd_env, python_runner):
    """Results are stored under the key the accumulator had before the run (empty), which is
    what a fresh process starts with: it hits every call and computes nothing."""
    write_module(ptd_env.project, "accumulating.py", ACCUMULATOR_JOB)
    runs = [python_runner("import accumulating; accumulating.main()", timeout=120).stdout
            for _ in range(2)]
    assert runs == ["[10, 10, 20, 10, 30] [1, 2, 3]\n", "[10, 10, 20, 10, 30] []\n"]


def test_a_recursive_closure_counting_its_calls_computes_each_argument_once():
    """Calls made while a run is under way key the list as it was when the run began."""
    calls = []

    @ptd.persistf()
    def fib(n):
        calls.append(n)
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert fib(20) == 6765
    assert sorted(calls) == list(range(21))
    assert fib(20) == 6765 and fib(7) == 13 and len(calls) == 21


def test_a_dict_filled_after_the_def_is_keyed_right_while_the_function_also_writes_to_it():
    def build(name):
        state = {}

        @ptd.persistf()
        def predict(x):
            state.setdefault("runs", []).append(x)
            return f"{state['model']}:{x}"
        state["model"] = f"weights-of-{name}"
        return predict, state

    predict_a, state_a = build("a")
    predict_b, state_b = build("b")
    assert predict_a(1) == "weights-of-a:1" and predict_a(1) == "weights-of-a:1"
    assert predict_b(1) == "weights-of-b:1" and predict_b(1) == "weights-of-b:1"
    assert state_a["runs"] == [1] and state_b["runs"] == [1]


def test_a_captured_dict_the_caller_changes_between_calls_still_recomputes():
    """Only what a run changes is keyed as before the run; the caller's changes are not, even
    when the function changes other values in the same dict."""
    state = {"model": "a"}

    @ptd.persistf()
    def predict(x):
        state["calls"] = state.get("calls", 0) + 1
        return f"{state['model']}:{x}"

    assert predict(1) == "a:1" and predict(1) == "a:1" and state["calls"] == 1
    state["model"] = "b"
    assert predict(1) == "b:1" and state["calls"] == 2
    assert predict(1) == "b:1" and state["calls"] == 2
    state["model"] = "c"
    assert predict(1) == "c:1" and predict(2) == "c:2" and state["calls"] == 4


def test_a_change_the_caller_makes_before_an_uncached_run_is_not_taken_for_the_runs_own():
    state = {"model": "a"}
    log = []

    @ptd.persistf()
    def predict(x):
        log.append(x)
        return f"{state['model']}:{x}"

    assert predict(1) == "a:1"
    state["model"] = "b"
    assert predict(1, cache_switch=ptd.NOCACHE) == "b:1"  # runs, keyed by nothing
    assert predict(1) == "b:1" and predict(1) == "b:1"
    assert log == [1, 1, 1]


def test_what_one_functions_run_changes_still_changes_the_key_of_another_that_captures_it():
    """Aliases belong to the function whose run made the change: for another cached function
    the change is the caller's, and may change its result."""
    def build():
        state = {"model": None}

        @ptd.persistf()
        def load(name):
            state["model"] = name
            return True

        @ptd.persistf()
        def predict(x):
            return f"{state['model']}:{x}"
        return load, predict

    load, predict = build()
    assert predict(1) == "None:1"
    assert load("a") is True and load("a") is True
    assert predict(1) == "a:1"


def test_a_list_the_function_rebinds_to_a_new_object_gives_later_calls_another_key():
    """A rebinding is never aliased: the new object is keyed by its own value."""
    def build():
        seen = []

        @ptd.persistf()
        def f(x):
            nonlocal seen
            seen = seen + [x]
            return x
        return f, lambda: seen

    f, seen = build()
    assert f(1) == 1 and f(1) == 1
    assert seen() == [1, 1]


def test_a_captured_list_the_function_makes_unkeyable_keeps_hitting_without_a_warning():
    held = []

    @ptd.persistf()
    def f(x):
        held.append(threading.Lock())
        return x

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(1) == 1 and f(1) == 1 and f(2) == 2 and f(1) == 1
    assert len(held) == 2


def test_the_states_a_closures_runs_leave_behind_are_remembered_up_to_a_bound(
        monkeypatch, caplog):
    """A long-running process calling with ever new arguments must not grow without limit:
    past ``MAX_ALIASES`` states per variable the oldest alias is dropped (logged at DEBUG),
    and the newest still makes the next call hit."""
    monkeypatch.setattr(keying.CapturedValues, "MAX_ALIASES", 3)
    accumulator = []

    @ptd.persistf()
    def f(x):
        accumulator.append(x)
        return x

    with caplog.at_level("DEBUG", logger="persist_to_disk"):
        for x in range(10):
            assert f(x) == x and f(x) == x
    assert accumulator == list(range(10))
    owner, table = f.__persisted__.captured._aliases[0]
    assert owner is accumulator and len(table) == 3
    assert set(table.values()) == {value_digest([])}
    assert any("dropping the oldest alias" in r.getMessage() for r in caplog.records)
    accumulator.clear()  # the caller's change: keyed by its own value, the first state
    assert f(9) == 9 and accumulator == []


FORK_DURING_A_RUN = r"""
import os, threading, time
import persist_to_disk as ptd

running, finish = threading.Event(), threading.Event()

def make():
    state = {"model": "a"}

    @ptd.persistf()
    def predict(x):
        state["runs"] = state.get("runs", 0) + 1
        if x == 0:
            running.set()
            finish.wait()
        return f"{state['model']}:{x}"
    return predict, state

predict, state = make()
print(predict(1))
worker = threading.Thread(target=predict, args=(0,))
worker.start()
running.wait()
pid = os.fork()
if pid == 0:  # the worker's run never ends here: its start must not key the dict for good
    state["model"] = "b"
    os._exit(0 if predict(1) == "b:1" else 3)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.01)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    status = "hung"
finish.set()
worker.join(30)
print("child:", os.waitstatus_to_exitcode(status) if status != "hung" else status)
"""


def test_a_child_forked_during_another_threads_run_keys_the_callers_later_changes(
        python_runner):
    result = python_runner(FORK_DURING_A_RUN, timeout=120)
    assert result.stdout.splitlines() == ["a:1", "child: 0"], result.stderr


# --- captured values another thread changes while they are keyed ------------------------------
THREAD_FILL = 10000  # entries each run adds: keying the dict then spans several thread switches


def _run_threads(targets, seconds: float = 120) -> None:
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"


def test_a_closure_memoizing_into_a_captured_dict_from_four_threads_returns_every_result():
    """Each run fills the dict while the other threads key it (before their call, as their
    run begins, after it ends): iterating it raised ``dictionary changed size during
    iteration``, also after the function had run, which threw its result away."""
    def make():
        memo = {}

        @ptd.persistf()
        def h(x):
            for k in range(THREAD_FILL):
                memo[(x, k)] = k
            return x * 2
        return h

    h = make()
    results, errors = [], []

    def worker(t):
        def calls():
            for i in range(4):
                try:
                    results.append((t * 10 + i, h(t * 10 + i)))
                except Exception as err:  # noqa: BLE001 (what the test is about)
                    errors.append(repr(err))
        return calls

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ptd.PersistWarning)
        _run_threads([worker(t) for t in range(4)])
    assert errors == []
    expected = [(t * 10 + i, 2 * (t * 10 + i)) for t in range(4) for i in range(4)]
    assert sorted(results) == sorted(expected)


def test_calls_while_a_background_thread_keeps_changing_a_captured_dict_return_right_values():
    config = {"scale": 3}

    @ptd.persistf()
    def scaled(x):
        return x * config["scale"]

    stop = threading.Event()
    errors = []

    def churn():
        i = 0
        while not stop.is_set():
            config[f"tmp{i % 5000}"] = i  # the dict grows and shrinks without a pause
            if i % 3 == 0:
                config.pop(f"tmp{(i * 7) % 5000}", None)
            i += 1

    def caller():
        try:
            for _ in range(2):
                for x in range(50):
                    try:
                        assert scaled(x) == 3 * x
                    except Exception as err:  # noqa: BLE001 (what the test is about)
                        errors.append(repr(err))
        finally:
            stop.set()

    for i in range(5000):  # a dict large enough that keying it spans thread switches
        config[f"tmp{i}"] = i
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch often, as a busy process with many threads does
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ptd.PersistWarning)
            _run_threads([churn, caller])
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


class _AlwaysChanging(dict):
    """A dict whose items can never be read whole, as if another thread changed it at every
    attempt (what a test cannot make happen on demand with a plain dict)."""

    def items(self):
        return self

    def __next__(self):
        raise RuntimeError("dictionary changed size during iteration")

    def __iter__(self):
        return self


def test_a_captured_value_that_never_holds_still_is_computed_without_the_cache_and_warned_once():
    """Keyed without the variable, or by a state half-way through a change, the call could
    return another state's result: it neither reads nor writes the cache."""
    state = _AlwaysChanging(model="a")
    runs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        @ptd.persistf()
        def predict(x):
            runs.append(x)
            return f"{state['model']}:{x}"
        assert predict(1) == "a:1" and predict(1) == "a:1"
        assert predict(1, cache_switch=ptd.CHECKONLY) is False
        assert predict.is_cached(1) is False and predict.forget(1) is False
        with pytest.raises(ptd.CacheMissError, match="'state' kept changing"):
            predict(1, cache_switch=ptd.READONLY)
    assert runs == [1, 1]
    messages = [str(w.message) for w in caught if issubclass(w.category, ptd.PersistWarning)]
    assert len(messages) == 1 and "'state'" in messages[0], messages
    assert "without the cache" in messages[0]
    assert predict.cache_info()["entries"] == 0


class _Prickly:
    """An object whose ``__getattr__`` raises something else than AttributeError (asked for
    ``__wrapped__``, to tell whether it is a layer of the function)."""

    def __init__(self, name):
        self.name = name

    def __getattr__(self, attribute):
        raise RuntimeError(f"no {attribute} here")


def test_a_captured_object_whose_getattr_raises_is_keyed_by_its_state_and_never_fails_the_call():
    def build(name):
        prickly = _Prickly(name)

        @ptd.persistf()
        def f(x):
            return f"{prickly.name}:{x}"
        return f

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build("a")(1) == "a:1" and build("b")(1) == "b:1" and build("a")(1) == "a:1"


# =================================================================================================
# 9.6 Groupby values named like a store's own files
# =================================================================================================
RESERVED = ["lock.mdb", "data.mdb", "locks", "CURRENT", "gen-1", "gen-2", "func.lock",
            "global.lock", "maintenance.lock", "calls.lock", "CURRENT.{pid}.tmp", "x.tmp",
            "%lock.mdb", "%%gen-1"]


def _rows(capsys, folder) -> list:
    code = main(["ls", "--json", str(folder)])
    out, _ = capsys.readouterr()
    assert code == 0
    return json.loads(out)


@pytest.mark.parametrize("value", RESERVED)
def test_a_groupby_value_named_like_a_store_file_gets_a_leaf_of_its_own(ptd_env, capsys, value):
    """The function's folder is a store too (its groupby changed), locked with the ``func``
    scope and compacted: neither it nor the leaf breaks, and both are listed."""
    value = value.format(pid=os.getpid())
    runs = []

    def f(g, x):
        runs.append((g, x))
        return (g, x)

    plain = ptd.persistf(lock_granularity="func", skip_kwargs=["runs"])(f)
    grouped = ptd.persistf(groupby=["g"], lock_granularity="func", skip_kwargs=["runs"])(f)
    folder = Path(plain.cache_folder())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plain("plain", 0) == ("plain", 0)
        assert grouped(value, 1) == (value, 1)
        assert grouped(value, 1) == (value, 1)
        assert plain("plain", 0) == ("plain", 0)
        assert plain("plain", 1) == ("plain", 1)
        assert runs == [("plain", 0), (value, 1), ("plain", 1)]

        POOL.close_all()
        compact(str(folder))  # the function's store: writes CURRENT, makes gen-1, drops gen-0
        compact(str(folder))  # again: makes gen-2, deletes gen-1
        assert grouped(value, 1) == (value, 1) and plain("plain", 1) == ("plain", 1)
        assert len(runs) == 3

    leaf = folder / escape_folder_name(value)
    assert leaf.name == ("%" + value if is_internal_name(value.lstrip("%")) else value)
    listed = {row["path"] for row in _rows(capsys, ptd_env.persist)}
    assert listed == {str(folder), str(leaf)}


def test_ordinary_groupby_values_keep_the_folder_names_of_earlier_versions():
    for text in ["MNIST", "20", "1.5", "gen-x", "generation-1", "lock", "mdb", "x.lock.bak",
                 "CURRENT2", "current", "locks2", "%", "50%", "%d", "a$$b", ".hidden", "none"]:
        assert escape_folder_name(text) == text
    for text in ["lock.mdb", "gen-1", "CURRENT", "locks", "a.tmp", "%lock.mdb", "%%%CURRENT"]:
        folder = escape_folder_name(text)
        assert folder == "%" + text and not is_internal_name(folder)
        assert unescape_folder_name(folder) == text
    assert unescape_folder_name("%plain") == "%plain"


def test_every_name_the_engine_makes_in_a_store_or_project_folder_is_an_internal_name(ptd_env):
    """The rule that keeps leaves off store files holds only if every file or folder the engine
    makes next to a store's data matches ``is_internal_name``: the store, each lock scope and
    compaction, here; a new name that does not match fails this test."""
    made = set()
    for scope in ("call", "func", "global"):
        @ptd.persistf(lock_granularity=scope)
        def f(x):
            return x

        f(1), f(2), f(1)
        POOL.close_all()
        folder = Path(f.cache_folder())
        compact(str(folder))
        compact(str(folder))
        made |= {path.name for path in folder.iterdir()}
        made |= {path.name for path in folder.parent.iterdir() if path != folder}
        f.clear()
    project_root = Path(f.__persisted__.project_root)
    made |= {path.name for path in project_root.iterdir() if not path.is_dir()}
    assert made and [name for name in sorted(made) if not is_internal_name(name)] == []


def test_an_escaped_leaf_is_exported_to_the_folder_0_0_7_reads(ptd_env, tmp_path):
    @ptd.persistf(groupby=["g"])
    def f(g, x):
        return x

    f("lock.mdb", 1), f("%gen-1", 2), f("MNIST", 3)
    source = Path(f.cache_folder()).parent
    report = export_tree(str(source), str(tmp_path / "legacy"))
    assert report.exported == 3
    folders = sorted(p.parent.name for p in (tmp_path / "legacy").rglob("*.pkl"))
    assert folders == ["%gen-1", "MNIST", "lock.mdb"]


# =================================================================================================
# 9.3 Fork while another thread holds a function's resolve lock
# =================================================================================================
FORK_WHILE_RESOLVING = r"""
import os, sys, threading, time
import persist_to_disk as ptd

def wait_for(pid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.002)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "hung"

def child(call):
    try:
        code = 0 if call() is not None else 3
    except BaseException:
        code = 4
    os._exit(code)

@ptd.persistf()
def double(x):
    return 2 * x

# 1. Deterministic: a thread holds the resolve lock (as during a first call) across the fork.
held, release = threading.Event(), threading.Event()
def hold():
    with double.__persisted__._resolve_lock:
        held.set()
        release.wait()
holder = threading.Thread(target=hold)
holder.start()
held.wait()
pid = os.fork()
if pid == 0:
    child(lambda: double(21))
print("held:", wait_for(pid, 10))
release.set()
holder.join()

# 2. First calls of fresh functions in a thread while the main thread forks.
latest = [double]
stop = threading.Event()
def first_calls():
    i = 0
    while not stop.is_set():
        def make(i):
            @ptd.persistf()
            def fresh(x):
                return x + i
            return fresh
        function = make(i)
        latest[0] = function
        function(i)
        i += 1
caller = threading.Thread(target=first_calls)
caller.start()
outcomes = []
for k in range(FORKS):
    pid = os.fork()
    if pid == 0:
        child(lambda: latest[0](k))
    outcomes.append(wait_for(pid, 10))
    if outcomes[-1] == "hung":
        break
stop.set()
caller.join()
print("racing:", sorted(set(outcomes), key=str))
"""


def test_a_child_forked_while_another_thread_holds_the_resolve_lock_calls_without_hanging(
        python_runner):
    result = python_runner(FORK_WHILE_RESOLVING.replace("FORKS", "150"), timeout=300)
    assert result.stdout.splitlines() == ["held: 0", "racing: [0]"], result.stderr
