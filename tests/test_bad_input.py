"""Bad input to the settings: each wrong value is a ``ConfigError`` naming where it came from
(the file and key, or the environment variable, or the setter) and the value, raised at the
first call before anything is computed or written; missing keys fall back to the defaults; keys
or sections that would be silently ignored are reported.

Bad input elsewhere is proven where it belongs (README, Guarantees): decorator options
(tests/test_decorator_api.py, ``INVALID_OPTIONS``), unkeyable arguments (tests/test_keys.py),
unstorable results (tests/test_modes.py), groupby values (tests/test_decorator_api.py and
tests/test_security.py), call forms Python rejects (tests/test_binding.py), bad ``config.ini``
values in a fresh interpreter (tests/test_config.py).
"""

import warnings

import pytest

import persist_to_disk as ptd
from helpers import counting, files_under

BAD_CONFIG_INI = [  # (contents, what the message must name)
    ("hashsize = 1.5", ["hashsize", "'1.5'"]),
    ("hashsize = -3", ["hashsize", "'-3'"]),
    ("hashsize = 99999999999", ["hashsize", "'99999999999'"]),
    ("hashsize = true", ["hashsize", "'true'"]),
    ("lock_granularity = bucket,func", ["lock_granularity", "'bucket,func'"]),
    ("durability = sync", ["durability", "'sync'"]),
    ("shared = sometimes", ["shared", "'sometimes'"]),
    ("persist_path = {file}", ["persist_path", "is a file, not a folder"]),
    ("persist_path_local = {file}", ["persist_path_local", "is a file, not a folder"]),
    ("hashsize = 3\nhashsize = 4", ["hashsize", "already exists"]),
    ("[global_settings]\nhashsize = 3", ["global_settings", "already exists"]),
    ("hashsize", ["cannot be parsed"]),
]

BAD_ENVIRONMENT = [  # (variable, value)
    ("PERSIST_TO_DISK_HASHSIZE", "many"),
    ("PERSIST_TO_DISK_HASHSIZE", "0"),
    ("PERSIST_TO_DISK_LOCK_GRANULARITY", "thread"),
    ("PERSIST_TO_DISK_DURABILITY", "maximum"),
    ("PERSIST_TO_DISK_SHARED", "team"),
    ("PERSIST_TO_DISK_PERSIST_PATH", "{file}"),
]


@pytest.fixture
def a_file(ptd_env):
    path = ptd_env.tmp / "a file"
    path.write_text("not a folder\n")
    return path


def first_call_fails_cleanly(ptd_env, *named) -> str:
    """Call a decorated function: it must raise ConfigError naming each of ``named``, compute
    nothing and create nothing anywhere in the test's folder. Returns the message."""
    compute, calls = counting()
    before = files_under(ptd_env.tmp)
    with pytest.raises(ptd.ConfigError) as raised:
        compute(1)
    message = str(raised.value)
    for name in named:
        assert name in message, message
    assert calls == []
    assert files_under(ptd_env.tmp) == before, "a refused setting left files behind"
    return message


@pytest.mark.parametrize("contents, named", BAD_CONFIG_INI,
                         ids=[c.split("\n")[-1] for c, _ in BAD_CONFIG_INI])
def test_a_wrong_value_in_config_ini_is_a_config_error_at_the_first_call(
        ptd_env, a_file, contents, named):
    config = ptd_env.home / "config.ini"
    ptd_env.home.mkdir(exist_ok=True)
    config.write_text("[global_settings]\n" + contents.format(file=a_file) + "\n")
    ptd.config.reload()

    first_call_fails_cleanly(ptd_env, str(config), *named)


@pytest.mark.parametrize("variable, value", BAD_ENVIRONMENT,
                         ids=[f"{v[len('PERSIST_TO_DISK_'):]}={x}" for v, x in BAD_ENVIRONMENT])
def test_a_wrong_value_in_an_environment_variable_is_a_config_error_naming_it(
        ptd_env, a_file, monkeypatch, variable, value):
    value = value.format(file=a_file)
    monkeypatch.setenv(variable, value)
    ptd.config.reload()

    first_call_fails_cleanly(ptd_env, variable, value)


@pytest.mark.parametrize("setter", ["set_persist_path", "set_persist_path_local"])
def test_setting_a_persist_path_that_is_a_file_is_refused_at_once(ptd_env, a_file, setter):
    with pytest.raises(ptd.ConfigError, match="is a file, not a folder") as raised:
        getattr(ptd.config, setter)(str(a_file))
    assert setter in str(raised.value) and str(a_file) in str(raised.value)
    assert ptd.config.get_persist_path() == str(ptd_env.persist), "the old setting stands"


@pytest.mark.parametrize("contents", [
    "", "[global_settings]\n", "[global_settings]\nhashsize =\ndurability =   \n",
], ids=["empty-file", "empty-section", "empty-values"])
def test_missing_keys_and_empty_values_fall_back_to_the_defaults_silently(ptd_env, contents):
    ptd_env.home.mkdir(exist_ok=True)
    (ptd_env.home / "config.ini").write_text(contents)
    ptd.config.reload()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute, _ = counting()
        assert compute(1) == (1, 1)
    assert ptd.config.get_hashsize() == 500
    assert ptd.config.get_durability().value == "standard"
    assert ptd.config.get_shared().value == "no"


def test_settings_in_a_misnamed_section_are_reported_not_silently_ignored(ptd_env):
    """``[settings]`` instead of ``[global_settings]``: the user's hashsize would otherwise be
    silently replaced by the default."""
    ptd_env.home.mkdir(exist_ok=True)
    (ptd_env.home / "config.ini").write_text("[settings]\nhashsize = 7\n[paths]\n")
    ptd.config.reload()

    with pytest.warns(ptd.PersistWarning, match=r"\[settings\], \[paths\] are ignored") as caught:
        assert ptd.config.get_hashsize() == 500
    assert str(ptd_env.home / "config.ini") in str(caught[0].message)
