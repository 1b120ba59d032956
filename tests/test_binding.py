"""From a call to its key: binding and normalisation, as persist-to-disk 0.0.7 did them.

DESIGN.md, "The call, step by step", step 1: the arguments are bound to parameter names (defaults
filled in, positional and keyword forms alike), ``skip_kwargs`` dropped, dicts named in
``expand_dict_kwargs`` (or every dict, with ``'all'``) expanded into ``"arg|sub"`` entries,
``groupby`` values popped into folder names, and the rest sorted into the key tuple. So:

* every spelling of one call (``f(1)``, ``f(a=1)``, ``f(1, b=<default>)``) is one cache entry;
* ``*args``, ``**kwargs`` and keyword-only parameters are part of the key;
* a call Python would reject raises Python's own ``TypeError`` and computes nothing;
* expansion and groupby shape the key and the folders, but two different calls never share a
  result (where 0.0.7's expansion is ambiguous the dict is kept whole; groupby values ``1`` and
  ``"1"`` share the folder ``1`` but not a result).
"""

import inspect

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import persist_to_disk as ptd
from helpers import files_under, store_folders
from persist_to_disk.binding import CallBinder
from persist_to_disk.normalization import Normalizer

CALLS = []


@pytest.fixture(autouse=True)
def _fresh_calls():
    CALLS.clear()
    yield


def computed(*record):
    """Note one computation; return its number (1, 2, ...), so a wrong hit shows."""
    CALLS.append(record)
    return len(CALLS)


def key_tuple(func, args=(), kwargs=None, **options):
    """The key tuple persist_to_disk builds for ``func(*args, **kwargs)`` with ``options``."""
    binder = CallBinder(func)
    normalizer = Normalizer(options.get("skip_kwargs", ()),
                            options.get("expand_dict_kwargs", ()), options.get("groupby", ()))
    return normalizer.normalize(binder.bind(tuple(args), dict(kwargs or {})))


# --- defaults, positional and keyword forms ---------------------------------------------------

DEFAULT_B = [10, 20]


@ptd.persistf()
def plain(a, b=DEFAULT_B, c=None):
    return computed("plain", a, b, c)


def test_positional_keyword_and_explicit_default_forms_are_one_call():
    assert plain(1) == 1
    assert plain(a=1) == 1
    assert plain(1, DEFAULT_B) == 1
    assert plain(1, b=[10, 20]) == 1  # an equal default, built afresh
    assert plain(c=None, b=DEFAULT_B, a=1) == 1
    assert plain(1, [10, 20], None) == 1
    assert len(CALLS) == 1


def test_a_value_other_than_the_default_is_another_call():
    assert plain(1) == 1
    assert plain(1, [10, 21]) == 2
    assert plain(1, c=0) == 3
    assert plain(2) == 4
    assert plain(a=1, c=None) == 1


def test_the_key_tuple_is_sorted_name_value_pairs_with_defaults_filled_in():
    assert key_tuple(plain.uncached, (1,), {"c": 3}) == (
        (), (("a", 1), ("b", DEFAULT_B), ("c", 3)))


@ptd.persistf()
def with_extras(a, **options):
    return computed("with_extras", a, options)


def test_extra_keyword_arguments_are_part_of_the_key_in_any_order():
    assert with_extras(1) == 1
    assert with_extras(1, lr=0.1) == 2
    assert with_extras(1, lr=0.2) == 3
    assert with_extras(1, momentum=0.1) == 4
    assert with_extras(1, lr=0.1, momentum=0.9) == 5
    assert with_extras(1, momentum=0.9, lr=0.1) == 5
    assert with_extras(a=1, lr=0.1) == 2
    assert len(CALLS) == 5


@ptd.persistf()
def with_rest(a, *rest):
    return computed("with_rest", a, rest)


def test_extra_positional_arguments_are_part_of_the_key():
    assert with_rest(1) == 1
    assert with_rest(1, 2) == 2
    assert with_rest(1, 2, 3) == 3
    assert with_rest(1, 3, 2) == 4
    assert with_rest(1, (2,)) == 5
    assert with_rest(1, 2) == 2
    assert with_rest(a=1) == 1


