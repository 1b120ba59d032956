"""How a call becomes a cache key: stable, exact, and refusing what cannot be keyed.

The decorator digests each call's key tuple with a canonical encoding (``keying.py``). These
tests pin down what that promises (DESIGN.md, "The call, step by step", step 2):

* **Stable.** The same call has the same digest in every process and every run, whatever the
  ``PYTHONHASHSEED`` (set iteration order), dict insertion order or pickle memo identity. A
  result computed in one process is a hit in the next one.
* **Exact.** Values Python calls equal but that are different calls (``1``, ``1.0``, ``True``)
  never share a result; different numpy arrays never collide (a ``repr`` would: it is truncated
  past 1,000 elements); equal dicts and equal sets do share one.
* **Broad.** Lists, dicts, sets, numpy arrays, dataclasses, enums, paths, datetimes and
  ``argparse.Namespace`` are accepted (0.0.7 rejected unhashable arguments), and a method hits
  for another instance in the same state.
* **Honest.** An argument with no stable key (a lambda, a lock, an open file, a cycle, a local
  function) raises :class:`UnkeyableArgumentError` (a ``TypeError``) naming the argument, before
  anything is written to disk.

Subprocess checks run a fresh interpreter with a fixed, different hash seed each, so they are
deterministic and each one is able to fail.
"""

import argparse
import collections
import dataclasses
import datetime
import enum
import functools
import json
import math
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import textwrap
import threading
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import persist_to_disk as ptd
from helpers import files_under
from persist_to_disk.keying import call_digest, encode_value

# --- shared pieces ---------------------------------------------------------------------------

REMEMBER_CALLS = []


@ptd.persistf()
def remember(value):
    """Records each computation; the result is the computation's number (1, 2, ...)."""
    REMEMBER_CALLS.append(value)
    return len(REMEMBER_CALLS)


DESCRIBE_CALLS = []


@ptd.persistf()
def describe(value):
    """Returns what it was computed with, so a wrong hit is visible in the result."""
    DESCRIBE_CALLS.append(value)
    return (type(value).__name__, repr(value))


@pytest.fixture(autouse=True)
def _fresh_counters():
    REMEMBER_CALLS.clear()
    DESCRIBE_CALLS.clear()
    SCALE_CALLS.clear()
    USES_CALLS.clear()
    yield


def digest_of(value):
    """The digest of a call with one argument named ``value``."""
    return call_digest((), (("value", value),))


def assert_nothing_written(env):
    assert not env.persist.exists(), files_under(env.persist)
    assert not (env.home / "project_to_pids.txt").exists()
    assert files_under(env.home) == []


# --- 1. the same call, the same digest, in every process ---------------------------------------

# Values built the same way in this process and in fresh interpreters. Pairs named "... a" and
# "... b" are equal values whose pickles differ (insertion order, memo identity): one digest.
TRAP_VALUES_SOURCE = '''
import pickle
words = [f"w{i}" for i in range(30)]
shared = "".join(["sp", "am"])
VALUES = {
    "frozenset of strings": frozenset(words),
    "set of strings": set(words),
    "set of tuples": {(w, i) for i, w in enumerate(words)},
    "dict order a": {w: i for i, w in enumerate(words)},
    "dict order b": {w: i for i, w in reversed(list(enumerate(words)))},
    "memo a": (shared, shared, [shared]),
    "memo b": ("".join(["sp", "am"]), "".join(["sp", "am"]), ["".join(["sp", "am"])]),
    "nested": {"outer": [{"tags": set(words[:7])}, ({"k": frozenset({("t", 1), ("u", 2)})},)],
               "scores": {3.5: None, -0.0: b"x", 7: [True, None]}},
    "dict of sets": {w: {w + "x", w + "y", w + "z"} for w in words[:10]},
}
PICKLE_OF_SET = pickle.dumps(VALUES["set of strings"]).hex()
'''

