"""The seam between the decorator and storage (issue 11).

The decorator reaches storage only through the settings' storage tier (``config.storage()``,
built from one ``EngineSettings`` object): the tier opens a leaf's store having checked the
folder itself, walks the stores under a folder with the same walk ``ptd ls`` uses, and reports
failed writes as engine errors that the decorator turns into a warning with a remedy. The
decorator's options are listed once (``persist_to_disk.options.PersistOptions``), and
``persistf``'s signature and docstring are made from that list.
"""

import dataclasses
import inspect
import os
import warnings
from pathlib import Path

import pytest

import persist_to_disk as ptd
from helpers import store_folders
from persist_to_disk.engine import ForeignFolderError, UntrustedFolderError


# =================================================================================================
# 1. The function's stores are the ones the engine's walk finds
# =================================================================================================
#: What the functions made by ``_compute_with`` computed (a global, not a captured variable:
#: what a closure captures is part of its key).
CALLS = []


def _compute_with(groupby):
    """One function (one folder) decorated with ``groupby``, as before and after an edit;
    ``CALLS`` is emptied."""
    CALLS.clear()

    @ptd.persistf(groupby=groupby)
    def compute(x, leaf):
        CALLS.append((x, leaf))
        return x

    return compute


def test_cache_info_clear_and_is_cached_see_the_stores_of_every_groupby_the_function_had():
    """A store written before ``groupby`` was added sits in the function's folder, and the
    grouped leaves below it: ``ptd ls`` and ``ptd clear`` see both, and so must the
    function's own ``cache_info()``, ``clear()`` and ``is_cached()``."""
    before = _compute_with(None)
    before(1, "a")
    after = _compute_with(["leaf"])
    after(2, "a")
    assert before.cache_folder() == after.cache_folder()
    assert len(store_folders(after.cache_folder())) == 2, "what ptd ls sees"

    info = after.cache_info()
    assert (info["leaves"], info["entries"]) == (2, 2)
    assert after.is_cached(2, "a") and before.is_cached(1, "a")

    assert after.clear() == 2
    assert not after.is_cached(2, "a"), "clear() left the grouped result"
    assert not before.is_cached(1, "a")
    assert after.cache_info()["entries"] == 0
    assert after(2, "a") == 2 and CALLS == [(2, "a"), (2, "a")]


def test_a_hit_builds_no_call_place_only_a_miss_does(monkeypatch):
    """A call's place in storage is one named value (``CallPlace``) through the miss path;
    the hit path takes its parts as they are, so that a hit allocates nothing for it."""
    from persist_to_disk import call

    compute = _compute_with(None)
    assert compute(1, "a") == 1

    def forbidden(*args, **kwargs):
        raise AssertionError("a CallPlace was built")

    monkeypatch.setattr(call, "CallPlace", forbidden)
    assert compute(1, "a") == 1 and CALLS == [(1, "a")], "a hit"
    with pytest.raises(AssertionError, match="CallPlace was built"):
        compute(2, "a")  # a miss builds one: the patch is in effect


# =================================================================================================
# 2. The store checks its own folder, before the function computes
# =================================================================================================
def _make_a_file(leaf):
    leaf.parent.mkdir(parents=True, exist_ok=True)
    leaf.write_text("not a folder")


def _make_writable_by_others(leaf):
    leaf.mkdir(parents=True)
    leaf.chmod(0o777)


def _make_a_folder_of_007_buckets(leaf):
    leaf.mkdir(parents=True)
    (leaf / "3.pkl").write_bytes(b"0.0.7's bucket file")


@pytest.mark.parametrize("make, error, message", [
    pytest.param(_make_a_file, ForeignFolderError, "is a file", id="a file"),
    pytest.param(_make_writable_by_others, UntrustedFolderError, "bad", id="untrusted"),
    pytest.param(_make_a_folder_of_007_buckets, ForeignFolderError, r"\.pkl bucket files",
                 id="0.0.7 buckets"),
])
def test_a_leaf_the_store_refuses_fails_the_call_before_computing(make, error, message):
    compute = _compute_with(["leaf"])
    leaf = os.path.join(compute.cache_folder(), "bad")
    make(Path(leaf))

    with pytest.raises(error, match=message):
        compute(1, "bad")
    assert CALLS == [], "refused before the function computed"
    with pytest.raises(error, match=message):  # the storage tier checks it, not the decorator
        ptd.config.storage().open_store(leaf)
    assert compute(1, "good") == 1 and CALLS == [(1, "good")]


# =================================================================================================
# 3. A failed write is a warning with the remedy, and the result is returned
# =================================================================================================
def test_a_full_disk_warns_with_the_remedy_and_returns_the_result(small_disk, python_runner):
    """Run in a child: a full disk under LMDB must not be able to take the test process
    with it."""
    result = python_runner(f"""
        import warnings
        import persist_to_disk as ptd
        from helpers import fill_up

        ptd.config.set_persist_path({str(small_disk / "cache")!r})
        calls = []

        @ptd.persistf()
        def big(x):
            calls.append(x)
            return bytes([x]) * (1 << 20)

        assert big(1) == bytes([1]) * (1 << 20)
        fill_up({str(small_disk / "filler")!r})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            right = big(2) == bytes([2]) * (1 << 20) and big(3) == bytes([3]) * (1 << 20)
            hit = big(1) == bytes([1]) * (1 << 20)
        messages = [str(w.message) for w in caught if issubclass(w.category, ptd.PersistWarning)]
        print(right, hit, calls)
        print(len(messages))
        print(messages[0] if messages else "")
        """, extra_env={"PYTHONPATH": os.path.dirname(__file__)}, timeout=120)
    right, hit, calls = result.stdout.splitlines()[0].split(" ", 2)
    assert (right, hit, calls) == ("True", "True", "[1, 2, 3]"), "results returned, old one hit"
    count, message = result.stdout.splitlines()[1:3]
    assert count == "1", "one warning per store, however many results could not be stored"
    assert "Could not store the result" in message and str(small_disk) in message
    assert "the disk is full; free disk space there." in message, "the remedy of ENOSPC"


