"""The decorator and the wrapper it returns, as a user sees them.

* The wrapper looks like the function it wraps (name, docstring, qualname, module, signature),
  pickles by reference (so multiprocessing finds it), and ``@ptd.persistf`` works with or
  without parentheses, on functions and methods. A ``staticmethod``/``classmethod`` object is
  refused with a message saying where the decorator belongs.
* It carries tools to look at and clear its cache: ``cache_folder()``, ``cache_info()``,
  ``is_cached(...)``, ``forget(...)``, ``clear()`` and ``uncached`` (the original function).
* Options are validated when decorating, with a ``ConfigError`` (a ``ValueError``) naming the
  problem, before anything is written to disk.
* ``groupby`` values become folder names; a value that cannot be one folder name is refused,
  naming the argument, and no folder is created.
"""

import inspect
import pickle
from pathlib import Path

import pytest

import persist_to_disk as ptd
from helpers import counting, files_under, store_folders


# --- module-level functions and classes (pickling and methods need importable names) ---------

plain_calls = []


@ptd.persistf()
def documented(dataset: str, lr: float = 0.1, *, epochs: int = 3) -> dict:
    """Train on ``dataset`` (docstring kept by the wrapper)."""
    plain_calls.append((dataset, lr, epochs))
    return {"dataset": dataset, "lr": lr, "epochs": epochs}


def _undecorated(dataset: str, lr: float = 0.1, *, epochs: int = 3) -> dict:
    """Train on ``dataset`` (docstring kept by the wrapper)."""


bare_calls = []


@ptd.persistf
def decorated_bare(x):
    bare_calls.append(x)
    return x * 10


method_calls = []


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    @ptd.persistf()
    def scale(self, x):
        method_calls.append((self.factor, x))
        return self.factor * x


# --- the wrapper looks like the function ------------------------------------------------------

def test_wrapper_keeps_name_doc_qualname_and_module():
    assert documented.__name__ == "documented"
    assert documented.__qualname__ == "documented"
    assert documented.__doc__ == _undecorated.__doc__
    assert documented.__module__ == __name__


def test_wrapper_keeps_the_signature():
    assert inspect.signature(documented) == inspect.signature(_undecorated)
    assert str(inspect.signature(documented)) == \
        "(dataset: str, lr: float = 0.1, *, epochs: int = 3) -> dict"


def test_wrapper_pickles_by_reference():
    assert pickle.loads(pickle.dumps(documented)) is documented
    assert pickle.loads(pickle.dumps(decorated_bare)) is decorated_bare


def test_defaults_positional_and_keyword_spellings_are_one_call():
    plain_calls.clear()
    documented("mnist")
    documented("mnist", 0.1)
    documented(dataset="mnist", lr=0.1, epochs=3)
    assert plain_calls == [("mnist", 0.1, 3)]


def test_bare_decorator_without_parentheses_caches():
    bare_calls.clear()
    assert decorated_bare(4) == 40
    assert decorated_bare(4) == 40
    assert bare_calls == [4]
    assert decorated_bare.is_cached(4) is True


def test_decorating_a_method_caches_by_the_state_of_self():
    method_calls.clear()
    assert Scaler(3).scale(2) == 6
    assert Scaler(3).scale(2) == 6, "an equal instance is the same call"
    assert Scaler(4).scale(2) == 8, "a different instance state is a different call"
    assert method_calls == [(3, 2), (4, 2)]
    assert Scaler.scale.is_cached(Scaler(3), 2) is True
    assert Scaler.scale.cache_folder().endswith("Scaler.scale")


@pytest.mark.parametrize("wrap", [staticmethod, classmethod])
def test_decorating_a_staticmethod_or_classmethod_object_raises_a_clear_typeerror(ptd_env, wrap):
    def helper(x):
        return x

    with pytest.raises(TypeError, match="staticmethod") as raised:
        ptd.persistf()(wrap(helper))
    assert "@persistf" in str(raised.value)
    with pytest.raises(TypeError, match="staticmethod"):
        ptd.persistf(wrap(helper))
    assert files_under(ptd_env.tmp / "ptd_home") == []


def test_persistf_below_staticmethod_works():
    calls = []

    class Tools:
        @staticmethod
        @ptd.persistf()
        def double(x):
            calls.append(x)
            return 2 * x

    assert Tools.double(5) == 10
    assert Tools().double(5) == 10
    assert calls == [5]


# --- inspecting the cache ---------------------------------------------------------------------