DIGEST_PRINTER = TRAP_VALUES_SOURCE + '''
import json
from persist_to_disk.keying import call_digest
print(json.dumps({"digests": {name: call_digest((), (("value", value),)).hex()
                              for name, value in VALUES.items()},
                  "pickle_of_set": PICKLE_OF_SET}))
'''


def test_traps_for_pickle_based_keys_are_real():
    """The equal pairs below really pickle differently: a pickled key would miss for them."""
    namespace = {}
    exec(TRAP_VALUES_SOURCE, namespace)
    values = namespace["VALUES"]
    assert values["dict order a"] == values["dict order b"]
    assert pickle.dumps(values["dict order a"]) != pickle.dumps(values["dict order b"])
    assert values["memo a"] == values["memo b"]
    assert pickle.dumps(values["memo a"]) != pickle.dumps(values["memo b"])


def test_equal_values_that_pickle_differently_have_one_digest():
    namespace = {}
    exec(TRAP_VALUES_SOURCE, namespace)
    values = namespace["VALUES"]
    assert digest_of(values["dict order a"]) == digest_of(values["dict order b"])
    assert digest_of(values["memo a"]) == digest_of(values["memo b"])


def test_digests_are_identical_in_fresh_interpreters_with_other_hash_seeds(python_runner):
    namespace = {}
    exec(TRAP_VALUES_SOURCE, namespace)
    here = {name: digest_of(value).hex() for name, value in namespace["VALUES"].items()}

    first = json.loads(python_runner(DIGEST_PRINTER, hash_seed="1").stdout)
    second = json.loads(python_runner(DIGEST_PRINTER, hash_seed="2").stdout)

    # The two interpreters really iterate the set in different orders ...
    assert first["pickle_of_set"] != second["pickle_of_set"]
    # ... and still agree with each other and with this process on every digest.
    assert first["digests"] == here
    assert second["digests"] == here


CROSS_PROCESS_MODULE = '''
import os
import persist_to_disk as ptd

LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "computations.log")


@ptd.persistf()
def summarize(value, options=None):
    with open(LOG, "a") as handle:
        handle.write("computed\\n")
    with open(LOG) as handle:
        return len(handle.read().splitlines())  # the computation's number
'''

CROSS_PROCESS_DRIVER = '''
import json
import cross_process_calls as m
words = [f"w{i}" for i in range(30)]
shared = "".join(["sp", "am"])
CALLS = [
    ((set(words),), {}),
    ((frozenset(words),), {"options": {"mode": "fast", "tags": set(words[:5])}}),
    (({w: i for i, w in enumerate(words)},), {}),
    ((), {"value": [shared, shared, {"k": shared}]}),
    (({"nested": [{"s": set(words[:9])}, (frozenset({("a", 1)}),)]},), {}),
    ((1,), {}), ((1.0,), {}), ((True,), {}),
]
print(json.dumps([m.summarize(*args, **kwargs) for args, kwargs in CALLS]))
'''


def test_a_result_computed_in_one_process_is_a_hit_in_the_next(python_runner, ptd_env):
    (ptd_env.project / "cross_process_calls.py").write_text(CROSS_PROCESS_MODULE)
    log = ptd_env.project / "computations.log"

    first = json.loads(python_runner(CROSS_PROCESS_DRIVER, hash_seed="11").stdout)
    assert first == list(range(1, 9))  # eight different calls, each computed once
    assert len(log.read_text().splitlines()) == 8

    # The same calls, built afresh (dicts in the same order, sets in another hash order).
    second = json.loads(python_runner(CROSS_PROCESS_DRIVER, hash_seed="12345").stdout)
    assert second == first
    assert len(log.read_text().splitlines()) == 8  # nothing computed again


# --- 2. types stay distinct; equal dicts and sets are one call ----------------------------------