@ptd.persistf()
def rest_and_options(a, *args, **kwargs):
    return computed("rest_and_options", a, args, kwargs)


def test_star_args_and_a_keyword_named_like_them_are_different_calls():
    """``f(1, 5)`` puts 5 in ``*args``; ``f(1, args=(5,))`` puts a tuple in ``**kwargs``."""
    assert rest_and_options(1, 5) == 1
    assert rest_and_options(1, args=(5,)) == 2
    assert CALLS == [("rest_and_options", 1, (5,), {}),
                     ("rest_and_options", 1, (), {"args": (5,)})]


@ptd.persistf()
def keyword_only(a, *, mode="fast", seed):
    return computed("keyword_only", a, mode, seed)


def test_keyword_only_parameters_are_keyed_with_their_defaults():
    assert keyword_only(1, seed=0) == 1
    assert keyword_only(1, seed=0, mode="fast") == 1
    assert keyword_only(seed=0, a=1) == 1
    assert keyword_only(1, seed=0, mode="slow") == 2
    assert keyword_only(1, seed=1) == 3
    assert len(CALLS) == 3


@ptd.persistf()
def positional_only(a, b=2, /, c=3):
    return computed("positional_only", a, b, c)


def test_positional_only_parameters_are_keyed_like_the_others():
    assert positional_only(1) == 1
    assert positional_only(1, 2) == 1
    assert positional_only(1, 2, c=3) == 1
    assert positional_only(1, 2, 3) == 1
    assert positional_only(1, 5) == 2
    assert len(CALLS) == 2


@ptd.persistf()
def positional_only_and_options(a, /, **options):
    return computed("positional_only_and_options", a, options)


def test_a_positional_only_name_may_also_arrive_as_an_extra_keyword():
    """Valid Python: ``f(1, a=2)`` binds ``a=1`` and ``options={'a': 2}``."""
    assert positional_only_and_options.uncached(1, a=2) == 1
    CALLS.clear()
    assert positional_only_and_options(1, a=2) == 1
    assert positional_only_and_options(1) == 2
    assert positional_only_and_options(2) == 3
    assert positional_only_and_options(1, a=2) == 1


# --- invalid calls ----------------------------------------------------------------------------

INVALID_CALLS = [
    ("missing a required argument", plain, (), {}),
    ("too many positional arguments", plain, (1, 2, 3, 4), {}),
    ("unexpected keyword", plain, (1,), {"d": 4}),
    ("two values for one argument", plain, (1,), {"a": 1}),
    ("missing a keyword-only argument", keyword_only, (1,), {}),
    ("keyword-only passed positionally", keyword_only, (1, "fast"), {"seed": 0}),
    ("positional-only passed by keyword", positional_only, (), {"a": 1}),
    ("two values through *args", with_rest, (1,), {"a": 2}),
]


@pytest.mark.parametrize("func, args, kwargs", [case[1:] for case in INVALID_CALLS],
                         ids=[case[0] for case in INVALID_CALLS])
def test_a_call_python_rejects_raises_pythons_own_type_error(func, args, kwargs, ptd_env):
    with pytest.raises(TypeError) as native:
        func.uncached(*args, **kwargs)
    with pytest.raises(TypeError) as inspected:
        inspect.signature(func.uncached).bind(*args, **kwargs)
    with pytest.raises(TypeError) as raised:
        func(*args, **kwargs)
    assert type(raised.value) is TypeError  # not an UnkeyableArgumentError or other wrapper
    assert str(raised.value) in (str(native.value), str(inspected.value))
    assert CALLS == []
    assert not ptd_env.persist.exists(), files_under(ptd_env.persist)


# --- skip_kwargs ------------------------------------------------------------------------------


@ptd.persistf(skip_kwargs=["verbose", "device"])
def train(data, lr=0.1, verbose=False, device="cpu"):
    return computed("train", data, lr)