def test_cache_folder_is_under_the_persist_path_and_named_after_the_function(ptd_env):
    compute, _ = counting()
    folder = Path(compute.cache_folder())
    assert ptd_env.persist in folder.parents
    assert folder.name.endswith("compute")
    assert not folder.exists(), "asking where the cache is creates nothing"
    compute(1)
    assert folder.is_dir()
    assert store_folders(ptd_env.persist) == [folder]


def test_cache_info_counts_entries_leaves_versions_and_bytes():
    compute, _ = counting()
    empty = compute.cache_info()
    assert (empty["entries"], empty["leaves"], empty["versions"], empty["file_bytes"]) == \
        (0, 0, 0, 0)
    compute(1)
    compute(2)
    compute(2, cache_switch=ptd.RECACHE)
    info = compute.cache_info()
    assert info["entries"] == 2
    assert info["leaves"] == 1
    assert info["versions"] == 3
    assert info["file_bytes"] > 0
    assert info["folder"] == compute.cache_folder()


def test_cache_info_counts_groupby_leaves():
    calls = []

    @ptd.persistf(groupby=["dataset"])
    def train(dataset, seed):
        calls.append((dataset, seed))
        return seed

    train("mnist", 1)
    train("mnist", 2)
    train("cifar", 1)
    info = train.cache_info()
    assert (info["leaves"], info["entries"]) == (2, 3)
    assert sorted(p.name for p in store_folders(train.cache_folder())) == ["cifar", "mnist"]


def test_is_cached_never_computes():
    compute, calls = counting()
    assert compute.is_cached(1) is False
    compute(1)
    assert compute.is_cached(1) is True
    assert compute.is_cached(x=1) is True
    assert compute.is_cached(2) is False
    assert calls == [1]


@pytest.mark.parametrize("mode", [ptd.NOCACHE, ptd.RECACHE, ptd.READONLY])
def test_is_cached_never_computes_even_with_a_decorator_level_mode(mode):
    compute, calls = counting(cache=mode)
    assert compute.is_cached(1) is False
    assert calls == []


def test_is_cached_reports_a_result_stored_under_decorator_level_recache():
    compute, calls = counting(cache=ptd.RECACHE)
    compute(1)
    assert compute.is_cached(1) is True
    assert calls == [1]


# --- forgetting and clearing ------------------------------------------------------------------

def test_forget_appends_a_tombstone_and_the_next_call_recomputes():
    compute, calls = counting()
    compute(1)
    compute(2)
    assert compute.forget(1) is True
    assert compute.is_cached(1) is False
    assert compute.is_cached(2) is True
    info = compute.cache_info()
    assert info["entries"] == 1
    assert info["versions"] == 3, "forget appends a tombstone; nothing is rewritten"
    assert compute.forget(1) is False, "nothing left to forget"
    assert compute(1) == (1, 3)
    assert compute(1) == (1, 3)
    assert calls == [1, 2, 1]


def test_forget_accepts_the_mode_keyword_and_ignores_it():
    compute, _ = counting()
    compute(1)
    assert compute.forget(1, cache_switch=ptd.CACHE) is True
    assert compute.is_cached(1) is False


def test_forget_of_a_call_never_made_is_false_and_creates_nothing(ptd_env):
    compute, _ = counting()
    assert compute.forget(1) is False
    assert store_folders(ptd_env.persist) == []


def test_clear_removes_every_entry_and_returns_how_many():
    compute, calls = counting()
    for x in (1, 2, 3):
        compute(x)
    compute.forget(3)
    assert compute.clear() == 2, "live entries removed (the forgotten one was not live)"
    assert compute.cache_info()["entries"] == 0
    assert [compute.is_cached(x) for x in (1, 2, 3)] == [False, False, False]
    assert compute(1) == (1, 4)
    assert compute(2) == (2, 5)
    assert compute.clear() == 2


def test_clear_covers_every_groupby_leaf():
    calls = []

    @ptd.persistf(groupby=["dataset"])
    def train(dataset, seed):
        calls.append((dataset, seed))
        return len(calls)

    train("mnist", 1)
    train("mnist", 2)
    train("cifar", 1)
    assert train.clear() == 3
    assert train.cache_info()["entries"] == 0
    train("mnist", 1)
    train("mnist", 2)
    train("cifar", 1)
    assert len(calls) == 6, "every call computes again after clear()"


def test_clear_of_an_empty_cache_returns_zero(ptd_env):
    compute, _ = counting()
    assert compute.clear() == 0
    assert store_folders(ptd_env.persist) == []