DISTINCT_VALUES = [
    1, 1.0, True, "1", b"1", bytearray(b"1"), 1 + 0j, [1], (1,), {1}, frozenset({1}), {1: 1},
    0, 0.0, -0.0, False, None, "", b"", [], (), set(), frozenset(), {},
    [1.0], [True], (True,), {"a": 1}, {"a": 1.0}, {"a": True}, {1: "a"}, {1.0: "a"}, {True: "a"},
    float("inf"), float("nan"), [[1]], [(1,)], ((1,),), "None", "True",
]


def test_values_python_calls_equal_but_of_other_types_have_distinct_digests():
    digests = [digest_of(value) for value in DISTINCT_VALUES]
    assert len(set(digests)) == len(DISTINCT_VALUES)
    # What a dict- or hash()-based key would merge:
    assert 1 == 1.0 == True and [1] == [1.0] == [True] and {1: "a"} == {True: "a"}  # noqa: E712


def test_one_int_float_and_bool_never_return_each_others_result():
    results = [describe(value) for value in (1, 1.0, True, "1", b"1", [1], (1,))]
    assert results == [("int", "1"), ("float", "1.0"), ("bool", "True"), ("str", "'1'"),
                       ("bytes", "b'1'"), ("list", "[1]"), ("tuple", "(1,)")]
    again = [describe(value) for value in (True, (1,), 1.0, [1], b"1", 1, "1")]
    assert again == [("bool", "True"), ("tuple", "(1,)"), ("float", "1.0"), ("list", "[1]"),
                     ("bytes", "b'1'"), ("int", "1"), ("str", "'1'")]
    assert len(DESCRIBE_CALLS) == 7  # the second round was all hits


def test_equal_dicts_built_in_another_order_are_one_call():
    first = {"lr": 0.1, "layers": [64, 32], "name": "mlp"}
    second = {"name": "mlp", "layers": [64, 32], "lr": 0.1}
    assert list(first) != list(second)
    assert digest_of(first) == digest_of(second)
    assert remember(first) == remember(second) == 1
    assert len(REMEMBER_CALLS) == 1


def test_equal_sets_are_one_call():
    first = {f"item{i}" for i in range(50)}
    second = set(sorted(first, reverse=True))
    assert digest_of(first) == digest_of(second)
    assert digest_of(frozenset(first)) == digest_of(frozenset(second))
    assert remember(first) == remember(second) == 1
    assert len(REMEMBER_CALLS) == 1


# --- 3. arguments 0.0.7 rejected ------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: int


@dataclasses.dataclass(frozen=True)
class Segment:
    start: Point
    end: Point
    label: str = ""


class Color(enum.Enum):
    RED = 1
    GREEN = 2


UTC = datetime.timezone.utc

