"""Code fingerprints (``persist_to_disk.fingerprint``): which edits of a cached function's code
count as a change of its code, and which do not.

Most tests write a small project into the test's project folder, fingerprint a function in a
fresh interpreter (its own hash seed, no bytecode caches), edit one file, fingerprint it again
in another fresh interpreter and compare.
"""

import dis
import functools
import glob
import json
import linecache
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from conftest import write_module
from persist_to_disk.fingerprint import (_code_names, code_fingerprint, code_tag,
                                         parse_code_tag, version_label)

FINGERPRINT = re.compile(r"[0-9a-f]{32}")
NO_BYTECODE = {"PYTHONDONTWRITEBYTECODE": "1"}  # (a pyc of the same second and size is stale)

MAIN = '''\
"""The pipeline step that is cached."""
import json
import os

import persist_to_disk as ptd

import helpers
from helpers import Scaler, scale

OFFSET = 10
KINDS = frozenset({"alpha", "beta", "gamma", "delta", "epsilon"})
UNUSED = 5


@ptd.persistf(hashsize=8)
def compute(x, factor=2):
    """Scale x and describe it."""
    # scale first, then shift
    total = scale(x, factor) + OFFSET
    total += Scaler(factor).apply(x)
    total += helpers.shift(x)
    return json.dumps({"total": total, "kinds": sorted(KINDS)})


def unrelated(y):
    return y * 3


def make_applier(fn):
    def apply(x):
        return fn(x) + 1
    return apply


applied = make_applier(helpers.shift)


@ptd.persistf()
@helpers.logged
def decorated(x):
    return helpers.cached_offset(x)
'''

HELPERS = '''\
"""Project helpers."""
import functools
import math

import persist_to_disk as ptd

LIMIT = 100


def scale(x, factor):
    return clamp(x * factor)


def clamp(value):
    return min(value, LIMIT)


class Scaler:
    """Multiplies."""

    def __init__(self, factor):
        self.factor = factor

    def apply(self, x):
        return x * self.factor


def shift(x):
    return x + 1


def not_used():
    return math.pi


def logged(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    return wrapper


@ptd.persistf()
def cached_offset(x):
    return x + 5
'''

RUNNER = '''\
import persist_to_disk as ptd


class Runner:
    rounds = 2

    @ptd.persistf()
    def run(self, x):
        return self.step(x) * self.rounds

    def step(self, x):
        return x + 1

    def other(self, x):
        return x - 1
'''

CHAIN = '''\
def start(x):
    return first(x)


def first(x):
    return second(x)


def second(x):
    return third(x)


def third(x):
    return fourth(x)


def fourth(x):
    return x + 1


def ping(n):
    return pong(n - 1) if n > 0 else 0


def pong(n):
    return ping(n - 1) if n > 0 else 1
'''

PROJECT = {"main.py": MAIN, "helpers.py": HELPERS, "runner.py": RUNNER, "chain.py": CHAIN}

FINGERPRINTS = '''
import importlib, json, sys
sys.path[:0] = {paths!r}
from persist_to_disk.fingerprint import code_fingerprint
result = {{}}
for target in {targets!r}:
    module, _, name = target.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    result[target] = code_fingerprint(obj, {root!r}, depth={depth})
print(json.dumps(result))
'''


def write_project(folder: Path, files: dict) -> None:
    for name, text in files.items():
        write_module(folder, name, text)


def fingerprints(python_runner, project: Path, targets, seed: str = "0", depth: int = 3,
                 paths=()) -> dict:
    """``{"module:qualname": fingerprint}`` computed in a fresh interpreter run in the project
    folder (so its modules import), with ``paths`` in front of ``sys.path``."""
    code = FINGERPRINTS.format(paths=[str(p) for p in paths], targets=list(targets),
                               root=str(project), depth=depth)
    result = python_runner(code, cwd=project, hash_seed=seed, timeout=60, extra_env=NO_BYTECODE)
    return json.loads(result.stdout.strip().splitlines()[-1])


def edit(folder: Path, name: str, *replacements) -> None:
    """Replace text in ``folder/name``: pairs ``(old, new)``, each old text present once."""
    path = folder / name
    text = path.read_text()
    for old, new in replacements:
        assert text.count(old) == 1, f"{old!r} should be in {name} once"
        text = text.replace(old, new)
    path.write_text(text)


# --- edits that must not count ----------------------------------------------------------------

