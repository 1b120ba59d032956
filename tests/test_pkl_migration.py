"""Moving caches to and from the real persist-to-disk 0.0.7 (``ptd export-pkl`` / ``import-pkl``).

0.0.7 has our import name, so it runs in its own virtual environment (made once per session,
``pip install six persist-to-disk==0.0.7``), driven by subprocess. Both libraries run the same
module (pkl_migration_pipeline.py, copied into the project as ``pipeline.py``), whose functions
append to ``CALLS_FILE`` when they compute: an unchanged file proves a call was a cache hit.
"""

import argparse
import importlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import venv
from pathlib import Path

import pytest

import persist_to_disk as ptd
from conftest import write_module
from persist_to_disk.cli import main
from persist_to_disk.legacy import buckets

TESTS = Path(__file__).parent
REPOSITORY = TESTS.parent
LEGACY = "persist-to-disk==0.0.7"

pytestmark = pytest.mark.slow  # subprocesses in a second interpreter; CI runs them


@pytest.fixture(scope="session")
def legacy_python(tmp_path_factory) -> str:
    """The interpreter of a virtual environment holding persist-to-disk 0.0.7 (and six)."""
    folder = tmp_path_factory.mktemp("venv-ptd-0.0.7")
    venv.EnvBuilder(with_pip=True).create(folder)
    python = str(folder / "bin" / "python")
    result = subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet", "six",
         LEGACY], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.skip(f"cannot install {LEGACY} from PyPI (is the network reachable?); pip said:"
                    f"\n{result.stderr[-2000:]}")
    return python