# (name, the value, an equal value built afresh, a different value)
ACCEPTED = [
    ("list", lambda: [1, [2, 3], "x"], lambda: [1, [2, 3], "x"], lambda: [1, [2, 4], "x"]),
    ("dict", lambda: {"lr": 0.1, "layers": [64, 32]},
     lambda: {"layers": [64, 32], "lr": 0.1}, lambda: {"lr": 0.2, "layers": [64, 32]}),
    ("set", lambda: {"a", "b", "c"}, lambda: {"c", "b", "a"}, lambda: {"a", "b", "d"}),
    ("frozenset", lambda: frozenset({1, 2}), lambda: frozenset({2, 1}), lambda: frozenset({1})),
    ("numpy array of 2000 floats, one middle element differs",
     lambda: np.arange(2000.0), lambda: np.arange(2000.0),
     lambda: np.where(np.arange(2000) == 1000, -1.0, np.arange(2000.0))),
    ("numpy array, other dtype", lambda: np.arange(10, dtype=np.int64),
     lambda: np.arange(10, dtype=np.int64), lambda: np.arange(10, dtype=np.int32)),
    ("numpy array, strided view vs contiguous copy", lambda: np.arange(20)[::2],
     lambda: np.ascontiguousarray(np.arange(20)[::2]), lambda: np.arange(10)),
    ("numpy array, Fortran vs C order", lambda: np.asfortranarray(np.arange(6).reshape(2, 3)),
     lambda: np.arange(6).reshape(2, 3), lambda: np.arange(6).reshape(3, 2)),
    ("numpy scalar", lambda: np.float32(1.5), lambda: np.float32(1.5), lambda: np.float64(1.5)),
    ("dataclass", lambda: Point(1, 2), lambda: Point(1, 2), lambda: Point(1, 3)),
    ("nested frozen dataclass", lambda: Segment(Point(0, 0), Point(1, 1), "s"),
     lambda: Segment(Point(0, 0), Point(1, 1), "s"), lambda: Segment(Point(0, 0), Point(1, 1))),
    ("enum", lambda: Color.RED, lambda: Color(1), lambda: Color.GREEN),
    ("pathlib.Path", lambda: pathlib.Path("data/train.csv"),
     lambda: pathlib.Path("data") / "train.csv", lambda: pathlib.Path("data/test.csv")),
    ("aware vs naive datetime", lambda: datetime.datetime(2024, 1, 2, 3, 4, tzinfo=UTC),
     lambda: datetime.datetime(2024, 1, 2, 3, 4, tzinfo=UTC),
     lambda: datetime.datetime(2024, 1, 2, 3, 4)),
    ("date", lambda: datetime.date(2024, 1, 2), lambda: datetime.date(2024, 1, 2),
     lambda: datetime.date(2024, 1, 3)),
    ("timedelta", lambda: datetime.timedelta(hours=1), lambda: datetime.timedelta(minutes=60),
     lambda: datetime.timedelta(hours=2)),
    ("argparse.Namespace", lambda: argparse.Namespace(lr=0.1, epochs=3),
     lambda: argparse.Namespace(lr=0.1, epochs=3), lambda: argparse.Namespace(lr=0.2, epochs=3)),
]


@pytest.mark.parametrize("make, make_equal, make_different",
                         [case[1:] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED])
def test_argument_kinds_0_0_7_rejected_are_keyed_and_hit(make, make_equal, make_different):
    assert remember(make()) == 1
    assert remember(make_equal()) == 1  # an equal value built afresh: a hit
    assert remember(make_different()) == 2  # a different value: its own result
    assert remember(make()) == 1
    assert remember(make_different()) == 2
    assert len(REMEMBER_CALLS) == 2


def test_large_arrays_whose_truncated_reprs_agree_get_different_digests():
    first = np.arange(2000.0)
    second = first.copy()
    second[1000] = -1.0
    assert repr(first) == repr(second)  # what a repr-based key would see
    assert digest_of(first) != digest_of(second)


def test_array_digests_depend_on_dtype_and_shape_not_memory_layout():
    values = np.arange(12, dtype=np.int64)
    assert digest_of(values) != digest_of(values.astype(np.float64))
    assert digest_of(values) != digest_of(values.astype(np.int32))
    assert digest_of(values.reshape(3, 4)) != digest_of(values.reshape(4, 3))
    assert digest_of(values.reshape(3, 4)) != digest_of(values)
    assert digest_of(values.reshape(3, 4).T) == digest_of(values.reshape(3, 4).T.copy())
    assert digest_of(values[::-1]) == digest_of(np.ascontiguousarray(values[::-1]))
    assert digest_of(np.float64(1.0)) != digest_of(1.0)


def test_aware_and_naive_datetimes_have_different_digests():
    naive = datetime.datetime(2024, 5, 6, 7, 8, 9)
    assert digest_of(naive) != digest_of(naive.replace(tzinfo=UTC))
    assert digest_of(naive.replace(tzinfo=UTC)) == digest_of(naive.replace(tzinfo=UTC))