UNCHANGED = {  # what: (function, file, [(old text, new text)])
    "a comment": ("main:compute", "main.py", [("# scale first, then shift",
                                               "# shift after scaling (reworded)")]),
    "the docstring": ("main:compute", "main.py", [
        ('"""Scale x and describe it."""',
         '"""Scale x, then describe it.\n\n    Longer text.\n    """')]),
    "a docstring of a helper class": ("main:compute", "helpers.py",
                                      [('"""Multiplies."""', '"""Times."""')]),
    "blank lines, also above the function": ("main:compute", "main.py", [
        ("    total += Scaler(factor).apply(x)\n", "\n\n    total += Scaler(factor).apply(x)\n\n"),
        ("UNUSED = 5\n", "UNUSED = 5\n\n\n\n\n")]),
    "line breaks, spacing, parentheses and quotes": ("main:compute", "main.py", [
        ("total = scale(x, factor) + OFFSET",
         "total = (scale(\n        x,\n        factor ,\n    )\n        + (OFFSET))"),
        ('{"total": total, "kinds": sorted(KINDS)}',
         "{'total' : total,\n                       'kinds': sorted( KINDS )}")]),
    "the order of module-level imports": ("main:compute", "main.py", [
        ("import json\nimport os\n", "import os\nimport json\n"),
        ("from helpers import Scaler, scale", "from helpers import scale, Scaler")]),
    "an unrelated function of the same module": ("main:compute", "main.py",
                                                 [("return y * 3", "return y * 4")]),
    "an unrelated function of a helper module": ("main:compute", "helpers.py",
                                                 [("return math.pi", "return math.e")]),
    "a module constant the function does not read": ("main:compute", "main.py",
                                                     [("UNUSED = 5", "UNUSED = 6")]),
    "the order of the helpers' definitions": ("main:compute", "helpers.py", [
        ("def shift(x):\n    return x + 1\n\n\n", ""),
        ("def scale(", "def shift(x):\n    return x + 1\n\n\ndef scale(")]),
    "the options of @persistf": ("main:compute", "main.py", [
        ("@ptd.persistf(hashsize=8)", "@ptd.persistf(hashsize=16, version=2)")]),
    "the options of a cached helper's @persistf": ("main:decorated", "helpers.py", [
        ("@ptd.persistf()\ndef cached_offset", "@ptd.persistf(hashsize=16)\ndef cached_offset")]),
}


@pytest.mark.parametrize("what", sorted(UNCHANGED))
def test_edits_that_leave_the_code_the_same_keep_the_fingerprint(python_runner, ptd_env, what):
    project = ptd_env.project
    write_project(project, PROJECT)
    target, name, replacements = UNCHANGED[what]
    before = fingerprints(python_runner, project, [target], seed="1")
    edit(project, name, *replacements)
    after = fingerprints(python_runner, project, [target], seed="2")
    assert FINGERPRINT.fullmatch(before[target])
    assert after == before, f"editing {what} changed the fingerprint"


# --- edits that must count --------------------------------------------------------------------

CHANGED = {
    "the body": ("main:compute", "main.py", [("+ OFFSET", "- OFFSET")]),
    "a default value": ("main:compute", "main.py", [("factor=2", "factor=3")]),
    "a module constant the function reads": ("main:compute", "main.py",
                                             [("OFFSET = 10", "OFFSET = 11")]),
    "an element of a frozenset constant it reads": ("main:compute", "main.py",
                                                    [('"epsilon"', '"zeta"')]),
    "a decorator other than @persistf": (
        "main:compute", "main.py", [("import json\n", "import functools\nimport json\n"),
                                    ("def compute(", "@functools.lru_cache()\ndef compute(")]),
    "a helper it reaches as helpers.shift": ("main:compute", "helpers.py",
                                             [("return x + 1", "return x + 2")]),
    "a helper of its helper (two steps away)": ("main:compute", "helpers.py",
                                                [("min(value, LIMIT)", "max(value, LIMIT)")]),
    "a constant a helper reads": ("main:compute", "helpers.py", [("LIMIT = 100", "LIMIT = 99")]),
    "a method of a helper class": ("main:compute", "helpers.py",
                                   [("return x * self.factor", "return x * self.factor * 2")]),
    "the constructor of a helper class": ("main:compute", "helpers.py",
                                          [("self.factor = factor", "self.factor = factor + 1")]),
    "a project function a closure captured": ("main:applied", "helpers.py",
                                              [("return x + 1", "return x - 1")]),
    "the closure's own body": ("main:applied", "main.py", [("fn(x) + 1", "fn(x) + 2")]),
    "a project decorator under @persistf": ("main:decorated", "helpers.py",
                                            [("return func(*args, **kwargs)",
                                              "return func(*args, **kwargs) or 0")]),
    "a helper that is cached with @persistf itself": ("main:decorated", "helpers.py",
                                                      [("return x + 5", "return x + 6")]),
    "a method the method calls on self": ("runner:Runner.run", "runner.py",
                                          [("return x + 1", "return x + 3")]),
    "a class constant the method reads on self": ("runner:Runner.run", "runner.py",
                                                  [("rounds = 2", "rounds = 3")]),
}