# =================================================================================================
# 4. The settings object and the storage tier
# =================================================================================================
def test_the_storage_tier_is_built_from_the_settings_and_again_when_they_change(ptd_env,
                                                                                monkeypatch):
    storage = ptd.config.storage()
    assert ptd.config.storage() is storage, "kept while the settings stay"
    settings = storage.settings
    assert settings.sharing is ptd.config.get_shared()
    assert settings.trust_roots == (str(ptd_env.persist),)
    assert settings.initial_map_size is None
    assert settings.foreign_folder is not None, "0.0.7 bucket folders are refused"

    ptd.config.set_shared("group")
    ptd.config.set_persist_path_local(str(ptd_env.tmp / "local"))
    monkeypatch.setenv("PERSIST_TO_DISK_INITIAL_MAP_SIZE", "100000")
    settings = ptd.config.storage().settings
    assert settings.sharing.value == "group"
    assert set(settings.trust_roots) == {str(ptd_env.persist), str(ptd_env.tmp / "local")}
    assert settings.initial_map_size == 102400, "rounded up to whole 4 KiB pages"


def test_a_bad_initial_map_size_fails_the_first_call_naming_the_variable(monkeypatch):
    compute = _compute_with(None)
    monkeypatch.setenv("PERSIST_TO_DISK_INITIAL_MAP_SIZE", "a lot")
    with pytest.raises(ptd.EngineError, match="PERSIST_TO_DISK_INITIAL_MAP_SIZE='a lot'"):
        compute(1, "a")
    assert CALLS == []


# =================================================================================================
# 5. The option list, written once
# =================================================================================================
#: Every option persistf had when the list was written once, with its default.
OPTIONS_AND_DEFAULTS = {
    "groupby": None, "expand_dict_kwargs": None, "skip_kwargs": None, "hashsize": None,
    "hash_size": None, "lock_granularity": None, "switch_kwarg": "cache_switch", "cache": None,
    "hash_method": "pickle", "local": False, "durability": None, "lock_timeout": None,
    "remote": True, "version": None, "code_changes": None, "max_age": None,
    "max_age_kwarg": "cache_max_age",
}


def test_persistf_signature_lists_every_option_with_its_default():
    from persist_to_disk.options import PersistOptions

    parameters = dict(inspect.signature(ptd.persistf).parameters)
    func = parameters.pop("func")
    assert func.default is None and func.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert {name: p.default for name, p in parameters.items()} == OPTIONS_AND_DEFAULTS
    assert list(parameters) == list(OPTIONS_AND_DEFAULTS), "in the documented order"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())
    fields = [field.name for field in dataclasses.fields(PersistOptions)]
    assert set(fields) == set(OPTIONS_AND_DEFAULTS) - {"hash_size"}, "the one list"
    documented = ptd.persistf.__doc__.split("Args:")[1]
    for name in fields:
        assert f"\n        {name}" in documented, f"{name} is documented under Args"
    assert "hashsize / hash_size:" in documented, "the alias is documented with its option"
    with pytest.raises(TypeError, match="unexpected keyword argument 'groupbye'"):
        ptd.persistf(groupbye=["x"])


def test_persistf_accepts_every_option_of_the_one_list_and_validates_it(ptd_env):
    from persist_to_disk.options import PersistOptions

    given = dict(groupby=["leaf"], expand_dict_kwargs="all", skip_kwargs=["verbose"],
                 hash_size=7, lock_granularity="func", switch_kwarg="mode", cache=ptd.CACHE,
                 hash_method="json", local=True, durability="fast", lock_timeout=5,
                 remote=False, version=("v", 2), code_changes="recompute", max_age=60,
                 max_age_kwarg="fresh_for")
    fields = {field.name for field in dataclasses.fields(PersistOptions)}
    assert set(given) - {"hash_size"} | {"hashsize"} == fields, "one value for every option"

    @ptd.persistf(**given)
    def compute(x, leaf, verbose=False):
        return x

    options = compute.__persisted__.options
    assert (options.groupby, options.expand_dict_kwargs, options.skip_kwargs) == (
        ("leaf",), "all", ("verbose",))
    assert (options.hashsize, options.lock_granularity.value, options.switch_kwarg,
            options.cache, options.hash_method, options.local, options.durability.value,
            options.lock_timeout, options.remote) == (7, "func", "mode", ptd.CACHE, "json",
                                                      True, "fast", 5, False)
    assert (options.version, options.code_changes, options.max_age, options.max_age_kwarg) == (
        ("v", 2), "recompute", 60.0, "fresh_for")
    assert compute(1, "a", mode=ptd.CACHE) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute.is_cached(1, "a")