def test_namespaces_differing_only_in_list_or_tuple_values_do_not_share_a_result():
    from_list = argparse.Namespace(sizes=[1, 2])
    from_tuple = argparse.Namespace(sizes=(1, 2))
    assert describe(from_list) == ("Namespace", "Namespace(sizes=[1, 2])")
    assert describe(from_tuple) == ("Namespace", "Namespace(sizes=(1, 2))")


def test_namespaces_differing_in_dict_key_types_do_not_share_a_result():
    int_keys = argparse.Namespace(weights={1: 0.5})
    str_keys = argparse.Namespace(weights={"1": 0.5})
    assert describe(int_keys) == ("Namespace", "Namespace(weights={1: 0.5})")
    assert describe(str_keys) == ("Namespace", "Namespace(weights={'1': 0.5})")


def test_a_namespace_and_a_string_equal_to_its_json_do_not_share_a_result():
    namespace = argparse.Namespace(lr=1)
    text = json.dumps(vars(namespace))
    assert describe(namespace) == ("Namespace", "Namespace(lr=1)")
    assert describe(text) == ("str", repr(text))


def test_equal_namespaces_with_attributes_set_in_another_order_are_one_call():
    first = argparse.Namespace(lr=0.1, epochs=3)
    second = argparse.Namespace(epochs=3, lr=0.1)
    assert first == second
    assert remember(first) == remember(second) == 1


NUMPY_FREE_RUN = '''
import sys
import persist_to_disk as ptd
assert "numpy" not in sys.modules, "importing persist_to_disk imported numpy"

@ptd.persistf()
def combine(a, b=None, **extra):
    return [a, b, extra]

combine(1, [2.5, "x"], flag=True)
combine({"k": {1, 2}}, b=(b"x", None))
combine(frozenset("ab"), options={"nested": [1.0, float("nan")]})
assert combine(1, [2.5, "x"], flag=True) == [1, [2.5, "x"], {"flag": True}]
assert "numpy" not in sys.modules, "keying plain arguments imported numpy"
print("numpy-free")
'''


def test_keying_plain_arguments_never_imports_numpy(python_runner):
    assert python_runner(NUMPY_FREE_RUN).stdout.strip() == "numpy-free"


# --- 4. methods: keyed by the state of self ---------------------------------------------------

SCALE_CALLS = []


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    @ptd.persistf()
    def scale(self, x):
        SCALE_CALLS.append((self.factor, x))
        return self.factor * x


def test_a_method_hits_for_another_instance_in_the_same_state():
    assert Scaler(3).scale(5) == 15
    assert Scaler(3).scale(5) == 15
    assert SCALE_CALLS == [(3, 5)]


def test_a_method_misses_after_the_state_of_self_changes():
    scaler = Scaler(3)
    assert scaler.scale(5) == 15
    scaler.factor = 4
    assert scaler.scale(5) == 20
    scaler.factor = 3
    assert scaler.scale(5) == 15
    assert SCALE_CALLS == [(3, 5), (4, 5)]


USES_CALLS = []


@ptd.persistf()
def uses(getter):
    USES_CALLS.append(getter)
    return getter()


class Holder:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


def test_bound_methods_of_instances_in_different_states_never_share_a_result():
    """A bound method carries its ``self``: keying it by its name alone would return one
    instance's result for another's. Either key it with ``self`` or refuse it."""
    try:
        first = uses(Holder(1).get)
        second = uses(Holder(2).get)
    except ptd.UnkeyableArgumentError:
        return
    assert (first, second) == (1, 2)


# --- 5. unkeyable arguments: a clear error, and nothing on disk --------------------------------

CALLBACK_CALLS = []


@ptd.persistf()
def run_with(data, callback=None):
    CALLBACK_CALLS.append(data)
    return data


def _self_referencing_list():
    items = [1, 2]
    items.append(items)
    return items


def _local_function():
    def helper(x):
        return x
    return helper