@pytest.mark.parametrize("what", sorted(CHANGED))
def test_edits_of_the_code_or_of_project_code_it_uses_change_the_fingerprint(
        python_runner, ptd_env, what):
    project = ptd_env.project
    write_project(project, PROJECT)
    target, name, replacements = CHANGED[what]
    before = fingerprints(python_runner, project, [target], seed="3")
    edit(project, name, *replacements)
    after = fingerprints(python_runner, project, [target], seed="3")
    assert FINGERPRINT.fullmatch(after[target])
    assert after[target] != before[target], f"editing {what} did not change the fingerprint"


def test_editing_a_method_the_method_does_not_call_keeps_the_fingerprint(python_runner,
                                                                         ptd_env):
    project = ptd_env.project
    write_project(project, PROJECT)
    targets = ["runner:Runner.run", "main:applied"]
    before = fingerprints(python_runner, project, targets)
    edit(project, "runner.py", ("return x - 1", "return x - 2"))
    edit(project, "helpers.py", ("min(value, LIMIT)", "max(value, LIMIT)"))  # (not shift)
    assert fingerprints(python_runner, project, targets) == before


def test_reverting_an_edit_gives_the_old_fingerprint_back(python_runner, ptd_env):
    project = ptd_env.project
    write_project(project, PROJECT)
    original = fingerprints(python_runner, project, ["main:compute"])
    edit(project, "helpers.py", ("min(value, LIMIT)", "max(value, LIMIT)"))
    edited = fingerprints(python_runner, project, ["main:compute"])
    edit(project, "helpers.py", ("max(value, LIMIT)", "min(value, LIMIT)"))
    reverted = fingerprints(python_runner, project, ["main:compute"])
    assert edited != original
    assert reverted == original


def test_the_fingerprint_is_the_same_under_every_hash_seed(python_runner, ptd_env):
    """The function reads a frozenset of strings, whose iteration order follows the seed."""
    project = ptd_env.project
    write_project(project, PROJECT)
    targets = ["main:compute", "main:applied", "runner:Runner.run", "chain:ping"]
    runs = [fingerprints(python_runner, project, targets, seed=seed)
            for seed in ("0", "1", "4242", "random")]
    assert all(run == runs[0] for run in runs), runs
    assert len(set(runs[0].values())) == len(targets)


def test_helpers_count_up_to_depth_steps_away(python_runner, ptd_env):
    """start -> first -> second -> third -> fourth: with depth=3, third is the last that
    counts."""
    project = ptd_env.project
    write_project(project, PROJECT)
    before = {depth: fingerprints(python_runner, project, ["chain:start"], depth=depth)
              for depth in (3, 4)}
    edit(project, "chain.py", ("return x + 1", "return x + 2"))  # fourth, four steps away
    after_fourth = {depth: fingerprints(python_runner, project, ["chain:start"], depth=depth)
                    for depth in (3, 4)}
    edit(project, "chain.py", ("return fourth(x)", "return fourth(x) + 0"))  # third
    after_third = fingerprints(python_runner, project, ["chain:start"], depth=3)
    assert after_fourth[3] == before[3]
    assert after_fourth[4] != before[4]
    assert after_third != after_fourth[3]


def test_mutually_recursive_helpers_are_followed_once(python_runner, ptd_env):
    project = ptd_env.project
    write_project(project, PROJECT)
    before = fingerprints(python_runner, project, ["chain:ping", "chain:pong"])
    edit(project, "chain.py", ("else 1", "else 2"))  # pong's body
    after = fingerprints(python_runner, project, ["chain:ping", "chain:pong"])
    assert after["chain:ping"] != before["chain:ping"]
    assert after["chain:pong"] != before["chain:pong"]


def test_code_in_site_packages_or_outside_the_project_does_not_count(python_runner, ptd_env):
    """A package folder inside the project (a virtual environment there) and a module beside
    the project are library code; the project helper next to them is not."""
    project = ptd_env.project
    write_project(project, PROJECT)
    site_packages = project / "venv" / "lib" / "python3" / "site-packages"
    outside = ptd_env.tmp / "elsewhere"
    write_module(site_packages, "vendored.py", "def helper(x):\n    return x + 1\n")
    write_module(outside, "outside.py", "def helper(x):\n    return x + 1\n")
    write_module(project, "uses_libs.py", '''\
        import json
        import helpers
        import outside
        import vendored


        def compute(x):
            return json.dumps(vendored.helper(x) + outside.helper(x) + helpers.shift(x))
        ''')
    paths = [site_packages, outside]
    before = fingerprints(python_runner, project, ["uses_libs:compute"], paths=paths)
    edit(site_packages, "vendored.py", ("x + 1", "x + 2"))
    edit(outside, "outside.py", ("x + 1", "x + 2"))
    libraries_edited = fingerprints(python_runner, project, ["uses_libs:compute"], paths=paths)
    edit(project, "helpers.py", ("return x + 1", "return x + 2"))
    helper_edited = fingerprints(python_runner, project, ["uses_libs:compute"], paths=paths)
    assert libraries_edited == before
    assert helper_edited != before


