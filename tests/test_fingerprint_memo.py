"""The persistent memo of code fingerprints (issue 15): what a fingerprint reads from the whole
text of a source file is kept in ``<settings folder>/fingerprints/`` so that a later process's
first call does not parse the module again; it must never make a fingerprint differ from one
computed without it.

Each test compares fingerprints computed with the memo against the same fingerprints computed
in a settings folder that has none (a fresh ``PERSIST_TO_DISK_HOME``), in fresh interpreters.
"""

import json
import os
import stat
from pathlib import Path

from conftest import run_python, write_module
from test_code_fingerprint import FINGERPRINT, NO_BYTECODE

HELPERS = '''
OFFSET = 10
SCALE = {"a": 1, "b": 2}


def scale(x):
    return x * SCALE["a"]
'''

MAIN = '''
import os

import persist_to_disk as ptd
from helpers import OFFSET, scale

LIMIT = 3 + OFFSET
if os.environ.get("PTD_TEST_CACHED"):
    deco = ptd.persistf()
else:
    def deco(func):
        return func


def compute(x, factor=LIMIT):
    return scale(x) + factor


@deco
def decorated(x):
    return compute(x) + LIMIT
'''

# Computes the fingerprints, counting the parses it made (ast.parse through fingerprint.py).
COMPUTE = '''
import json, sys
import persist_to_disk.fingerprint as fingerprint
parses = []
real_parse = fingerprint.ast.parse
def counting_parse(*args, **kwargs):
    parses.append(1)
    return real_parse(*args, **kwargs)
fingerprint.ast.parse = counting_parse
import main
result = {name: fingerprint.code_fingerprint(getattr(main, name), ".")
          for name in ("compute", "decorated")}
fingerprint.save_memos()  # (what the decorator does when it opens a store)
print(json.dumps({"fingerprints": result, "parses": len(parses)}))
'''


def compute(project: Path, home: Path, **env) -> dict:
    result = run_python(COMPUTE, project, home, timeout=60, extra_env={**NO_BYTECODE, **env})
    return json.loads(result.stdout.strip().splitlines()[-1])


def fresh(project: Path, tmp_path: Path, **env) -> dict:
    """The fingerprints computed without any memo (a settings folder of their own)."""
    home = tmp_path / f"fresh-{len(list(tmp_path.glob('fresh-*')))}"
    return compute(project, home, **env)["fingerprints"]


def make_project(tmp_path: Path) -> Path:
    """The project, its files dated a minute ago: a file modified just before a process
    started may be newer than the start it reads (rounded down), and nothing is memoized from
    a file newer than the process."""
    project = tmp_path / "project"
    for name, text in (("helpers.py", HELPERS), ("main.py", MAIN)):
        path = write_module(project, name, text)
        past = path.stat().st_mtime_ns - 60 * 10**9
        os.utime(path, ns=(past, past))
    return project


def test_a_later_process_reads_the_memo_parses_nothing_and_agrees(tmp_path):
    project, home = make_project(tmp_path), tmp_path / "home"
    first = compute(project, home)
    assert first["parses"] > 0
    memos = sorted((home / "fingerprints").glob("*.json"))
    assert len(memos) == 2  # main.py and helpers.py
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in memos)
    second = compute(project, home)
    assert second["parses"] == 0
    assert second["fingerprints"] == first["fingerprints"] == fresh(project, tmp_path)
    assert all(FINGERPRINT.fullmatch(value) for value in first["fingerprints"].values())


def test_an_edit_keeping_the_size_and_modification_time_is_not_read_from_the_memo(tmp_path):
    project, home = make_project(tmp_path), tmp_path / "home"
    before = compute(project, home)["fingerprints"]
    path = project / "helpers.py"
    status = path.stat()
    path.write_text(path.read_text().replace('"a": 1', '"a": 7'))  # (same size)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))  # (mtime as it was)
    after = compute(project, home)
    assert after["parses"] > 0
    assert after["fingerprints"] != before
    assert after["fingerprints"] == fresh(project, tmp_path)


def test_a_decorator_that_is_persistf_in_one_process_only_is_asked_again(tmp_path):
    """Which decorators count is a question about the process's module globals, asked again
    in every process: the memo keeps the answers its text was encoded with."""
    project, home = make_project(tmp_path), tmp_path / "home"
    cached = compute(project, home, PTD_TEST_CACHED="1")["fingerprints"]
    plain = compute(project, home)["fingerprints"]
    assert cached["decorated"] != plain["decorated"]
    assert plain == fresh(project, tmp_path)
    assert compute(project, home, PTD_TEST_CACHED="1")["fingerprints"] == cached \
        == fresh(project, tmp_path, PTD_TEST_CACHED="1")


def test_memos_in_a_folder_others_may_write_are_not_read(tmp_path):
    project, home = make_project(tmp_path), tmp_path / "home"
    right = compute(project, home)["fingerprints"]
    folder = home / "fingerprints"
    for path in folder.glob("*.json"):  # forged: every memo says something else
        data = json.loads(path.read_text())
        data["definitions"] = {key: None if value is None else ["function:forged"] + value[1:]
                               for key, value in data["definitions"].items()}
        data["assigned"] = {key: None for key in data["assigned"]}
        path.write_text(json.dumps(data))
    folder.chmod(0o777)
    again = compute(project, home)
    assert again["parses"] > 0
    assert again["fingerprints"] == right


