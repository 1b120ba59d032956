"""Cached functions for the 0.0.7 migration tests, written to work with BOTH libraries.

test_pkl_migration.py copies this file into the test's project folder as ``pipeline.py``; the
test imports it with our persist_to_disk, and runs it with the real persist-to-disk 0.0.7 in its
own virtual environment. Both decorators accept these options, and both lay the cache out as
``<persist path>/<project>-<id>/pipeline/<function>/[<groupby values>]``.

Each computation appends a line to the file named by ``CALLS_FILE``: a test proves a call was
served from the cache by finding that file unchanged. Results carry the version of the library
that computed them, so a test can tell whose result it got.
"""

import os

import persist_to_disk as ptd

HASHSIZE = int(os.environ.get("PIPELINE_HASHSIZE", "7"))
HASH_METHOD = os.environ.get("PIPELINE_HASH_METHOD", "pickle")


def _computing(name, *args):
    with open(os.environ["CALLS_FILE"], "a") as handle:
        handle.write(f"{name}{args!r}\n")


@ptd.persistf(hashsize=HASHSIZE, hash_method=HASH_METHOD)
def plain(a, b=2, scale=1.0):
    _computing("plain", a, b)
    return {"a": a, "b": b, "product": [a, b, scale], "by": ptd.__version__}


@ptd.persistf(groupby=["dataset", "epochs"], hashsize=HASHSIZE, hash_method=HASH_METHOD)
def grouped(dataset, epochs, lr=0.1):
    _computing("grouped", dataset, epochs, lr)
    return (dataset, epochs, lr, ptd.__version__)


@ptd.persistf(hashsize=HASHSIZE, hash_method=HASH_METHOD)
def configured(args, k):
    """``args`` is an argparse.Namespace, which 0.0.7 keys by its JSON text."""
    _computing("configured", k)
    return (sorted(vars(args).items()), k, ptd.__version__)


@ptd.persistf(hashsize=HASHSIZE, hash_method=HASH_METHOD)
def adder(k):
    """Returns a function made here: only cloudpickle can store it."""
    _computing("adder", k)
    return lambda x: x + k