REPORT_SCRIPT = '''\
import sys

from persist_to_disk.fingerprint import code_fingerprint

LIMIT = 3


def helper(x):
    return x + LIMIT


def compute(x):
    """Report."""
    return helper(x) * 2


print(code_fingerprint(compute, sys.argv[1]))
'''


def run_script(path: Path, project: Path, home: Path, seed: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_TO_DISK_")}
    env.update(NO_BYTECODE, PYTHONHASHSEED=seed, PERSIST_TO_DISK_HOME=str(home))
    result = subprocess.run([sys.executable, str(path), str(project)], cwd=str(path.parent),
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_script_run_as_main_is_fingerprinted_from_its_source_with_its_own_helpers(ptd_env):
    """The script is outside the project folder: its own helpers count all the same."""
    script = write_module(ptd_env.tmp / "scripts", "report.py", REPORT_SCRIPT)
    first = run_script(script, ptd_env.project, ptd_env.home, seed="1")
    again = run_script(script, ptd_env.project, ptd_env.home, seed="2")
    edit(script.parent, "report.py", ('"""Report."""', '"""Report, reworded."""'))
    docstring_edited = run_script(script, ptd_env.project, ptd_env.home, seed="3")
    edit(script.parent, "report.py", ("x + LIMIT", "x - LIMIT"))
    helper_edited = run_script(script, ptd_env.project, ptd_env.home, seed="4")
    edit(script.parent, "report.py", ("x - LIMIT", "x + LIMIT"), ("LIMIT = 3", "LIMIT = 4"))
    constant_edited = run_script(script, ptd_env.project, ptd_env.home, seed="5")
    assert FINGERPRINT.fullmatch(first)
    assert again == docstring_edited == first
    assert len({first, helper_edited, constant_edited}) == 3


PYTHON_C = '''
from persist_to_disk.fingerprint import code_fingerprint
LIMIT = 3
def helper(x):
    return x + LIMIT
def compute(x):
    return helper(x) * 2
print(code_fingerprint(compute, "."))
'''


def test_python_c_functions_are_fingerprinted_from_their_bytecode_the_same_in_every_run(
        python_runner):
    first = python_runner(PYTHON_C, hash_seed="1", timeout=60).stdout.strip()
    again = python_runner(PYTHON_C, hash_seed="2", timeout=60).stdout.strip()
    helper_edited = python_runner(PYTHON_C.replace("x + LIMIT", "x - LIMIT"),
                                  timeout=60).stdout.strip()
    constant_edited = python_runner(PYTHON_C.replace("LIMIT = 3", "LIMIT = 4"),
                                    timeout=60).stdout.strip()
    assert FINGERPRINT.fullmatch(first)
    assert again == first
    assert len({first, helper_edited, constant_edited}) == 3


def _notebook(cells, monkeypatch, tag: str) -> dict:
    """Run ``cells`` the way IPython does: each compiled under its own file name, its source
    kept in linecache, all in one ``__main__`` namespace."""
    namespace = {"__name__": "__main__"}
    for number, cell in enumerate(cells):
        cell = textwrap.dedent(cell)
        filename = f"<ipython-input-{number}-{tag}>"
        monkeypatch.setitem(linecache.cache, filename,
                            (len(cell), None, cell.splitlines(keepends=True), filename))
        exec(compile(cell, filename, "exec"), namespace)
    return namespace


def test_a_notebook_cell_kept_in_linecache_is_fingerprinted_from_its_source(monkeypatch,
                                                                           ptd_env):
    helper_cell = "LIMIT = 3\ndef helper(x):\n    return x + LIMIT\n"
    compute_cell = 'def compute(x):\n    """Doc."""\n    return helper(x) * 2\n'
    root = str(ptd_env.project)
    first = _notebook([helper_cell, compute_cell], monkeypatch, "a")
    reworded = _notebook([helper_cell, compute_cell.replace("Doc.", "Other words.")],
                         monkeypatch, "b")
    edited = _notebook([helper_cell.replace("x + LIMIT", "x - LIMIT"), compute_cell],
                       monkeypatch, "c")
    fingerprint = code_fingerprint(first["compute"], root)
    assert code_fingerprint(reworded["compute"], root) == fingerprint
    assert code_fingerprint(edited["compute"], root) != fingerprint


def test_code_without_source_is_fingerprinted_from_its_code_object(ptd_env):
    def defined(body: str) -> types.FunctionType:
        namespace = {"__name__": "exec_module"}
        exec(compile(f"def f(x, k=2):\n    return {body}\n", "<string>", "exec"), namespace)
        return namespace["f"]
    root = str(ptd_env.project)
    assert code_fingerprint(defined("x + k"), root) == code_fingerprint(defined("x + k"), root)
    assert code_fingerprint(defined("x + k"), root) != code_fingerprint(defined("x - k"), root)


class _Exploding:
    """A callable whose every attribute lookup fails."""

    def __getattr__(self, name):
        raise RuntimeError(f"no {name}")

    def __call__(self):
        return None


@pytest.mark.parametrize("func", [len, functools.partial(int, base=2), dict, _Exploding(),
                                  lambda x: x, print, str.join, "".join],
                         ids=["builtin", "partial", "class", "exploding", "lambda", "print",
                              "method descriptor", "bound builtin"])
def test_code_fingerprint_never_raises_and_always_gives_32_hex_digits(func, ptd_env):
    first = code_fingerprint(func, str(ptd_env.project))
    assert FINGERPRINT.fullmatch(first)
    assert code_fingerprint(func, str(ptd_env.project)) == first


def _dis_names(code: types.CodeType, globals_: set, chains: set, attributes: set) -> None:
    """The reference: what ``dis`` says ``code`` reads by name."""
    chain, loaded, stored, loaded_chains = None, set(), set(), set()
    for instruction in dis.get_instructions(code):
        op = instruction.opname
        if op in ("EXTENDED_ARG", "CACHE"):
            continue
        if op == "LOAD_GLOBAL":
            globals_.add(instruction.argval)
            chain, into = [instruction.argval], chains
        elif op in ("LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"):
            loaded.add(instruction.argval)
            chain, into = [instruction.argval], loaded_chains
        elif op in ("LOAD_ATTR", "LOAD_METHOD"):
            attributes.add(instruction.argval)
            if chain is not None:
                chain.append(instruction.argval)
                into.add(tuple(chain))
        elif op == "LOAD_SUPER_ATTR":
            attributes.add(instruction.argval)
            chain = None
        else:
            if op == "STORE_NAME":
                stored.add(instruction.argval)
            chain = None
    globals_.update(loaded - stored)  # (a name a class body stores is the class's own)
    chains.update(c for c in loaded_chains if c[0] not in stored)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _dis_names(const, globals_, chains, attributes)


@pytest.mark.parametrize("module", ["json.encoder", "textwrap", "ast", "dataclasses", "inspect"])
def test_the_fast_bytecode_reader_finds_the_names_dis_finds(module):
    """The fingerprint reads global names and attribute chains straight from the bytecode (ten
    times faster than ``dis``); whole standard modules (long functions, EXTENDED_ARG, classes,
    comprehensions) must give what ``dis`` gives."""
    path = __import__(module, fromlist=["_"]).__file__
    code = compile(Path(path).read_text(encoding="utf-8"), path, "exec")
    found = _code_names(code)
    expected = (set(), set(), set())
    _dis_names(code, *expected)
    assert (found.globals, found.chains, found.attributes) == expected
    assert found.chains  # (the comparison covers attribute chains)


# --- the same fingerprint on every Python ------------------------------------------------------

SYNTAX = '''\
"""Constructs whose AST changed shape between Python versions."""
import asyncio
from dataclasses import dataclass

RATE = 1.5e-3


@dataclass
class Point:
    x: int = 0
    y: float = 1.5

    @property
    def label(self) -> str:
        return f"{self.x!r:>10} {self.y:{self.x}.{3}f} {'q'}" f"tail"


def kitchen(a, b=RATE, /, c: "int" = 3, *args, d=b"\\x00", **kwargs) -> dict:
    """Many constructs."""
    try:
        value = a[1:2, ::3] + [i * j for i in range(3) for j in range(i) if i] + [*args]
    except (ValueError, KeyError) as error:
        raise RuntimeError("bad") from error
    else:
        pass
    finally:
        value = None if a else value
    with open("x") as handle, open("y"):
        global RATE
        square = lambda q: q ** 2  # noqa: E731
        return {**kwargs, "n": (n := 10), "p": Point(1, 2).label, "s": {1, 2}, "t": (1j, ...),
                "c": 1 < a <= 3, "f": square, "u": -a, "not": not a, "v": handle, "n2": n}


async def waiter(items):
    async with asyncio.Lock():
        async for item in items:
            await asyncio.sleep(item)
    return [x async for x in items]
'''

STUB_PACKAGE = '''\
import functools


def persistf(func=None, **options):
    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            return f(*args, **kwargs)
        return wrapper
    return decorate(func) if func is not None else decorate
'''


def _pythons() -> dict:
    """``{"3.N": interpreter}`` for each Python 3.9..3.13 found on PATH or under pyenv."""
    candidates = {shutil.which(f"python3.{minor}") for minor in range(9, 14)}
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates.update(glob.glob(os.path.join(pyenv, "versions", "3.*", "bin", "python3")))
    found = {}
    for interpreter in sorted(c for c in candidates if c):
        try:
            result = subprocess.run([interpreter, "-c", "import sys; print(sys.version_info[1])"],
                                    capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0 and result.stdout.strip().isdigit() \
                and 9 <= int(result.stdout) <= 13:
            found.setdefault(f"3.{int(result.stdout)}", interpreter)
    return found


def test_the_same_code_gives_the_same_fingerprint_on_every_python_3_9_to_3_13(ptd_env):
    """fingerprint.py uses the standard library alone: it is run by every Python installed
    here, next to a stand-in persist_to_disk package, on the same project."""
    pythons = _pythons()
    if len(pythons) < 2:
        pytest.skip(f"one Python 3.9..3.13 installed here ({sorted(pythons)}): nothing to "
                    "compare")
    library = ptd_env.tmp / "lib"
    write_module(library, "persist_to_disk/__init__.py", STUB_PACKAGE)
    shutil.copy(Path(sys.modules["persist_to_disk.fingerprint"].__file__),
                library / "persist_to_disk" / "fingerprint.py")
    project = ptd_env.project
    write_project(project, PROJECT)
    write_module(project, "syntax.py", SYNTAX)
    code = FINGERPRINTS.format(
        paths=[str(library), str(project)], root=str(project), depth=3,
        targets=["main:compute", "main:applied", "runner:Runner.run", "syntax:kitchen",
                 "syntax:waiter", "syntax:Point"])
    results = {}
    for version, interpreter in sorted(pythons.items()):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PERSIST"))}
        env.update(NO_BYTECODE, PYTHONHASHSEED="random")
        result = subprocess.run([interpreter, "-c", code], cwd=str(project), env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"Python {version}: {result.stderr}"
        results[version] = json.loads(result.stdout.strip().splitlines()[-1])
    first = next(iter(results.values()))
    assert all(result == first for result in results.values()), results


# --- code tags and version labels ---------------------------------------------------------------


def test_a_code_tag_is_the_fingerprint_then_the_version_label_and_parses_back():
    fingerprint = "0123456789abcdef0123456789abcdef"
    assert code_tag(fingerprint, None) == fingerprint
    assert code_tag(fingerprint, "'v2'") == fingerprint + "|'v2'"
    assert code_tag("", None) == ""
    assert code_tag("", "3") == "|3"
    for fingerprint_, label in [(fingerprint, None), (fingerprint, "'a|b'"), ("", "3"),
                                ("", None), (fingerprint, "")]:
        assert parse_code_tag(code_tag(fingerprint_, label)) == (fingerprint_, label)


def test_a_code_tag_is_ascii_and_at_most_200_characters():
    tag = code_tag("f" * 32, "é" * 500)
    assert len(tag) == 200
    assert tag.isascii()
    assert parse_code_tag(tag)[0] == "f" * 32


def test_a_version_label_is_ascii_short_and_the_same_in_every_process(python_runner):
    assert version_label("v2") == "'v2'"
    assert version_label(3) == "3"
    assert version_label(("model", 2)) == "('model', 2)"
    assert version_label("é") == "'\\xe9'"
    long = version_label("x" * 500)
    assert len(long) == 100 and long.startswith("'xxx") and re.search(r"\.\.\.#[0-9a-f]{8}$", long)
    code = ("from persist_to_disk.fingerprint import version_label\n"
            "print(version_label((frozenset('abcdefgh'), {'k', 'l', 'm'}, object())))")
    labels = {python_runner(code, hash_seed=seed, timeout=60).stdout for seed in "123"}
    assert len(labels) == 1
    assert "0x" not in labels.pop()  # (no memory address)


def test_a_constant_computed_at_import_counts_by_its_code_not_by_its_value(python_runner,
                                                                           ptd_env):
    """Machines sharing a cache import the same code into other values (a host name, a path, an
    environment variable): they must agree on the fingerprint, while an edit of the
    assignment still counts."""
    project = ptd_env.project
    write_project(project, {"machine.py": '''
        import os
        MACHINE = os.environ.get("PTD_TEST_MACHINE", "?")
        HERE = os.path.dirname(os.path.abspath(__file__))

        def where(x):
            return (MACHINE, HERE, x)
    '''})

    def on(machine):
        code = FINGERPRINTS.format(paths=[str(project)], targets=["machine:where"],
                                   root=str(project), depth=3)
        result = python_runner(code, cwd=project, timeout=60,
                               extra_env={"PTD_TEST_MACHINE": machine, **NO_BYTECODE})
        return json.loads(result.stdout.strip().splitlines()[-1])["machine:where"]

    assert on("A") == on("B")
    before = on("A")
    edit(project, "machine.py", ('"PTD_TEST_MACHINE", "?"', '"PTD_TEST_MACHINE", "unknown"'))
    assert on("A") != before


def test_two_long_versions_that_begin_alike_get_different_labels():
    """A label is cut to 100 characters; the hash of the whole text at its end keeps versions
    apart that agree on the part that is kept (ptd stats, --drop-old-code tell them apart)."""
    prefix = "dataset=/data/projects/experiment/inputs/2024-06-01/cleaned-features.parquet" * 2
    first, second = version_label((prefix, 1)), version_label((prefix, 2))
    assert first != second
    assert len(first) == len(second) == 100
    assert first[:88] == second[:88] == ascii((prefix, 1))[:88]
    assert version_label((prefix, 1)) == first


# --- a file edited after its module was imported ------------------------------------------------

STALE_MAIN = '''
import stale_helpers
from stale_helpers import Box

OFFSET = 1


def compute(x):
    return stale_helpers.grow(x) + Box().size(x) + OFFSET
'''

STALE_HELPERS = '''
def grow(x):
    return x + 1


class Box:
    def size(self, x):
        return x * 2
'''

STALE_EDITS = {  # what: (file, old text, new text); the same number of lines
    "the function": ("stale_main.py", "+ OFFSET", "- OFFSET"),
    "a helper function in another module": ("stale_helpers.py", "x + 1", "x + 100"),
    "a method of a helper class": ("stale_helpers.py", "x * 2", "x * 3"),
    "a constant the function reads": ("stale_main.py", "OFFSET = 1", "OFFSET = 2"),
}

IMPORT_EDIT_FINGERPRINT = '''
import pathlib, sys
sys.path.insert(0, {project!r})
{before}
path = pathlib.Path({project!r}) / {file!r}
path.write_text(path.read_text().replace({old!r}, {new!r}))
import stale_main  # (when imported above already: no effect, the old code runs)
from persist_to_disk.fingerprint import code_fingerprint
print(code_fingerprint(stale_main.compute, {project!r}))
'''


def edit_while_running(python_runner, project: Path, what: str, imported_first: bool) -> str:
    """The fingerprint computed by a process that edits a file after it started: after it
    imported the modules (``imported_first``: it runs the old code) or before (the new)."""
    file, old, new = STALE_EDITS[what]
    code = IMPORT_EDIT_FINGERPRINT.format(project=str(project), file=file, old=old, new=new,
                                          before="import stale_main" if imported_first else "")
    result = python_runner(code, cwd=project, timeout=60, extra_env=NO_BYTECODE)
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("what", sorted(STALE_EDITS))
def test_a_file_edited_after_its_module_was_imported_is_fingerprinted_as_the_code_that_runs(
        python_runner, ptd_env, what):
    """The process runs the code it imported: its fingerprint must not be that of the edited
    file (a fresh process running the new code), or the old code's results would be filed
    under the new code. It is the same in every process that runs the same old code."""
    project = ptd_env.project
    files = {"stale_main.py": STALE_MAIN, "stale_helpers.py": STALE_HELPERS}
    write_project(project, files)
    old_code = fingerprints(python_runner, project, ["stale_main:compute"])["stale_main:compute"]
    stale = edit_while_running(python_runner, project, what, imported_first=True)
    new_code = fingerprints(python_runner, project, ["stale_main:compute"])["stale_main:compute"]
    write_project(project, files)
    stale_again = edit_while_running(python_runner, project, what, imported_first=True)
    assert FINGERPRINT.fullmatch(stale)
    assert new_code != old_code
    assert stale != new_code, f"{what}: the edited file was fingerprinted, not the code that runs"
    assert stale_again == stale


def test_a_file_edited_after_the_process_started_but_before_the_import_counts_by_its_source(
        python_runner, ptd_env):
    """A long-running process (a notebook kernel) that imports a module after it was edited runs
    the edited code: its fingerprint is the one every fresh process gives the same code."""
    project = ptd_env.project
    write_project(project, {"stale_main.py": STALE_MAIN, "stale_helpers.py": STALE_HELPERS})
    for what in sorted(STALE_EDITS):
        running = edit_while_running(python_runner, project, what, imported_first=False)
        fresh = fingerprints(python_runner, project, ["stale_main:compute"])
        assert running == fresh["stale_main:compute"], what


# --- module globals: what their value comes from counts -----------------------------------------

GLOBALS_MAIN = '''
import functools
import pathlib

import consts
from cfg import *
from tools import scaled, applied

SCALE = consts.BASE * 2
NAMES = ["a", "b"]
N = len(NAMES)


def _k():
    return 3


K = _k()


def inc(x):
    return x + 1


def dbl(x):
    return x * 2


STEPS = (inc, dbl)
PARAMS = {"lr": 0.1}
DATA = pathlib.Path("v1.csv")
LR = LR * 2


def compute(x):
    for step in STEPS:
        x = step(x)
    return (x * SCALE * N * K * PARAMS["lr"] * LR, DATA.name, scaled(x), applied(x))
'''

GLOBALS_FILES = {
    "globals_main.py": GLOBALS_MAIN,
    "consts.py": "BASE = 3\n",
    "cfg.py": "LR = 0.1\n",
    "tools.py": '''
import functools


def _scale(k, x):
    return k * x


def _apply(x, fn):
    return fn(x)


def _double(x):
    return x * 2


scaled = functools.partial(_scale, 3)
applied = functools.partial(_apply, fn=_double)
''',
}

GLOBAL_EDITS = {  # what: (file, old text, new text)
    "a project constant a constant is computed from": ("consts.py", "BASE = 3", "BASE = 5"),
    "a list a constant is computed from": ("globals_main.py", '["a", "b"]', '["a", "b", "c"]'),
    "the function that computes a constant": ("globals_main.py", "return 3", "return 4"),
    "a function in a tuple of steps": ("globals_main.py", "x + 1", "x + 10"),
    "a dict of settings": ("globals_main.py", '"lr": 0.1', '"lr": 0.5'),
    "a path": ("globals_main.py", "v1.csv", "v2.csv"),
    "a constant star-imported and then derived": ("cfg.py", "LR = 0.1", "LR = 0.3"),
    "an argument of an imported functools.partial": ("tools.py", "(_scale, 3)", "(_scale, 5)"),
    "a function a functools.partial is given": ("tools.py", "x * 2", "x * 3"),
}


@pytest.mark.parametrize("what", sorted(GLOBAL_EDITS))
def test_editing_what_a_global_the_function_reads_is_made_of_changes_the_fingerprint(
        python_runner, ptd_env, what):
    """A global counts by the code that assigns it and by what that code reads in turn (other
    constants, project modules, project functions), whatever its type; one an import binds
    counts by its value (a ``functools.partial`` by its function and its arguments)."""
    project = ptd_env.project
    write_project(project, GLOBALS_FILES)
    before = fingerprints(python_runner, project, ["globals_main:compute"], seed="4")
    edit(project, *GLOBAL_EDITS[what][:1], GLOBAL_EDITS[what][1:])
    after = fingerprints(python_runner, project, ["globals_main:compute"], seed="5")
    assert after != before, f"editing {what} did not change the fingerprint"


def test_editing_a_global_no_counted_code_reads_keeps_the_fingerprint(python_runner, ptd_env):
    project = ptd_env.project
    write_project(project, GLOBALS_FILES)
    edit(project, "globals_main.py", ("DATA = ", 'UNUSED = {"k": 1}\nDATA = '))
    before = fingerprints(python_runner, project, ["globals_main:compute"])
    edit(project, "globals_main.py", ('{"k": 1}', '{"k": 2}'))
    assert fingerprints(python_runner, project, ["globals_main:compute"]) == before


SPAWN_SCRIPT = '''
import multiprocessing
import sys

from persist_to_disk.fingerprint import code_fingerprint

FACTOR = 3


def helper(x):
    return x * FACTOR


def compute(x):
    return helper(x)


def fingerprint(project):
    return code_fingerprint(compute, project)


if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        worker = pool.apply_async(fingerprint, (sys.argv[1],)).get(timeout=60)
    print(fingerprint(sys.argv[1]), worker)
'''


def test_a_script_s_function_has_one_fingerprint_in_the_script_and_its_spawn_workers(ptd_env):
    """Spawn workers import the script as ``__mp_main__``: it is the script all the same, and
    its own helpers count there too although it is outside the project folder."""
    script = write_module(ptd_env.tmp / "scripts", "spawned.py", SPAWN_SCRIPT)
    parent, worker = run_script(script, ptd_env.project, ptd_env.home, seed="1").split()
    assert FINGERPRINT.fullmatch(parent)
    assert worker == parent