def test_skipped_arguments_do_not_change_the_key():
    assert train([1, 2]) == 1
    assert train([1, 2], verbose=True) == 1
    assert train([1, 2], 0.1, True, "cuda:1") == 1
    assert train([1, 2], device="cuda:0") == 1
    assert train([1, 2], lr=0.2, verbose=True) == 2
    assert len(CALLS) == 2


@ptd.persistf(skip_kwargs=["log"])
def train_with_options(data, **options):
    return computed("train_with_options", data, options.get("lr"))


def test_a_skipped_extra_keyword_does_not_change_the_key():
    assert train_with_options(1, lr=0.1) == 1
    assert train_with_options(1, lr=0.1, log=print) == 1  # skipped: not even keyed
    assert train_with_options(1, lr=0.1, log=lambda message: None) == 1
    assert train_with_options(1, lr=0.2, log=print) == 2


def test_skipped_arguments_are_left_out_of_the_key_tuple():
    groups, key = key_tuple(train.uncached, ([1],), {"verbose": True},
                            skip_kwargs=("verbose", "device"))
    assert key == (("data", [1]), ("lr", 0.1))


# --- expand_dict_kwargs -----------------------------------------------------------------------


@ptd.persistf(expand_dict_kwargs=["config"])
def expand_named(data, config=None):
    return computed("expand_named", data, config)


@ptd.persistf(expand_dict_kwargs="all")
def expand_all(data, config=None, extra=None):
    return computed("expand_all", data, config, extra)


@pytest.mark.parametrize("func", [expand_named, expand_all], ids=["list", "all"])
def test_expanded_dicts_hit_in_any_order_and_any_call_form(func):
    assert func(1, {"lr": 0.1, "layers": {"n": 2, "width": 64}}) == 1
    assert func(1, config={"layers": {"width": 64, "n": 2}, "lr": 0.1}) == 1
    assert func(data=1, config={"lr": 0.1, "layers": {"n": 2, "width": 64}}) == 1
    assert func(1, {"lr": 0.1, "layers": {"n": 2, "width": 65}}) == 2
    assert func(1, {"lr": 0.1}) == 3
    assert func(1) == 4
    assert len(CALLS) == 4


def test_expansion_gives_0_0_7_style_names():
    assert key_tuple(expand_named.uncached, (1, {"lr": 0.1, "opt": {"m": 0.9}}),
                     expand_dict_kwargs=("config",)) == (
        (), (("config|lr", 0.1), ("config|opt", {"m": 0.9}), ("data", 1)))
    assert key_tuple(expand_all.uncached, (1, {"lr": 0.1, "opt": {"m": 0.9}}),
                     expand_dict_kwargs="all") == (
        (), (("config|lr", 0.1), ("config|opt|m", 0.9), ("data", 1), ("extra", None)))


@pytest.mark.parametrize("func", [expand_named, expand_all], ids=["list", "all"])
def test_dicts_whose_keys_differ_only_in_type_never_share_a_result(func):
    assert func(1, {1: "x"}) == 1
    assert func(1, {"1": "x"}) == 2
    assert func(1, {True: "x"}) == 3
    assert func(1, {1: "x"}) == 1


@pytest.mark.parametrize("func", [expand_named, expand_all], ids=["list", "all"])
def test_keys_containing_the_separator_never_collide_with_nesting(func):
    assert func(1, {"a|b": 1}) == 1
    assert func(1, {"a": {"b": 1}}) == 2
    assert func(1, {"a": {"b": 1}, "a|b": 1}) == 3
    assert func(1, {"a|b": 1}) == 1


@pytest.mark.parametrize("func", [expand_named, expand_all], ids=["list", "all"])
def test_empty_dicts_are_calls_of_their_own(func):
    assert func(1, {}) == 1
    assert func(1) == 2  # config=None
    assert func(1, {"a": {}}) == 3
    assert func(1, {"b": {}}) == 4
    assert func(1, {"a": {}, "b": {}}) == 5
    assert func(1, {}) == 1


@ptd.persistf(expand_dict_kwargs=["config"])
def expand_with_options(config, **options):
    return computed("expand_with_options", config, options)


