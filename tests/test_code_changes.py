"""What editing a cached function's code does, under each ``code_changes`` policy, and what
``version=`` does (README: "When the code changes").

Each scenario is a project folder with a module ``pipeline.py`` (the cached function) and
``helpers.py`` (a project helper it calls). Every step runs in a fresh interpreter with its own
hash seed, as a user's next run would, after the files were edited on disk. The function
appends a line to ``computed.log`` whenever it really runs, so a test sees whether a call
computed or hit.
"""

import json
import threading
import textwrap

import pytest

import persist_to_disk as ptd
from conftest import write_module
from persist_to_disk.keying import call_digest

PIPELINE = '''
import os
import persist_to_disk as ptd
from helpers import scale

OFFSET = {offset}

@ptd.persistf({options})
def f(x):
    """Docstring {doc}."""
    # comment {comment}
    with open(os.path.join(os.path.dirname(__file__), "computed.log"), "a") as log:
        log.write("computed\\n")
    return scale(x) + OFFSET + {body}
'''

HELPERS = '''
def scale(x):
    return x * {factor}
'''

RUN = '''
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import pipeline
    first = pipeline.f(2)
    second = pipeline.f(2)
print(json.dumps({
    "result": first, "again": second,
    "warnings": [str(w.message) for w in caught if w.category.__name__ == "PersistWarning"],
    "fingerprint": pipeline.f.cache_info()["code_fingerprint"],
    "entries": pipeline.f.cache_info()["entries"],
}))
'''


class Project:
    """The scenario's files, written again for each step with what the step edits."""

    def __init__(self, folder, runner):
        self.folder = folder
        self.runner = runner
        self.settings = dict(offset=1, options="", doc="one", comment="one", body=0, factor=10)

    def write(self, **edits):
        self.settings.update(edits)
        write_module(self.folder, "pipeline.py", PIPELINE.format(**self.settings))
        write_module(self.folder, "helpers.py", HELPERS.format(**self.settings))

    def run(self, env=None, **edits):
        """Write the files with ``edits`` and run a fresh interpreter: its output, plus how
        many times the function computed in it."""
        self.write(**edits)
        log = self.folder / "computed.log"
        before = len(log.read_text().splitlines()) if log.exists() else 0
        result = self.runner(RUN, extra_env=env)
        out = json.loads(result.stdout.strip().splitlines()[-1])
        out["computed"] = len(log.read_text().splitlines()) - before
        return out


@pytest.fixture
def project(ptd_env, python_runner):
    return Project(ptd_env.project, python_runner)


# --- warn (the default) --------------------------------------------------------------------
def test_by_default_an_edited_function_returns_its_stored_result_and_warns_once(project):
    assert project.run()["result"] == 21
    edited = project.run(body=1)
    assert edited["result"] == edited["again"] == 21  # the seed's behaviour: the stored result
    assert edited["computed"] == 0
    assert len(edited["warnings"]) == 1  # once per function and process, not per hit
    message = edited["warnings"][0]
    assert "pipeline.f" in message and "stored on" in message
    for remedy in ("code_changes='recompute'", "version=", "f.clear()", "--drop-old-code"):
        assert remedy in message


def test_by_default_comments_docstrings_and_formatting_never_warn(project):
    project.run()
    unchanged = project.run(doc="two", comment="two")
    assert unchanged["warnings"] == [] and unchanged["computed"] == 0


def test_by_default_editing_a_project_helper_warns(project):
    project.run()
    edited = project.run(factor=11)
    assert edited["result"] == 21 and len(edited["warnings"]) == 1


def test_results_stored_before_code_versions_existed_are_never_warned_about(project):
    project.run(env={"PERSIST_TO_DISK_CODE_CHANGES": "ignore"})  # records of unknown code
    edited = project.run(body=1)
    assert edited["result"] == 21 and edited["warnings"] == []