def test_a_call_writes_the_memo_when_it_opens_its_store_and_not_before(tmp_path):
    """A call whose arguments cannot be keyed writes nothing at all (the settings folder
    included); one that opens its store writes the memo of what its fingerprint read."""
    project, home = make_project(tmp_path), tmp_path / "home"
    code = '''
    import persist_to_disk as ptd, os, main
    ptd.config.set_persist_path(os.path.join(os.getcwd(), "cache"))
    cached = ptd.persistf()(main.compute)
    try:
        cached(lambda: 1)
    except ptd.UnkeyableArgumentError:
        pass
    assert not os.path.exists(os.path.join(os.environ["PERSIST_TO_DISK_HOME"], "fingerprints"))
    assert cached(1) == 14
    assert ptd.persistf()(main.decorated)(1) == 27
    '''
    run_python(code, project, home, timeout=60, extra_env=NO_BYTECODE)
    assert len(list((home / "fingerprints").glob("*.json"))) == 2
    again = compute(project, home)
    assert again["parses"] == 0 and again["fingerprints"] == fresh(project, tmp_path)


def test_a_damaged_memo_is_ignored_and_written_again(tmp_path):
    project, home = make_project(tmp_path), tmp_path / "home"
    right = compute(project, home)["fingerprints"]
    for path in (home / "fingerprints").glob("*.json"):
        path.write_text('{"header": [')
    assert compute(project, home)["fingerprints"] == right
    third = compute(project, home)
    assert third["parses"] == 0 and third["fingerprints"] == right


def test_a_file_edited_after_the_process_started_is_neither_read_nor_memoized(tmp_path):
    """In the process that edits a module it imported, the file is newer than the process:
    its code may not be what runs, so nothing read from it is memoized (issue 13's rule)."""
    project, home = make_project(tmp_path), tmp_path / "home"
    code = COMPUTE.replace("import main\n", "import main, pathlib\n"
                           "p = pathlib.Path('helpers.py')\n"
                           "p.write_text(p.read_text() + '\\n# edited\\n')\n")
    run_python(code, project, home, timeout=60, extra_env=NO_BYTECODE)
    memos = list((home / "fingerprints").glob("*.json"))
    files = [json.loads(path.read_text())["file"] for path in memos]
    assert not any(name.endswith("helpers.py") for name in files)


def test_a_memo_whose_stamps_match_another_text_is_not_used(tmp_path):
    """Read-only images (squashfs, SIF) and reproducible builds give two texts the same size,
    times and inode: the memo is checked against the digest of the text it was written from,
    never against the stamps alone. Simulated by copying the new file's stamps into the memo."""
    project, home = make_project(tmp_path), tmp_path / "home"
    compute(project, home)
    path = project / "helpers.py"
    path.write_text(path.read_text().replace('"a": 1', '"a": 7'))  # (same size)
    past = path.stat().st_mtime_ns - 60 * 10**9
    os.utime(path, ns=(past, past))  # (older than the process, as an image's files are)
    for memo in (home / "fingerprints").glob("*.json"):
        data = json.loads(memo.read_text())
        if data["file"].endswith("helpers.py"):
            new = path.stat()
            data["stamp"] = [new.st_size, new.st_mtime_ns, new.st_ctime_ns, new.st_ino,
                             new.st_dev]
            memo.write_text(json.dumps(data))
    assert compute(project, home)["fingerprints"] == fresh(project, tmp_path)


def test_one_file_run_as_two_modules_with_other_decorators_memoizes_each_text(tmp_path):
    """The same file loaded as ``__main__`` (where ``deco`` is persistf) and as ``main`` (where
    it is not) encodes the function twice, once per answer; the memo keeps each with its own."""
    project, home = make_project(tmp_path), tmp_path / "home"
    code = '''
    import json, os, runpy, sys
    import persist_to_disk.fingerprint as fingerprint
    os.environ["PTD_TEST_CACHED"] = "1"
    as_main = runpy.run_path("main.py", run_name="__main__")
    del os.environ["PTD_TEST_CACHED"]
    import main
    result = {"__main__": fingerprint.code_fingerprint(as_main["decorated"].__wrapped__, "."),
              "main": fingerprint.code_fingerprint(main.decorated, ".")}
    fingerprint.save_memos()
    print(json.dumps(result))
    '''
    first = json.loads(run_python(code, project, home, timeout=60,
                                  extra_env=NO_BYTECODE).stdout.strip().splitlines()[-1])
    assert first["main"] == fresh(project, tmp_path)["decorated"]
    assert compute(project, home)["fingerprints"]["decorated"] == first["main"]


def test_settings_files_are_replaced_whole_and_leave_no_temporary(tmp_path):
    """The one writer of settings files (config.ini, memos): owner-only, renamed over the old
    text, and a failed write leaves neither the file nor its temporary behind."""
    from persist_to_disk.projects import write_settings_file
    settings = tmp_path / "settings"
    settings.mkdir()
    path = settings / "memo.json"
    write_settings_file(str(path), "old")
    write_settings_file(str(path), "new", durable=False)
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in settings.iterdir()] == ["memo.json"]
    folder = tmp_path / "sub"
    folder.mkdir()
    (folder / "memo.json").mkdir()  # (os.replace of a file over a folder fails)
    try:
        write_settings_file(str(folder / "memo.json"), "text")
    except OSError:
        pass
    else:
        raise AssertionError("no OSError")
    assert [p.name for p in folder.iterdir()] == ["memo.json"]