def test_an_expanded_dict_and_an_extra_keyword_spelled_like_its_entry_never_collide():
    """``config={'a': 1, 'b': 2}`` and ``config={'b': 2}`` plus ``**{'config|a': 1}`` are
    different calls (the function sees different arguments), so they must not share a result.
    With expansion on, names containing '|' are reserved: such a keyword is refused, naming it,
    instead of being answered with the other call's result."""
    assert expand_with_options({"a": 1, "b": 2}) == 1
    with pytest.raises(ptd.UnkeyableArgumentError, match=r"'config\|a'"):
        expand_with_options({"b": 2}, **{"config|a": 1})
    assert expand_with_options({"a": 1, "b": 2}) == 1


# --- groupby ----------------------------------------------------------------------------------


@ptd.persistf(groupby=["dataset"])
def by_dataset(dataset, x):
    return computed("by_dataset", dataset, x)


def test_groupby_values_1_and_text_1_share_a_folder_but_not_a_result():
    assert by_dataset(1, "x") == 1
    assert by_dataset("1", "x") == 2
    assert by_dataset(1.0, "x") == 3  # folder "1.0"
    assert by_dataset(1, "x") == 1
    assert by_dataset("1", "x") == 2
    folder = by_dataset.cache_folder()
    leaves = store_folders(folder)
    assert [leaf.relative_to(folder).as_posix() for leaf in leaves] == ["1", "1.0"]


def test_groupby_value_is_not_repeated_in_the_key_tuple():
    groups, key = key_tuple(by_dataset.uncached, ("mnist", 3), groupby=("dataset",))
    assert groups == ("mnist",)
    assert key == (("x", 3),)


@ptd.persistf(groupby=[("model", "size")])
def by_model_and_size(model, size, x=0):
    return computed("by_model_and_size", model, size, x)


def test_tuple_groups_join_with_dollars_and_never_mix_up_results():
    assert by_model_and_size("a$$b", "c") == 1
    assert by_model_and_size("a", "b$$c") == 2  # the same folder name: a$$b$$c
    assert by_model_and_size(model="a$$b", size="c") == 1
    assert by_model_and_size("a", "b$$c") == 2
    folder = by_model_and_size.cache_folder()
    assert [leaf.relative_to(folder).as_posix() for leaf in store_folders(folder)] == ["a$$b$$c"]


# --- property: every spelling of a call is one key ----------------------------------------------

ARGUMENT_VALUES = st.recursive(
    st.one_of(st.integers(-3, 3), st.floats(), st.text(max_size=4), st.booleans(), st.none(),
              st.binary(max_size=3)),
    lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    | st.frozensets(st.integers(0, 5), max_size=3),
    max_leaves=8)

DEFAULT_Y = ("y", 0)
DEFAULT_Z = {"z": [0.5]}


@ptd.persistf()
def spelled(x, y=DEFAULT_Y, *, z=DEFAULT_Z, **extra):
    return computed("spelled", x, y, z, extra)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=ARGUMENT_VALUES, y=ARGUMENT_VALUES, extra=st.dictionaries(
    st.sampled_from(["p", "q", "r", "s"]), ARGUMENT_VALUES, max_size=3), data=st.data())
def test_every_spelling_of_a_random_call_is_one_cache_entry(x, y, extra, data):
    first = spelled(x, y, **extra)
    computations = len(CALLS)
    reordered = dict(data.draw(st.permutations(list(extra.items()))))
    spellings = [
        lambda: spelled(x=x, y=y, **extra),
        lambda: spelled(x, y=y, z=DEFAULT_Z, **reordered),
        lambda: spelled(**reordered, y=y, x=x),
        lambda: spelled(x, y, z={"z": [0.5]}, **extra),
    ]
    for spelling in spellings:
        assert spelling() == first
    assert len(CALLS) == computations  # none of them computed again

    assert spelled(x, **extra) == spelled(x, DEFAULT_Y, **reordered) == spelled(
        x=x, y=("y", 0), z=DEFAULT_Z, **extra)
