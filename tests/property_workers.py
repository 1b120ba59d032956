"""A decorated function with every kind of parameter, and random calls to it, for
tests/test_properties.py; importable by the fresh interpreters that test starts."""

import inspect
import itertools
import random
from typing import Any, List, Tuple

import persist_to_disk as ptd

EXTRA_NAMES = ["e", "f", "args", "kwargs"]  # extra keywords, two of them named like *args/**kw


@ptd.persistf(groupby=["group"])
def target(a, b=2, *args, group="g", c, d=None, **kwargs):
    return a


SIGNATURE = inspect.signature(target.uncached)


def random_meaning(rng: random.Random, values: List[Any]) -> dict:
    """What a random call means (its bound arguments), from ``values`` taken in turn (again
    from the first when they run out): ``b`` often left at its default, sometimes extra positionals,
    ``d`` given or not, 0-2 extra keywords (two of the names are spelled like ``*args`` and
    ``**kwargs``), one of two groupby leaves."""
    taken = itertools.cycle(values)
    meaning = {"a": next(taken), "c": next(taken)}
    meaning["b"] = next(taken) if rng.random() < 0.6 else 2
    meaning["args"] = (tuple(next(taken) for _ in range(rng.randrange(1, 3)))
                       if rng.random() < 0.3 else ())
    meaning["d"] = next(taken) if rng.random() < 0.5 else None
    meaning["kwargs"] = {name: next(taken)
                         for name in rng.sample(EXTRA_NAMES, rng.randrange(3))}
    meaning["group"] = rng.choice(["g", "h"])
    return meaning


def spell(rng: random.Random, meaning: dict) -> Tuple[tuple, dict]:
    """One random spelling of the call ``meaning``: ``a`` and ``b`` positional or by keyword,
    arguments equal to their default given explicitly or left out, keywords in any order."""
    a, b, extra_args = meaning["a"], meaning["b"], meaning["args"]
    b_is_default = type(b) is int and b == 2
    args, kwargs = [], {}
    if extra_args:
        args = [a, b, *extra_args]
    else:
        if rng.random() < 0.3:
            kwargs["a"] = a
        else:
            args.append(a)
        b_form = rng.choice(["positional", "keyword", "left out"])
        if b_form == "left out" and not b_is_default:
            b_form = "keyword"
        if b_form == "positional" and args:
            args.append(b)
        elif b_form != "left out":
            kwargs["b"] = b
    kwargs["c"] = meaning["c"]
    if meaning["d"] is not None or rng.random() < 0.5:
        kwargs["d"] = meaning["d"]
    if meaning["group"] != "g" or rng.random() < 0.5:
        kwargs["group"] = meaning["group"]
    kwargs.update(meaning["kwargs"])
    items = list(kwargs.items())
    rng.shuffle(items)
    return tuple(args), dict(items)


def bound_arguments(args: tuple, kwargs: dict) -> dict:
    """What the call means, by Python's own binding with defaults applied: the identity a
    cache key must respect (independent of the library's binder)."""
    bound = SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def locations(calls) -> list:
    """``[bucket, digest hex, leaf folder relative to the function folder]`` of each call."""
    persisted = target.__persisted__
    found = []
    for args, kwargs in calls:
        store, bucket, digest, _ = persisted.locate(args, dict(kwargs))
        found.append([bucket, digest.hex(), store.path[len(target.cache_folder()):]])
    return found