UNKEYABLE = [
    ("lambda", lambda tmp: (lambda x: x)),
    ("lock", lambda tmp: threading.Lock()),
    ("open file", lambda tmp: open(tmp / "some_file.txt", "w")),
    ("self-referencing list", lambda tmp: _self_referencing_list()),
    ("locally defined function", lambda tmp: _local_function()),
    ("lock inside a dict", lambda tmp: {"guard": threading.Lock()}),
    ("generator", lambda tmp: (i for i in range(3))),
]


@pytest.mark.parametrize("make", [case[1] for case in UNKEYABLE],
                         ids=[case[0] for case in UNKEYABLE])
def test_unkeyable_argument_raises_a_type_error_naming_it_and_writes_nothing(make, ptd_env):
    CALLBACK_CALLS.clear()
    value = make(ptd_env.tmp)
    try:
        with pytest.raises(ptd.UnkeyableArgumentError) as raised:
            run_with([1, 2], callback=value)
    finally:
        if hasattr(value, "close"):
            value.close()
    assert isinstance(raised.value, TypeError)
    assert "'callback'" in str(raised.value)
    assert "run_with" in str(raised.value)
    assert CALLBACK_CALLS == []
    assert_nothing_written(ptd_env)


def test_unkeyable_positional_argument_is_named_by_its_parameter(ptd_env):
    with pytest.raises(TypeError, match="'data'"):
        run_with(threading.Lock())
    assert_nothing_written(ptd_env)


@ptd.persistf(groupby=["dataset"])
def grouped(dataset, x):
    return x


def test_unkeyable_groupby_argument_is_named_by_its_parameter(ptd_env):
    with pytest.raises(ptd.UnkeyableArgumentError) as raised:
        grouped(lambda: "mnist", 1)
    assert "'dataset'" in str(raised.value)
    assert_nothing_written(ptd_env)


def test_a_keyable_call_still_works_after_an_unkeyable_one(ptd_env):
    with pytest.raises(ptd.UnkeyableArgumentError):
        run_with([1], callback=threading.Lock())
    assert run_with([1], callback=len) == [1]
    assert run_with([1], callback=len) == [1]
    assert CALLBACK_CALLS == [[1]]


# --- 7. properties over random nested arguments -----------------------------------------------

FLOAT_CORNERS = [0.0, -0.0, 1.0, -1.0, 0.5, float("inf"), float("-inf"), float("nan"),
                 -float("nan"), 1e-310, 2.0 ** 53]


def _values(scalars):
    hashable = st.recursive(
        scalars,
        lambda inner: st.tuples(inner, inner) | st.lists(inner, max_size=3).map(tuple)
        | st.frozensets(inner, max_size=3),
        max_leaves=6)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(hashable, inner, max_size=4) | st.sets(hashable, max_size=4)
        | st.frozensets(hashable, max_size=4),
        max_leaves=16)


WIDE_SCALARS = st.one_of(
    st.integers(), st.floats(), st.sampled_from(FLOAT_CORNERS), st.text(max_size=6),
    st.binary(max_size=6), st.booleans(), st.none())

# Few distinct leaves, so that the sample is full of near-twins (1 / 1.0 / True, 0.0 / -0.0,
# {'a'} / frozenset({'a'}), [x] / (x,), ...): where a lax encoding would collide.
NARROW_SCALARS = st.one_of(
    st.integers(0, 2), st.sampled_from([0.0, -0.0, 1.0, 2.0, float("nan")]),
    st.text("a1", max_size=2), st.binary(max_size=1), st.booleans(), st.none())