class Legacy:
    """Runs code with 0.0.7 in the test's project folder, its cache under ``persist``."""

    def __init__(self, python: str, ptd_env) -> None:
        self.python = python
        self.project = ptd_env.project
        self.home = ptd_env.tmp / "home-0.0.7"   # 0.0.7 keeps its settings in ~/.cache
        self.persist = ptd_env.tmp / "cache-0.0.7"
        self.calls = ptd_env.tmp / "calls-0.0.7.txt"
        self.home.mkdir()
        # 0.0.7's folder for the test project: <persist>/<project name>-<id>, first id is 1
        self.root = self.persist / f"{self.project.name}-1"

    def environment(self, **settings) -> dict:
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(("PERSIST_TO_DISK_", "PYTHON", "PIPELINE_"))}
        env.update(HOME=str(self.home), CALLS_FILE=str(self.calls), PYTHONNOUSERSITE="1",
                   **{f"PIPELINE_{name.upper()}": str(value) for name, value in settings.items()})
        return env

    def run(self, code: str, **settings) -> str:
        """Run ``code`` after ``import pipeline``; return the last line it printed."""
        prologue = f"import argparse, persist_to_disk as ptd\n" \
                   f"ptd.config.set_persist_path({str(self.persist)!r})\nimport pipeline\n"
        result = subprocess.run([self.python, "-c", prologue + textwrap.dedent(code)],
                                cwd=str(self.project), env=self.environment(**settings),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"0.0.7 failed:\n{result.stdout}\n{result.stderr}"
        lines = result.stdout.splitlines()  # 0.0.7 prints a line for each folder it creates
        return lines[-1] if lines else ""

    def computed(self) -> list:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


@pytest.fixture
def legacy(legacy_python, ptd_env) -> Legacy:
    shutil.copy(TESTS / "pkl_migration_pipeline.py", ptd_env.project / "pipeline.py")
    return Legacy(legacy_python, ptd_env)


@pytest.fixture
def ours(ptd_env, monkeypatch):
    """``ours(**settings)``: the pipeline module imported here, with our persist_to_disk;
    ``ours.computed()`` lists what it computed."""
    calls = ptd_env.tmp / "calls-ours.txt"
    monkeypatch.setenv("CALLS_FILE", str(calls))
    monkeypatch.syspath_prepend(str(ptd_env.project))

    def load(**settings):
        for name, value in settings.items():
            monkeypatch.setenv(f"PIPELINE_{name.upper()}", str(value))
        sys.modules.pop("pipeline", None)
        return importlib.import_module("pipeline")

    load.computed = lambda: calls.read_text().splitlines() if calls.exists() else []
    load.root = lambda: Path(ptd.config.get_project_persist_path())
    yield load
    sys.modules.pop("pipeline", None)


NAMESPACE = "argparse.Namespace(lr=0.1, layers=[64, 32], name='mlp')"
CALLS = f"""[
    pipeline.plain(1), pipeline.plain(2, b=5), pipeline.plain('text', scale=0.5),
    pipeline.grouped('MNIST', 10), pipeline.grouped('MNIST', 20, lr=0.5),
    pipeline.grouped('CIFAR', 10), pipeline.configured({NAMESPACE}, 3),
    pipeline.plain('large result', b='x' * 100_000),
]"""


def _our_calls(pipeline) -> list:
    return eval(CALLS, {"pipeline": pipeline, "argparse": argparse})


# --- export: our cache -> 0.0.7 ---------------------------------------------------------------
class ScriptResult:
    """Stands for a class defined in a script: pickled as ``__main__.ScriptResult``."""

    __module__ = "__main__"

    def __eq__(self, other):
        return isinstance(other, ScriptResult)

    def __hash__(self):
        return 0


@pytest.mark.parametrize("hash_method, decorator_hashsize, export_args", [
    ("pickle", 7, []),                     # the reader's settings, recorded with each store
    ("json", 7, []),
    ("pickle", 11, ["--hashsize", "3"]),   # the reader was decorated with another hashsize
    ("json", 11, ["--hashsize", "3", "--hash-method", "json"]),
])
def test_exported_cache_is_hit_by_the_real_0_0_7_without_calling_the_function(
        legacy, ours, capsys, monkeypatch, hash_method, decorator_hashsize, export_args):
    pipeline = ours(hashsize=decorator_hashsize, hash_method=hash_method)
    expected = _our_calls(pipeline)
    pipeline.plain([1, 2])           # unhashable: 0.0.7 cannot hold this key
    pipeline.adder(5)                # a lambda: stored with cloudpickle
    pipeline.grouped(10, 1)          # and below, folder '10' too: 0.0.7 cannot tell them apart
    pipeline.grouped("10", 1)
    monkeypatch.setattr(sys.modules["__main__"], "ScriptResult", ScriptResult, raising=False)
    pipeline.plain(ScriptResult())   # its result holds a class only a script's __main__ has
    reader_hashsize = 3 if export_args else decorator_hashsize

    code = main(["export-pkl", str(ours.root()), str(legacy.root), *export_args])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"Exported {len(expected) + 1} entries from 7 store(s)" in printed
    script_result = ("1 key has no json hash, " if hash_method == "json" else "")
    script_result_loaded = ("" if hash_method == "json" else
                            "1 result uses a class or function of a script's __main__, ")
    assert ("Skipped 4 entries 0.0.7 cannot hold: 1 a newer result has the same 0.0.7 key, "
            f"{script_result}1 result needs cloudpickle, {script_result_loaded}1 unhashable"
            ) in printed, printed

    served = legacy.run(f"print(repr({CALLS}))", hashsize=reader_hashsize,
                        hash_method=hash_method)
    assert legacy.computed() == []   # every call was a hit on what we exported
    assert served.strip() == repr(expected)
    assert all(result_by(result) == ptd.__version__ for result in expected)


def result_by(result) -> str:
    return result["by"] if isinstance(result, dict) else result[-1]


def test_export_merges_into_existing_bucket_files_keeping_their_entries(legacy, ours, capsys):
    # 0.0.7 has a cache already; with hashsize=1 every entry shares the bucket file 0.pkl.
    legacy.run("pipeline.plain(100); pipeline.plain(101); pipeline.plain(1)", hashsize=1)
    assert len(legacy.computed()) == 3
    pipeline = ours(hashsize=1)
    ours_first = [pipeline.plain(1), pipeline.plain(2)]

    assert main(["export-pkl", str(ours.root()), str(legacy.root)]) == 0
    assert "(1 replaced an entry with the same key)" in capsys.readouterr().out

    served = legacy.run("print(repr([pipeline.plain(i) for i in (1, 2, 100, 101)]))",
                        hashsize=1)
    assert len(legacy.computed()) == 3  # nothing computed again
    results = eval(served)
    assert results[:2] == ours_first                              # ours, replacing plain(1)
    assert [r["by"] for r in results[2:]] == ["0.0.7", "0.0.7"]   # theirs, kept


@pytest.mark.parametrize("lock_name", ["0.pkl", "func_persist_lock"])
def test_export_waits_for_the_lock_a_0_0_7_process_holds(legacy, ours, lock_name):
    """0.0.7 locks ``<bucket>.pkl.lock`` (lock_granularity='call') or
    ``func_persist_lock.lock`` ('func', its default) while it reads or rewrites a bucket."""
    legacy.run("pipeline.plain(100)", hashsize=1)
    leaf = legacy.root / "pipeline" / "plain"
    before = (leaf / "0.pkl").read_bytes()
    holder = subprocess.Popen(
        [legacy.python, "-c", textwrap.dedent(f"""
            import sys
            from persist_to_disk.myfilelock import FileLock   # 0.0.7's own lock class
            with FileLock({str(leaf / lock_name)!r}):
                print("locked", flush=True)
                sys.stdin.readline()
        """)], cwd=str(legacy.project), env=legacy.environment(), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        ours(hashsize=1).plain(1)
        codes = []
        export = threading.Thread(target=lambda: codes.append(
            main(["export-pkl", str(ours.root()), str(legacy.root)])))
        export.start()
        time.sleep(1.0)
        assert export.is_alive() and (leaf / "0.pkl").read_bytes() == before  # waiting
        holder.stdin.write("\n")
        holder.stdin.flush()
        export.join(timeout=60)
        assert codes == [0]
    finally:
        holder.kill()
        holder.wait()
    served = legacy.run("print(repr([pipeline.plain(i)['by'] for i in (1, 100)]))", hashsize=1)
    assert eval(served) == [ptd.__version__, "0.0.7"] and len(legacy.computed()) == 1


def test_export_leaves_an_unreadable_bucket_file_untouched_and_says_so(legacy, ours, capsys):
    ours(hashsize=1).plain(1)
    leaf = legacy.root / "pipeline" / "plain"
    leaf.mkdir(parents=True)
    (leaf / "0.pkl").write_bytes(b"\x80\x04garbage")

    assert main(["export-pkl", str(ours.root()), str(legacy.root)]) == 1
    assert f"{leaf / '0.pkl'} is damaged or truncated" in capsys.readouterr().err
    assert (leaf / "0.pkl").read_bytes() == b"\x80\x04garbage"


# --- import: 0.0.7 -> our cache ---------------------------------------------------------------
@pytest.mark.parametrize("import_args", [
    [],                      # the configured hashsize (500), not the decorator's 7: still found
    ["--hashsize", "7"],     # the decorator's hashsize
])
def test_imported_0_0_7_cache_is_hit_by_our_decorator_without_calling_the_function(
        legacy, ours, capsys, import_args):
    made = legacy.run(f"print(repr({CALLS}))")
    assert len(legacy.computed()) == 8
    expected = eval(made, {"argparse": argparse})

    code = main(["import-pkl", str(legacy.root), str(ours.root()), *import_args])
    assert code == 0
    assert "Imported 8 entries from" in capsys.readouterr().out

    pipeline = ours()
    assert _our_calls(pipeline) == expected      # groupby and Namespace calls included
    assert _our_calls(pipeline) == expected      # again: now plain hits under our own keys
    assert ours.computed() == []
    assert all(result_by(result) == "0.0.7" for result in expected)
    assert pipeline.grouped.is_cached("MNIST", 10) and pipeline.plain.is_cached(1)


def test_import_reports_and_skips_unreadable_bucket_files_and_loses_nothing_stored(
        legacy, ours, capsys):
    legacy.run("[pipeline.plain(i) for i in range(40)]")
    leaf = legacy.root / "pipeline" / "plain"
    files = sorted(leaf.glob("*.pkl"))
    assert len(files) >= 3
    truncated, not_a_bucket = files[0], files[1]
    truncated.write_bytes(truncated.read_bytes()[:-7])
    not_a_bucket.write_bytes(pickle.dumps(["not", "a", "dict"]))
    unreadable = set()  # the calls whose bucket file is damaged: recomputed, not imported
    for path in (truncated, not_a_bucket):
        unreadable |= {i for i in range(40) if buckets.bucket_of_key(
            (("a", i), ("b", 2), ("scale", 1.0)), 7, "pickle") == int(path.stem)}
    # Our cache already holds two calls, one of which 0.0.7 has too: ours must stay.
    pipeline = ours()
    kept = [pipeline.plain(0), pipeline.plain(1000)]

    assert main(["import-pkl", str(legacy.root), str(ours.root())]) == 1
    printed = capsys.readouterr()
    assert f"{truncated} is damaged or truncated" in printed.err
    assert f"{not_a_bucket} holds a list, not the dict" in printed.err
    assert "2 bucket file(s) could not be read and were skipped" in printed.out
    assert "were already stored and kept as they were" in printed.out

    before = len(ours.computed())
    assert [pipeline.plain(0), pipeline.plain(1000)] == kept
    readable = [i for i in range(1, 40) if i not in unreadable]
    assert all(pipeline.plain(i)["by"] == "0.0.7" for i in readable)
    assert len(ours.computed()) == before    # all hits
    assert pipeline.plain(sorted(unreadable)[0])["by"] == ptd.__version__  # recomputed


def test_imported_entries_never_serve_a_closure(ptd_env, monkeypatch, capsys):
    """A closure's key includes what it captured, which 0.0.7 never recorded: an imported entry
    could belong to any of its closures, so it serves only the plain function."""
    write_module(ptd_env.project, "tasks.py", """
        import persist_to_disk as ptd

        @ptd.persistf(groupby=["dataset"], hashsize=7)
        def score(dataset, x):
            return ("computed", x)

        def make(offset):
            @ptd.persistf(groupby=["dataset"], hashsize=7)
            def shifted(dataset, x):
                return ("computed", x + offset)
            return shifted
    """)
    source = ptd_env.tmp / "cache-0.0.7" / "project-1"
    for function in ("score", "make.locals.shifted"):   # as 0.0.7 writes a bucket file
        leaf = source / "tasks" / function / "MNIST"
        leaf.mkdir(parents=True)
        with open(leaf / "3.pkl", "wb") as handle:
            pickle.dump({(("x", 1),): ("imported", 1)}, handle, protocol=4)
    monkeypatch.syspath_prepend(str(ptd_env.project))
    monkeypatch.delitem(sys.modules, "tasks", raising=False)
    import tasks

    target = Path(ptd.config.get_project_persist_path())
    assert main(["import-pkl", str(source), str(target)]) == 0
    assert "Imported 2 entries" in capsys.readouterr().out
    assert tasks.score("MNIST", 1) == ("imported", 1)
    assert tasks.make(10)("MNIST", 1) == ("computed", 11)
    sys.modules.pop("tasks", None)


def test_import_refuses_overlapping_trees(legacy, capsys):
    legacy.run("pipeline.plain(1)")
    assert main(["import-pkl", str(legacy.root), str(legacy.root / "pipeline")]) == 2
    assert "overlap" in capsys.readouterr().err


def test_tools_export_pkl_runs_from_the_checkout(legacy, ours, ptd_env):
    pipeline = ours()
    expected = pipeline.plain(3)
    env = {**os.environ, "PERSIST_TO_DISK_HOME": str(ptd_env.home)}
    result = subprocess.run([str(REPOSITORY / "tools" / "export_pkl"), str(ours.root()),
                             str(legacy.root), "--json"], capture_output=True, text=True,
                            env=env, cwd=str(ptd_env.tmp), timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["exported"] == 1 and report["skipped_total"] == 0
    assert eval(legacy.run("print(repr(pipeline.plain(3)))")) == expected
    assert legacy.computed() == []
