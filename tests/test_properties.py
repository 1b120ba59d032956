"""Properties of whole calls (binding, normalisation, groupby and digest together), over random
calls to a function with every kind of parameter (``property_workers.target``):

* the same call gives the same bucket, digest and leaf folder in fresh interpreters with other
  ``PYTHONHASHSEED`` values (sets and dicts iterate in another order there);
* over a large random sample built from near-twin values (``1``/``1.0``/``True``, ``[x]``/``(x,)``,
  ``-0.0``/``0.0``, ...) spelled in many ways (positional or keyword, defaults given or left out,
  extra keywords named like ``*args``), two calls share a digest exactly when Python's own
  binding says they are the same call: no collision, and one key per call however spelled.

The value-level versions of these properties are in tests/test_keys.py, and every spelling of a
call hitting one entry through the decorator in tests/test_binding.py.
"""

import json
import pickle
import random
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import strategies as st

import property_workers
from conftest import run_python
from property_workers import bound_arguments, locations, random_meaning, spell
from test_keys import NARROW_SCALARS, TWINS, WIDE_SCALARS, _collect, _values, canonical

TESTS_FOLDER = Path(__file__).resolve().parent
HASH_SEEDS = ["0", "1", "4294967295"]


def random_calls(values_strategy, count: int, seed: int) -> list:
    """``count`` random calls whose argument values hypothesis draws (reproducibly)."""
    rng = random.Random(seed)
    return [spell(rng, random_meaning(rng, values)) for values in
            _collect(st.lists(values_strategy, min_size=1, max_size=6), count)]


def test_a_call_has_the_same_bucket_digest_and_leaf_in_interpreters_with_other_hash_seeds(
        ptd_env, python_runner):
    calls = random_calls(_values(WIDE_SCALARS), 200, seed=1)
    calls += random_calls(_values(st.text(max_size=3)), 60, seed=2)  # sets of str: seed-ordered
    path = ptd_env.tmp / "calls.pickle"
    path.write_bytes(pickle.dumps(calls))  # sets and dicts are rebuilt in the child's order
    here = locations(calls)

    code = f"""
        import json, pickle
        from property_workers import locations
        with open({str(path)!r}, "rb") as handle:
            print(json.dumps(locations(pickle.load(handle))))
    """
    for seed in HASH_SEEDS:
        there = json.loads(python_runner(
            code, hash_seed=seed,
            extra_env={"PYTHONPATH": str(TESTS_FOLDER),
                       "PERSIST_TO_DISK_PROJECT_PATH": str(ptd_env.project)}).stdout)
        differing = [calls[i] for i in range(len(calls)) if here[i] != there[i]]
        assert differing == [], f"PYTHONHASHSEED={seed}"


@pytest.mark.slow
def test_in_a_large_random_sample_calls_share_a_digest_exactly_when_they_are_the_same_call():
    rng = random.Random(3)
    pool = TWINS + _collect(_values(NARROW_SCALARS), 300)
    meanings = [random_meaning(rng, rng.sample(pool, 6)) for _ in range(15_000)]
    # A third of them spelled a second time, another way: every form must meet its twin.
    calls = [spell(rng, meaning) for meaning in meanings + meanings[:5_000]]
    persisted = property_workers.target.__persisted__
    known = {id(value): canonical(value) for value in pool}
    by_digest, by_identity = defaultdict(set), defaultdict(set)
    for args, kwargs in calls:
        identity = call_identity(bound_arguments(args, kwargs), known)
        digest = persisted.locate(args, dict(kwargs))[2]
        by_digest[digest].add(identity)
        by_identity[identity].add(digest)

    collisions = [ids for ids in by_digest.values() if len(ids) > 1]
    split = [digests for digests in by_identity.values() if len(digests) > 1]
    assert collisions == [], "different calls share a digest"
    assert split == [], "one call got several digests"
    assert len(by_identity) > 14_000
    assert len(calls) - len(by_identity) >= 5_000, "the respelled calls met their twins"


def call_identity(bound: dict, known: dict) -> tuple:
    """``canonical`` of a call's bound arguments, reusing the canonical forms already computed
    for the sample's values (``known``, by identity: the calls share those objects)."""
    def exact(value):
        return known.get(id(value)) or canonical(value)

    return tuple((name, tuple(map(exact, value)) if name == "args"
                  else tuple(sorted((key, exact(v)) for key, v in value.items()))
                  if name == "kwargs" else exact(value))
                 for name, value in bound.items())