# --- recompute -----------------------------------------------------------------------------
def test_under_recompute_an_edit_computes_anew_and_reverting_finds_the_old_result(project):
    options = "code_changes='recompute'"
    assert project.run(options=options)["computed"] == 1
    edited = project.run(body=1)
    assert edited["result"] == 22 and edited["computed"] == 1
    reverted = project.run(body=0)
    assert reverted["result"] == 21 and reverted["computed"] == 0
    assert reverted["warnings"] == []
    assert reverted["entries"] == 2  # both code versions' results are kept


def test_under_recompute_comments_docstrings_and_formatting_still_hit(project):
    project.run(options="code_changes='recompute'")
    assert project.run(doc="two", comment="two")["computed"] == 0


def test_under_recompute_a_helper_edit_and_a_module_constant_edit_compute_anew(project):
    project.run(options="code_changes='recompute'")
    helper = project.run(factor=11)
    assert helper["result"] == 23 and helper["computed"] == 1
    constant = project.run(offset=5)
    assert constant["result"] == 27 and constant["computed"] == 1


def test_the_policy_comes_from_the_environment_when_the_decorator_does_not_say(project):
    env = {"PERSIST_TO_DISK_CODE_CHANGES": "recompute"}
    project.run(env=env)
    assert project.run(env=env, body=1)["computed"] == 1


def test_the_policy_comes_from_config_ini(project, ptd_env):
    ptd_env.home.mkdir(parents=True, exist_ok=True)
    (ptd_env.home / "config.ini").write_text(
        "[global_settings]\ncode_changes = recompute\n")
    (ptd_env.home / "config.ini").chmod(0o600)
    project.run()
    assert project.run(body=1)["computed"] == 1


# --- ignore --------------------------------------------------------------------------------
def test_under_ignore_an_edit_is_silent_and_returns_the_stored_result(project):
    project.run(options="code_changes='ignore'")
    edited = project.run(body=1)
    assert edited["result"] == 21 and edited["warnings"] == [] and edited["computed"] == 0


# --- version= ------------------------------------------------------------------------------
def test_bumping_version_computes_anew_and_setting_it_back_finds_the_old_results(project):
    project.run(options="version='v1'")
    bumped = project.run(options="version='v2'", body=1)
    assert bumped["result"] == 22 and bumped["computed"] == 1 and bumped["warnings"] == []
    back = project.run(options="version='v1'", body=0)
    assert back["result"] == 21 and back["computed"] == 0
    assert back["entries"] == 2  # nothing was deleted


def test_a_version_works_under_every_policy(project):
    for policy in ("warn", "recompute", "ignore"):
        options = f"version=('{policy}', 1), code_changes='{policy}'"
        assert project.run(options=options)["computed"] == 1
        assert project.run(options=options)["computed"] == 0


# --- in-process behaviour ------------------------------------------------------------------
def test_without_a_version_the_digests_are_those_of_earlier_releases(ptd_env):
    """Caches written before code versions existed keep hitting under warn and ignore."""
    for policy in ("warn", "ignore"):
        @ptd.persistf(code_changes=policy)
        def plain(x):
            return x
        plain(1)
        persisted = plain.__persisted__
        assert persisted.locate((1,), {}).digest == call_digest((), (("x", 1),))


def test_a_version_or_recompute_changes_every_digest(ptd_env):
    digests = set()
    for options in ({}, {"version": 1}, {"version": "1"}, {"code_changes": "recompute"},
                    {"version": 1, "code_changes": "recompute"}):
        @ptd.persistf(**options)
        def g(x):
            return x
        digests.add(g.__persisted__.locate((1,), {}).digest)
    assert len(digests) == 5


def test_the_fingerprint_is_computed_on_the_first_call_not_at_decoration(ptd_env):
    @ptd.persistf()
    def h(x):
        return x
    assert h.__persisted__.code._fingerprint is None
    h(1)
    assert h.__persisted__.code._fingerprint is not None


