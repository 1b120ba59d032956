"""The shortest story: a decorated function computes once, then returns the stored result."""

import persist_to_disk as ptd


calls = []


@ptd.persistf()
def square(x):
    calls.append(x)
    return x * x


def test_second_call_returns_the_stored_result_without_computing():
    calls.clear()
    assert square(4) == 16
    assert square(4) == 16
    assert calls == [4]


def test_cache_lives_under_the_configured_persist_path(ptd_env):
    square(3)
    assert str(square.cache_folder()).startswith(str(ptd_env.persist))
    assert (ptd_env.home / "project_to_pids.txt").read_text().startswith(str(ptd_env.project))
