"""Which function a stored result belongs to.

Two different functions must never answer for each other, even when they share a helper
decorator, a name, or a factory; callables that cannot be cached faithfully are refused at
decoration with a message that says what to do instead.
"""

import asyncio
import functools
import inspect

import pytest

import persist_to_disk as ptd
from conftest import write_module


def test_functions_wrapped_by_one_helper_decorator_keep_their_own_folders(ptd_env, python_runner):
    """``functools.wraps`` makes every wrapped function's code the helper's; the folder must
    follow the function itself (its file), not the helper's file."""
    write_module(ptd_env.project, "utils/__init__.py", "")
    write_module(ptd_env.project, "utils/deco.py", """
        import functools
        def timed(func):
            @functools.wraps(func)
            def inner(*args, **kwargs):
                return func(*args, **kwargs)
            return inner
    """)
    for package, text in (("pipeline", "trained"), ("evals", "scored")):
        write_module(ptd_env.project, f"{package}/__init__.py", "")
        write_module(ptd_env.project, f"{package}/step.py", f"""
            import persist_to_disk as ptd
            from utils.deco import timed

            @ptd.persistf()
            @timed
            def run(dataset):
                return "{text} " + dataset
        """)
    result = python_runner("""
        from pipeline import step as train
        from evals import step as score
        print(train.run("MNIST"), "|", score.run("MNIST"))
        print(train.run.cache_folder())
        print(score.run.cache_folder())
    """)
    lines = result.stdout.splitlines()
    assert lines[0] == "trained MNIST | scored MNIST"
    assert lines[1].endswith("/pipeline/step/run")
    assert lines[2].endswith("/evals/step/run")


def test_a_lambda_is_refused_at_decoration():
    with pytest.raises(TypeError, match="lambda"):
        ptd.persistf()(lambda x: x * x)


def test_closures_made_by_one_factory_keep_their_captured_values_apart():
    def make(k):
        @ptd.persistf()
        def add(x):
            return x + k
        return add

    assert make(100)(5) == 105
    assert make(1)(5) == 6
    assert make(100)(5) == 105
    assert make(100).cache_folder() == make(1).cache_folder()  # one folder, distinct keys


def test_a_closure_over_a_list_it_appends_to_keeps_hitting():
    """The captured value is keyed as it was at decoration, not as it changes."""
    calls = []

    @ptd.persistf()
    def double(x):
        calls.append(x)
        return 2 * x

    assert double(3) == 6 and double(3) == 6
    assert calls == [3]


def test_a_captured_value_that_cannot_be_keyed_is_reported_at_decoration():
    import threading
    lock = threading.Lock()

    with pytest.warns(ptd.PersistWarning, match="captured variable 'lock'"):
        @ptd.persistf()
        def guarded(x):
            with lock:
                return x


def test_a_recursive_nested_function_can_be_decorated():
    @ptd.persistf()
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert fib(20) == 6765


@pytest.mark.parametrize("callable_, message", [
    (functools.partial(max, 1), "defined with def"),
    (object(), "defined with def"),
])
def test_callables_without_a_def_are_refused_with_a_clear_type_error(callable_, message):
    with pytest.raises(TypeError, match=message):
        ptd.persistf()(callable_)


def test_generator_functions_are_refused_at_decoration_and_coroutine_functions_are_not():
    async def fetch(url):
        await asyncio.sleep(0)
        return url

    def numbers(n):
        yield from range(n)

    async def stream(n):
        for i in range(n):
            yield i

    for func in (numbers, stream):
        with pytest.raises(TypeError, match="a generator"):
            ptd.persistf()(func)
    assert inspect.iscoroutinefunction(ptd.persistf()(fetch))  # tests/test_async.py


def test_what_a_wrapper_decorator_captured_is_part_of_the_key_too():
    def scaled(k):
        def decorator(func):
            @functools.wraps(func)
            def inner(x):
                return k * func(x)
            return inner
        return decorator

    def make(k):
        @ptd.persistf()
        @scaled(k)
        def g(x):
            return x
        return g

    assert (make(2)(5), make(3)(5), make(2)(5)) == (10, 15, 10)


_step_calls = []  # module level: a captured list would itself be part of the key


def test_a_captured_value_named_in_skip_kwargs_does_not_change_the_key():
    """A start time captured for logging would otherwise make every run a miss."""
    def run(started, skip):
        @ptd.persistf(skip_kwargs=skip)
        def step(x):
            _step_calls.append((x, started))
            return x * 2
        return step(4)

    _step_calls.clear()
    assert run(1.0, ["started"]) == 8 and run(2.0, ["started"]) == 8
    assert _step_calls == [(4, 1.0)]
    assert run(3.0, []) == 8  # not skipped: another start time is another key
    assert _step_calls == [(4, 1.0), (4, 3.0)]


def test_skip_kwargs_still_refuses_names_that_are_neither_parameters_nor_captured():
    with pytest.raises(ptd.ConfigError, match="typo"):
        @ptd.persistf(skip_kwargs=["typo"])
        def step(x):
            return x