def test_under_ignore_no_fingerprint_is_computed_by_calls(ptd_env):
    @ptd.persistf(code_changes="ignore")
    def h(x):
        return x
    h(1), h(1)
    assert h.__persisted__.code._fingerprint is None
    assert len(h.cache_info()["code_fingerprint"]) == 32  # asked for: computed then


def test_cache_info_reports_the_fingerprint_version_and_policy(ptd_env):
    from persist_to_disk.fingerprint import code_fingerprint

    @ptd.persistf(version="v3", code_changes="recompute")
    def k(x):
        return x + 1
    k(1)
    info = k.cache_info()
    assert info["code_fingerprint"] == code_fingerprint(k.uncached, str(ptd_env.project))
    assert info["version"] == "v3" and info["code_changes"] == "recompute"


def test_records_carry_the_code_tag(ptd_env):
    from persist_to_disk.fingerprint import code_tag, version_label

    @ptd.persistf(version=7)
    def m(x):
        return x
    m(1)
    persisted = m.__persisted__
    place = persisted.locate((1,), {})
    record = place.store.latest(place.bucket, place.digest, with_value=False)
    assert record.code == code_tag(persisted.code.fingerprint, version_label(7))


def test_config_set_code_changes_applies_to_functions_that_do_not_say(ptd_env):
    calls = []

    @ptd.persistf()
    def n(x):
        calls.append(x)
        return x
    ptd.config.set_code_changes("recompute")
    n(1)
    assert n.__persisted__.code.policy == "recompute"
    ptd.config.set_code_changes("ignore")
    n(1)  # another identity under ignore (no fingerprint in it): computes again
    assert n.__persisted__.code.policy == "ignore" and calls == [1, 1]


@pytest.mark.parametrize("options, named", [
    ({"code_changes": "sometimes"}, "code_changes"),
    ({"version": [threading.Lock()]}, "version"),
])
def test_bad_code_options_are_refused_at_decoration_naming_the_option(ptd_env, options, named):
    with pytest.raises(ptd.ConfigError, match=named):
        @ptd.persistf(**options)
        def bad(x):
            return x


def test_a_bad_code_changes_setting_names_where_it_came_from(ptd_env, monkeypatch):
    monkeypatch.setenv("PERSIST_TO_DISK_CODE_CHANGES", "always")
    ptd.config.reload()
    ptd.config.set_project_path(str(ptd_env.project))

    @ptd.persistf()
    def p(x):
        return x
    with pytest.raises(ptd.ConfigError, match="PERSIST_TO_DISK_CODE_CHANGES"):
        p(1)
    with pytest.raises(ptd.ConfigError, match="set_code_changes"):
        ptd.config.set_code_changes("often")


# --- functions without a module file --------------------------------------------------------
def test_a_function_of_a_script_run_as_main_recomputes_after_an_edit(ptd_env, python_runner):
    script = ptd_env.project / "job.py"

    def run(body):
        script.write_text(textwrap.dedent(f'''
            import persist_to_disk as ptd
            calls = []
            @ptd.persistf(code_changes="recompute")
            def f(x):
                calls.append(x)
                return x + {body}
            if __name__ == "__main__":
                print(f(1), len(calls))
        '''))
        return python_runner("import runpy; runpy.run_path('job.py', run_name='__main__')"
                             ).stdout.split()

    assert run(1) == ["2", "1"]
    assert run(1) == ["2", "0"]
    assert run(2) == ["3", "1"]
    assert run(1) == ["2", "0"]


def test_a_function_defined_with_python_c_hits_in_the_next_run(ptd_env, python_runner):
    code = textwrap.dedent('''
        import persist_to_disk as ptd
        calls = []
        @ptd.persistf(code_changes="recompute")
        def f(x):
            calls.append(x)
            return x * 3
        print(f(2), len(calls))
    ''')
    assert python_runner(code).stdout.split() == ["6", "1"]
    assert python_runner(code).stdout.split() == ["6", "0"]
