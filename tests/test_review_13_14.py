"""Defects found by the adversarial review of code versions (issue 13) and of expiry and
statistics (issue 14). Each test states the behaviour a user relies on; reproducers with more
variants are in the review report.
"""

import importlib
import sys

import pytest

import persist_to_disk as ptd
from conftest import write_module
from persist_to_disk.cli import main
from persist_to_disk.fingerprint import code_fingerprint


@pytest.fixture
def project_modules(ptd_env, monkeypatch):
    """``load(name, code)``: write ``name.py`` into the project folder and import it."""
    monkeypatch.syspath_prepend(str(ptd_env.project))
    loaded = []

    def load(name: str, code: str):
        write_module(ptd_env.project, f"{name}.py", code)
        sys.modules.pop(name, None)
        loaded.append(name)
        return importlib.import_module(name)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


def fingerprints(load, project, template: str, before: dict, after: dict):
    """Fingerprints of ``f`` in three modules: ``template`` with ``before`` twice (a control:
    the same code must give the same fingerprint) and with ``after``."""
    same_a = load("review_same_a", template.format(**before)).f
    same_b = load("review_same_b", template.format(**before)).f
    edited = load("review_edited", template.format(**after)).f
    return [code_fingerprint(func, str(project)) for func in (same_a, same_b, edited)]


# --- issue 13: what counts as an edit ---------------------------------------------------------


def test_a_module_edited_after_import_and_before_the_first_call_never_files_old_results_as_new(
        python_runner, ptd_env):
    """The process runs the code it imported; if the file changed on disk since, the result
    it computes must not be stored under the new file's fingerprint, or the next run of the
    new code (under code_changes='recompute') returns the old code's result."""
    write_module(ptd_env.project, "edited.py", """
        import persist_to_disk as ptd

        @ptd.persistf(code_changes="recompute")
        def f(x):
            return x + 1
    """)
    first = python_runner("""
        import pathlib, edited
        path = pathlib.Path("edited.py")
        path.write_text(path.read_text().replace("x + 1", "x + 100"))
        print(edited.f(1))
    """, timeout=120)
    assert first.stdout.split() == ["2"], "the imported (old) code ran"
    second = python_runner("import edited; print(edited.f(1))", timeout=120)
    assert second.stdout.split() == ["101"], "the new code's result, not the old code's"


def test_a_class_defined_in_both_branches_of_an_if_counts_by_the_definition_that_runs(
        project_modules, ptd_env):
    template = """
import persist_to_disk as ptd
FAST = True
if FAST:
    class Backend:
        def run(self, x):
            return x * {k}
else:
    class Backend:
        def run(self, x):
            return -x

@ptd.persistf(code_changes="recompute")
def f(x):
    return Backend().run(x)
"""
    same_a, same_b, edited = fingerprints(project_modules, ptd_env.project, template,
                                          {"k": 2}, {"k": 3})
    assert same_a == same_b
    assert edited != same_a, "the class that runs was edited"


def test_the_arguments_of_a_module_level_functools_partial_helper_count_as_code(
        project_modules, ptd_env):
    template = """
import functools
import persist_to_disk as ptd

def _scale(k, x):
    return k * x

scale = functools.partial(_scale, {k})

@ptd.persistf(code_changes="recompute")
def f(x):
    return scale(x)
"""
    same_a, same_b, edited = fingerprints(project_modules, ptd_env.project, template,
                                          {"k": 3}, {"k": 5})
    assert same_a == same_b
    assert edited != same_a, "f(2) went from 6 to 10"


@pytest.mark.parametrize("module", [
    "import consts\nSCALE = consts.BASE * 2\n",
    "try:\n    from consts import BASE as SCALE\nexcept ImportError:\n    SCALE = 3\n",
], ids=["derived from another project module", "imported, with a fallback assignment"])
def test_editing_the_project_constant_a_module_constant_comes_from_counts(
        python_runner, ptd_env, module):
    """The function reads SCALE, whose value comes from ``consts.BASE``: editing BASE changes
    what the function returns, so it changes the fingerprint."""
    write_module(ptd_env.project, "derived.py", module + (
        "import persist_to_disk as ptd\n\n"
        "@ptd.persistf(code_changes='recompute')\n"
        "def f(x):\n"
        "    return x * SCALE\n"))
    seen = []
    for base in (3, 5):
        write_module(ptd_env.project, "consts.py", f"BASE = {base}\n")
        out = python_runner("import derived; print(derived.f.cache_info()['code_fingerprint'])",
                            timeout=120)
        seen.append(out.stdout.split()[-1])
    assert seen[0] != seen[1]


# --- issue 13: ptd compact --drop-old-code ----------------------------------------------------


def test_drop_old_code_keeps_the_version_written_last_when_both_carry_the_same_date(
        project_modules, capsys):
    """Records dated alike (a coarse clock, a copied cache, set_clock): the version written
    after the other is the newest, whatever their tags sort like."""
    ptd.config.set_clock(lambda: 1_700_000_000.0)
    template = """
import persist_to_disk as ptd

@ptd.persistf(version={version!r})
def f(x):
    return x
"""
    project_modules("review_dated", template.format(version="v1")).f(1)
    newest = project_modules("review_dated", template.format(version="v2"))
    newest.f(1)
    assert main(["compact", newest.f.cache_folder(), "--drop-old-code"]) == 0
    capsys.readouterr()
    assert newest.f.is_cached(1), "the result of v2, written last, is kept"


# --- issue 14: expiry and statistics ----------------------------------------------------------


def test_max_age_zero_computes_at_every_call_also_when_the_clock_went_back(project_modules):
    """README: 'max_age=0 computes at every call'. A result dated after now (the clock was
    stepped back, or another machine's clock runs ahead) is not fresh for ever."""
    module = project_modules("review_clock", """
import persist_to_disk as ptd
calls = []

@ptd.persistf(max_age=0)
def f(x):
    calls.append(x)
    return x
""")
    now = [1_700_000_000.0]
    ptd.config.set_clock(lambda: now[0])
    module.f(1)
    now[0] -= 600
    module.f(1)
    assert module.calls == [1, 1]