def _collect(strategy, count):
    """``count`` examples drawn by hypothesis (reproducibly), to check in one batch."""
    drawn = []

    @settings(max_examples=count, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def draw(value):
        drawn.append(value)

    draw()
    return drawn


def test_random_nested_arguments_have_the_same_digest_in_a_fresh_interpreter(python_runner,
                                                                             ptd_env):
    samples = _collect(_values(WIDE_SCALARS), 250)
    samples += _collect(_values(st.text(max_size=3)), 80)  # sets of strings: seed-ordered
    path = ptd_env.tmp / "samples.pickle"
    path.write_bytes(pickle.dumps(samples))  # sets are rebuilt in the child's hash order
    here = [digest_of(value).hex() for value in samples]

    code = f'''
import json, pickle
from persist_to_disk.keying import call_digest
with open({str(path)!r}, "rb") as handle:
    samples = pickle.load(handle)
print(json.dumps([call_digest((), (("value", v),)).hex() for v in samples]))
'''
    there = json.loads(python_runner(code, hash_seed="314159").stdout)
    mismatches = [samples[i] for i in range(len(samples)) if here[i] != there[i]]
    assert mismatches == []


def canonical(value):
    """The identity a key must respect, as a comparable tree: the exact type of every value,
    floats by their bits (``-0.0`` is not ``0.0``; every NaN is the same NaN), dicts and sets as
    order-free collections. Python's ``==`` is too lax (``1 == 1.0 == True``) for a cache key."""
    kind = type(value)
    if kind is float:
        return ("float", "nan" if math.isnan(value) else struct.pack("<d", value))
    if kind in (int, bool, str, bytes, type(None)):
        return (kind.__name__, value)
    if kind in (list, tuple):
        return (kind.__name__, tuple(canonical(item) for item in value))
    if kind is dict:
        pairs = [(canonical(k), canonical(v)) for k, v in value.items()]
        return ("dict", tuple(sorted(pairs, key=repr)))
    if kind in (set, frozenset):
        return (kind.__name__, tuple(sorted((canonical(item) for item in value), key=repr)))
    raise AssertionError(f"unexpected type {kind}")


TWINS = [1, 1.0, True, 0, 0.0, -0.0, False, float("nan"), "1", b"1", None, [1], (1,), [True],
         {1}, frozenset({1}), {True}, {1: None}, {1.0: None}, {True: None}, {"a": 1},
         {"a": True}, {"a": 1.0}, [], (), {}, set(), frozenset(), [[]], [()], ((),), [{}],
         {float("nan")}, {float("nan"): 0}, [float("nan"), -0.0], [float("nan"), 0.0]]

_SCALAR_SWAPS = {
    "int to float": lambda v: float(v) if type(v) is int and abs(v) < 2 ** 53 else v,
    "int to bool": lambda v: bool(v) if type(v) is int and v in (0, 1) else v,
    "bool to int": lambda v: int(v) if type(v) is bool else v,
    "float to int": lambda v: int(v) if type(v) is float and v.is_integer() else v,
    "-0.0 to 0.0": lambda v: 0.0 if type(v) is float and v == 0 else v,
    "str to bytes": lambda v: v.encode() if type(v) is str else v,
}
_CONTAINER_SWAPS = {"list to tuple": {list: tuple, tuple: list},
                    "set to frozenset": {set: frozenset, frozenset: set}}


def _swapped(value, scalar=None, containers=None):
    """``value`` with one kind of near-twin swap applied everywhere inside it."""
    kind = type(value)
    if kind in (list, tuple, set, frozenset):
        items = [_swapped(item, scalar, containers) for item in value]
        return (containers or {}).get(kind, kind)(items)
    if kind is dict:
        return {_swapped(k, scalar, containers): _swapped(v, scalar, containers)
                for k, v in value.items()}
    return scalar(value) if scalar else value


def near_twins(value):
    """Values a lax key would confuse with ``value``: same shape, one kind of type swapped."""
    twins = []
    for swap in _SCALAR_SWAPS.values():
        try:
            twins.append(_swapped(value, scalar=swap))
        except TypeError:  # a swap made a set element or dict key unhashable
            pass
    for swap in _CONTAINER_SWAPS.values():
        try:
            twins.append(_swapped(value, containers=swap))
        except TypeError:
            pass
    return twins


def test_distinct_random_structures_never_share_an_encoding():
    drawn = TWINS + _collect(_values(NARROW_SCALARS), 500)
    samples = drawn + [twin for value in drawn for twin in near_twins(value)]
    by_encoding = defaultdict(set)
    by_identity = defaultdict(set)
    for value in samples:
        encoding = encode_value(value)
        identity = canonical(value)
        by_encoding[encoding].add(identity)
        by_identity[identity].add(encoding)
    collisions = [ids for ids in by_encoding.values() if len(ids) > 1]
    unstable = [encs for encs in by_identity.values() if len(encs) > 1]
    assert collisions == []
    assert unstable == []
    # The sample did exercise what Python's == merges: values equal in Python, distinct keys.
    merged_by_python = sum(1 for a in samples[:1000] for b in samples[:1000]
                           if a == b and canonical(a) != canonical(b))
    assert merged_by_python > 100
    assert len(by_identity) > 1000


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values(WIDE_SCALARS))
def test_a_random_argument_hits_when_passed_again_as_an_equal_copy(value):
    """Through the decorator: an equal copy (a pickle round trip rebuilds dicts and sets) hits
    and returns the result computed for the original."""
    first = describe(value)
    before = len(DESCRIBE_CALLS)
    assert describe(pickle.loads(pickle.dumps(value))) == first
    assert len(DESCRIBE_CALLS) == before