def test_uncached_calls_the_original_function_and_stores_nothing(ptd_env):
    compute, calls = counting()
    assert compute.uncached(7) == (7, 1)
    assert compute.uncached(7) == (7, 2)
    assert compute.is_cached(7) is False
    assert store_folders(ptd_env.persist) == []
    assert inspect.unwrap(compute) is compute.uncached


# --- decoration-time validation ---------------------------------------------------------------

def _two_args(a, b):
    return a + b


def _with_cache_switch(x, cache_switch=1):
    return x


def _with_mode(x, mode=1):
    return x


INVALID_OPTIONS = [
    pytest.param(_two_args, dict(groupby=["nope"]), r"groupby.*'nope'.*not a parameter",
                 id="groupby-unknown"),
    pytest.param(_two_args, dict(groupby=[("a", "nope")]), r"groupby.*'nope'",
                 id="groupby-tuple-unknown"),
    pytest.param(_two_args, dict(skip_kwargs=["nope"]), r"skip_kwargs.*'nope'.*not a parameter",
                 id="skip_kwargs-unknown"),
    pytest.param(_two_args, dict(expand_dict_kwargs=["nope"]),
                 r"expand_dict_kwargs.*'nope'.*not a parameter", id="expand_dict_kwargs-unknown"),
    pytest.param(_two_args, dict(groupby=["a"], skip_kwargs=["a"]), r"'a'.*more than one",
                 id="groupby-and-skip"),
    pytest.param(_two_args, dict(skip_kwargs=["b"], expand_dict_kwargs=["b"]),
                 r"'b'.*more than one", id="skip-and-expand"),
    pytest.param(_two_args, dict(groupby=["a", "a"]), r"'a'.*more than one",
                 id="groupby-twice"),
    pytest.param(_two_args, dict(lock_granularity="sometimes"), r"lock_granularity.*sometimes",
                 id="lock_granularity"),
    pytest.param(_two_args, dict(hashsize=0), r"hashsize.*0", id="hashsize-0"),
    pytest.param(_two_args, dict(hashsize=-1), r"hashsize.*-1", id="hashsize-negative"),
    pytest.param(_two_args, dict(hashsize="x"), r"hashsize.*'x'", id="hashsize-text"),
    pytest.param(_two_args, dict(hash_size=0), r"hashsize.*0", id="hash_size-0"),
    pytest.param(_two_args, dict(hashsize=10, hash_size=20), r"hashsize=10.*hash_size=20.*disagree",
                 id="hashsize-disagree"),
    pytest.param(_two_args, dict(hash_method="md5"), r"hash_method.*'md5'", id="hash_method"),
    pytest.param(_with_cache_switch, {}, r"parameter named 'cache_switch'.*switch_kwarg",
                 id="parameter-named-cache_switch"),
    pytest.param(_with_mode, dict(switch_kwarg="mode"), r"parameter named 'mode'",
                 id="parameter-named-custom-switch"),
    pytest.param(_two_args, dict(lock_timeout=-1), r"lock_timeout.*-1", id="lock_timeout"),
    pytest.param(_two_args, dict(durability="eventually"), r"durability.*eventually",
                 id="durability"),
    # issue 5 (bad input): more wrong types and values
    pytest.param(_two_args, dict(switch_kwarg=""), r"switch_kwarg.*''", id="switch_kwarg-empty"),
    pytest.param(_two_args, dict(switch_kwarg=5), r"switch_kwarg.*5", id="switch_kwarg-int"),
    pytest.param(_two_args, dict(cache=7), r"cache.*7", id="cache-7"),
    pytest.param(_two_args, dict(cache="x"), r"cache.*'x'", id="cache-text"),
    pytest.param(_two_args, dict(hashsize=True), r"hashsize.*True", id="hashsize-bool"),
    pytest.param(_two_args, dict(hashsize=2 ** 40), r"hashsize.*1099511627776",
                 id="hashsize-too-big"),
    pytest.param(_two_args, dict(hashsize=1.5), r"hashsize.*1.5", id="hashsize-fraction"),
    pytest.param(_two_args, dict(hashsize=float("inf")), r"hashsize.*inf", id="hashsize-inf"),
    pytest.param(_two_args, dict(lock_timeout="soon"), r"lock_timeout.*'soon'",
                 id="lock_timeout-text"),
    pytest.param(_two_args, dict(durability=""), r"durability.*''", id="durability-empty"),
    pytest.param(_two_args, dict(groupby=[1]), r"groupby.*1", id="groupby-not-a-name"),
    pytest.param(_two_args, dict(groupby=[("a", 1)]), r"groupby.*1", id="groupby-tuple-int"),
    pytest.param(_two_args, dict(skip_kwargs=[None]), r"skip_kwargs.*None", id="skip-none"),
    pytest.param(_two_args, dict(expand_dict_kwargs=5), r"expand_dict_kwargs.*5",
                 id="expand-int"),
    pytest.param(_two_args, dict(groupby=[()]), r"groupby.*\(\)", id="groupby-empty-tuple"),
    pytest.param(_two_args, dict(local="no"), r"local.*'no'", id="local-text"),
    pytest.param(_two_args, dict(lock_timeout=float("nan")), r"lock_timeout.*nan",
                 id="lock_timeout-nan"),
]


