"""Cold start (issue 15): what ``import persist_to_disk`` leaves for later, and that what a first
call imports later is never waited for in a forked child."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Modules a plain import (and a decoration) must not load: a call never needs them, or needs
# them only for values of their own types (keying looks those types up in sys.modules).
NOT_AT_IMPORT = [
    "filelock", "persist_to_disk.engine.compaction", "persist_to_disk.engine.verification",
    "configparser", "socket", "uuid", "decimal", "fractions", "hashlib", "secrets", "hmac",
    "persist_to_disk.cli", "persist_to_disk.remote", "cloudpickle",
]


def run(code: str, tmp_path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PERSIST_TO_DISK_HOME": str(tmp_path / "home"),
           "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(tmp_path),
                            env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result


def test_importing_and_decorating_loads_nothing_a_call_does_not_need(tmp_path):
    code = f"""
    import json, sys
    import persist_to_disk as ptd
    ptd.config.set_persist_path({str(tmp_path / 'cache')!r})
    @ptd.persistf()
    def f(x):
        return x
    print(json.dumps(sorted(name for name in {NOT_AT_IMPORT!r} if name in sys.modules)))
    """
    assert json.loads(run(code, tmp_path).stdout) == []


def test_the_engines_lazy_names_load_when_asked(tmp_path):
    code = """
    import sys
    import persist_to_disk.engine as engine
    assert "persist_to_disk.engine.compaction" not in sys.modules
    assert {"compact", "CompactionPolicy", "verify_store", "verification"} <= set(dir(engine))
    from persist_to_disk.engine import (CompactionFailedError, CompactionPolicy,
                                        CompactionReport, NoStoreError, StoreVerification,
                                        compact, verify_store)
    from persist_to_disk.engine import compaction, verification
    assert compact is compaction.compact and verify_store is verification.verify_store
    assert engine.CompactionPolicy is CompactionPolicy
    try:
        engine.no_such_name
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("no AttributeError")
    """
    run(code, tmp_path)


def test_values_of_types_keying_does_not_import_are_keyed_by_value(tmp_path):
    code = """
    import copy, datetime, decimal, fractions, pathlib, uuid
    from persist_to_disk.keying import encode_value
    pairs = [(decimal.Decimal("1.10"), decimal.Decimal("1.1")),
             (fractions.Fraction(1, 3), fractions.Fraction(2, 3)),
             (uuid.UUID(int=1), uuid.UUID(int=2)),
             (datetime.timedelta(seconds=1), datetime.timedelta(seconds=2)),
             (datetime.date(2020, 1, 1), datetime.date(2020, 1, 2)),
             (pathlib.PurePosixPath("a"), pathlib.PurePosixPath("b"))]
    for one, other in pairs:
        assert encode_value(one) == encode_value(copy.deepcopy(one)), one
        assert encode_value(one) != encode_value(other), one
        assert encode_value(one) != encode_value(str(one)), one  # (keyed as its type)
    # a value with the same text but another type keys differently
    assert encode_value(decimal.Decimal("1")) != encode_value(fractions.Fraction(1))
    """
    run(code, tmp_path)


# The end of both fork scripts: fork while ``importer`` (a thread) is in the middle of an import,
# the child runs ``child_works()`` (exit 0 if it returns true), and the parent prints
# "child <exit status>", or "child hung" after 30 s (the child then killed).
FORK_AND_WAIT = """
pid = os.fork()
if pid == 0:
    try:
        code = 0 if child_works() else 3
    except BaseException:
        code = 4
    os._exit(code)
deadline = time.monotonic() + 30
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("child", os.waitstatus_to_exitcode(status))
        break
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("child hung")
        break
    time.sleep(0.01)
importer.join(10)
"""


# A thread is importing configparser (a first call's settings read imports it, when a
# config.ini exists) when the main thread forks: the import is held in the middle for 0.5 s.
# The child's first call reads config.ini and must not wait for that import for ever.
FORK_DURING_IMPORT = """
import os, sys, threading, time, importlib.abc, importlib.machinery
home = os.environ["PERSIST_TO_DISK_HOME"]
os.makedirs(home, mode=0o700)
with open(os.path.join(home, "config.ini"), "w") as handle:
    handle.write("[global_settings]\\nhashsize = 7\\n")
assert "configparser" not in sys.modules
import persist_to_disk as ptd
assert "configparser" not in sys.modules
ptd.config.set_persist_path(os.path.join(os.getcwd(), "cache"))

started = threading.Event()
class SlowLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader
    def create_module(self, spec):
        return self.loader.create_module(spec)
    def exec_module(self, module):
        started.set()
        time.sleep(0.5)  # (in the middle of the import: its module lock is held)
        self.loader.exec_module(module)
class SlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "configparser":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        spec.loader = SlowLoader(spec.loader)
        return spec
sys.meta_path.insert(0, SlowFinder())

@ptd.persistf()
def double(x):
    return 2 * x

importer = threading.Thread(target=lambda: __import__("configparser"))
importer.start()
started.wait(10)
def child_works():
    return double(21) == 42 and ptd.config.get_hashsize() == 7
""" + FORK_AND_WAIT


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_child_forked_while_a_thread_imports_what_a_first_call_needs_does_not_hang(tmp_path):
    assert run(FORK_DURING_IMPORT, tmp_path).stdout.split() == ["child", "0"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("name", ["compaction", "verification"])
def test_a_child_forked_while_a_thread_loads_compaction_or_verification_does_not_hang(
        tmp_path, name):
    """Those two load at first use (``engine/lazy_imports.py``). A thread still *finding* one
    (its import lock held, the module not yet in ``sys.modules``: a slow file system, a
    meta-path finder that sleeps here) when another thread forks: the fork waits for that
    import, so the child can use the module. Without the wait the child hung for ever."""
    code = f"""
import importlib.abc, os, sys, threading, time
import persist_to_disk
from persist_to_disk import engine
full = "persist_to_disk.engine.{name}"
assert full not in sys.modules
started = threading.Event()
class SlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == full:
            started.set()
            time.sleep(1.0)
        return None
sys.meta_path.insert(0, SlowFinder())
attribute = "compact" if "{name}" == "compaction" else "verify_store"
importer = threading.Thread(target=lambda: getattr(engine, attribute))
importer.start()
assert started.wait(10)
def child_works():
    return callable(getattr(engine, attribute))
""" + FORK_AND_WAIT
    assert run(code, tmp_path, timeout=60).stdout.split()[-2:] == ["child", "0"]