# --- values whose equality Python defines more strictly than a plain dict or dataclass ------------

def test_ordered_dicts_in_different_orders_are_different_calls():
    """``OrderedDict`` equality includes the order, so the key must too."""
    first = collections.OrderedDict([("x", 1), ("y", 2)])
    second = collections.OrderedDict([("y", 2), ("x", 1)])
    assert first != second
    assert encode_value(first) != encode_value(second)
    assert encode_value(first) == encode_value(collections.OrderedDict([("x", 1), ("y", 2)]))


@dataclasses.dataclass
class _BaseRun:
    lr: float


class _RunWithEpochs(_BaseRun):
    """A plain subclass adding state outside the dataclass fields."""

    def __init__(self, lr, epochs):
        super().__init__(lr)
        self.epochs = epochs


def test_state_a_dataclass_subclass_adds_is_part_of_the_key():
    assert encode_value(_RunWithEpochs(0.1, 99)) != encode_value(_RunWithEpochs(0.1, 10))
    assert encode_value(_RunWithEpochs(0.1, 10)) == encode_value(_RunWithEpochs(0.1, 10))


def test_spawn_workers_key_classes_of_the_main_script_like_the_parent(ptd_env):
    """In a spawn worker the main script is ``__mp_main__``; a dataclass defined there must key
    as it does in the parent, or the parent misses what its workers computed."""
    script = ptd_env.project / "spawned.py"
    script.write_text(textwrap.dedent("""
        import dataclasses, multiprocessing
        import persist_to_disk as ptd

        @dataclasses.dataclass(frozen=True)
        class Cfg:
            lr: float

        @ptd.persistf()
        def train(cfg):
            return cfg.lr * 10

        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                pool.map(train, [Cfg(0.1), Cfg(0.2)])
            print(train.is_cached(Cfg(0.1)), train.is_cached(Cfg(0.2)))
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_TO_DISK_")}
    env["PERSIST_TO_DISK_HOME"] = str(ptd_env.home)
    result = subprocess.run([sys.executable, str(script)], cwd=str(ptd_env.project), env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


@dataclasses.dataclass(frozen=True)
class _WithDerived:
    n: int

    @functools.cached_property
    def double(self):
        return 2 * self.n


def test_a_dataclass_keys_the_same_whether_or_not_a_cached_property_was_read():
    read = _WithDerived(3)
    assert read.double == 6
    assert encode_value(read) == encode_value(_WithDerived(3))