@pytest.mark.parametrize("func, options, message", INVALID_OPTIONS)
def test_invalid_options_raise_configerror_at_decoration_and_write_nothing(
        ptd_env, func, options, message):
    before = files_under(ptd_env.tmp)
    with pytest.raises(ptd.ConfigError, match=message) as raised:
        ptd.persistf(**options)(func)
    assert isinstance(raised.value, ValueError)
    assert func.__qualname__ in str(raised.value), "the message names the decorated function"
    assert files_under(ptd_env.tmp) == before


def test_names_of_extra_keyword_arguments_are_allowed_with_var_kwargs(ptd_env):
    calls = []

    @ptd.persistf(groupby=["dataset"], skip_kwargs=["verbose"], expand_dict_kwargs=["model"])
    def train(seed, **kwargs):
        calls.append(seed)
        return seed

    train(1, dataset="mnist", verbose=True, model={"width": 8})
    train(1, dataset="mnist", verbose=False, model={"width": 8})
    assert calls == [1]
    assert [p.name for p in store_folders(ptd_env.persist)] == ["mnist"]


def test_hash_size_alone_is_accepted_as_the_seed_spells_it():
    compute, _ = counting(hash_size=7)
    assert compute.__persisted__.options.hashsize == 7
    compute(1)
    assert compute.__persisted__.hashsize == 7
    _, bucket, _, _ = compute.__persisted__.locate((1,), {})
    assert 0 <= bucket < 7


def test_hashsize_and_hash_size_may_both_be_given_when_they_agree():
    compute, _ = counting(hashsize=11, hash_size=11)
    assert compute.__persisted__.options.hashsize == 11


def test_a_parameter_named_cache_switch_is_fine_with_another_switch_kwarg():
    @ptd.persistf(switch_kwarg="mode")
    def uses_cache_switch(x, cache_switch=0):
        return (x, cache_switch)

    assert uses_cache_switch(1, cache_switch=5) == (1, 5)
    assert uses_cache_switch.is_cached(1, cache_switch=5) is True
    assert uses_cache_switch.is_cached(1) is False


# --- groupby values must be folder names ------------------------------------------------------

@pytest.mark.parametrize("value", ["", ".", "..", "a/b", "a\0b", "x" * 300],
                         ids=["empty", "dot", "dotdot", "slash", "nul", "300-chars"])
def test_a_groupby_value_that_is_not_a_folder_name_is_refused(ptd_env, value):
    calls = []

    @ptd.persistf(groupby=["dataset"])
    def train(dataset, seed):
        calls.append(seed)
        return seed

    with pytest.raises(ptd.ConfigError, match="dataset"):
        train(value, 1)
    assert calls == []
    assert files_under(ptd_env.persist) == [], "no folder is created for a refused value"


def test_a_tuple_group_whose_joined_name_is_not_a_folder_name_is_refused(ptd_env):
    @ptd.persistf(groupby=[("dataset", "split")])
    def train(dataset, split, seed):
        return seed

    with pytest.raises(ptd.ConfigError, match=r"dataset\$\$split"):
        train("mnist", "train/val", 1)
    assert files_under(ptd_env.persist) == []


def test_ordinary_groupby_values_become_nested_folders(ptd_env):
    @ptd.persistf(groupby=["dataset", "epochs"])
    def train(dataset, lr, epochs):
        return lr

    train("MNIST", 0.1, 20)
    train("MNIST", 0.1, 10)
    train("CIFAR10", 0.1, 30)
    root = Path(train.cache_folder())
    assert sorted(p.relative_to(root).as_posix() for p in store_folders(root)) == \
        ["CIFAR10/30", "MNIST/10", "MNIST/20"]
