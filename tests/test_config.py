"""Global settings and where a function's cache goes.

* ``config.ini`` in the settings folder (``~/.persist_to_disk``, or ``$PERSIST_TO_DISK_HOME``):
  ``generate_config()`` writes it; edits take effect in the next interpreter; a bad value is a
  :class:`ptd.ConfigError` naming the file and the key, raised at the first call, never at import.
* ``set_persist_path`` / ``set_project_path`` apply to every later call, also of functions
  decorated before; ``local=True`` stores under ``persist_path_local``.
* Functions without a source file in the project folder still get a documented place
  (persist_to_disk/locations.py): ``_interactive`` (``python -c``, a REPL, a notebook cell),
  ``_modules/<dotted.module>`` (a module imported from outside the project folder) and
  ``_scripts/<name>`` (a script outside it).
* Importing ``persist_to_disk`` creates nothing on disk.

Settings are read once per interpreter, so "takes effect" is checked in fresh interpreters.
"""

import configparser
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import persist_to_disk as ptd
from helpers import counting, store_folders
from persist_to_disk.engine import Store


def project_root(env, project=None) -> Path:
    """``<persist path>/<project name>-<autoid>`` as recorded in ``project_to_pids.txt``."""
    project = Path(project or env.project).resolve()
    ids = {}
    for line in (env.home / "project_to_pids.txt").read_text().splitlines():
        path, _, pid = line.rpartition("||")
        ids[path] = pid
    return env.persist / f"{project.name}-{ids[str(project)]}"


def clean_environment() -> dict:
    """This process's environment without the settings it exported (``PERSIST_TO_DISK_*``):
    a child starts from the settings folder and its working directory only."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_TO_DISK_")}


def run_fresh(argv, cwd, home, input=None, extra_env=None) -> subprocess.CompletedProcess:
    """``python <argv>`` in a fresh interpreter with the test's settings folder; for the cases
    the ``python_runner`` fixture does not cover (a script path, a REPL fed on stdin)."""
    env = clean_environment()
    env.update(PERSIST_TO_DISK_HOME=str(home), PYTHONHASHSEED="random", **(extra_env or {}))
    result = subprocess.run([sys.executable, *argv], cwd=str(cwd), env=env, input=input,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"STDOUT:\n{result.stdout}\nSTDERR:\n{result.stderr}"
    return result


def write_config(home: Path, **values) -> Path:
    """Write ``config.ini`` as a user editing it by hand would."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.ini"
    lines = ["[global_settings]"] + [f"{key} = {value}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def counter(ptd_env):
    """A file outside the cache that decorated functions append to on each real computation."""
    path = ptd_env.tmp / "computations.txt"
    return SimpleNamespace(path=path, env={"COUNTER_FILE": str(path)},
                           lines=lambda: path.read_text().splitlines() if path.exists() else [])


# --- config.ini -------------------------------------------------------------------------------

def test_generate_config_writes_every_setting_with_its_default(ptd_env, caplog):
    with caplog.at_level("INFO", logger="persist_to_disk"):
        path = ptd.config.generate_config()

    assert Path(path) == ptd_env.home / "config.ini"
    assert str(path) in caplog.text  # where to edit: returned, and logged (the library never prints)
    parser = configparser.ConfigParser()
    parser.read(path)
    assert dict(parser["global_settings"]) == {
        "persist_path": str(ptd_env.persist),
        "persist_path_local": str(ptd_env.persist),
        "hashsize": "500",
        "lock_granularity": "call",
        "durability": "standard",
        "shared": "no",
    }


@pytest.mark.parametrize("granularity", ["call", "func", "global"])
def test_edited_config_ini_takes_effect_in_a_fresh_interpreter(ptd_env, python_runner,
                                                               granularity):
    # Generate the file, then edit it as the README suggests.
    ptd.config.generate_config()
    path = ptd_env.home / "config.ini"
    parser = configparser.ConfigParser()
    parser.read(path)
    elsewhere = ptd_env.tmp / "elsewhere"
    parser["global_settings"].update(persist_path=str(elsewhere), hashsize="7",
                                     lock_granularity=granularity, durability="fast")
    with open(path, "w") as handle:
        parser.write(handle)

    result = python_runner("""
        import json
        import persist_to_disk as ptd

        @ptd.persistf()
        def square(x):
            return x * x

        results = [square(x) for x in range(40)]
        print(json.dumps({"persist_path": ptd.config.get_persist_path(),
                          "hashsize": ptd.config.get_hashsize(),
                          "lock_granularity": ptd.config.get_lock_granularity().value,
                          "durability": ptd.config.get_durability().value,
                          "folder": square.cache_folder()}))
    """)
    seen = json.loads(result.stdout.splitlines()[-1])

    assert seen == {"persist_path": str(elsewhere), "hashsize": 7,
                    "lock_granularity": granularity, "durability": "fast",
                    "folder": seen["folder"]}
    # persist_path: the cache is under the edited path, nothing under the default one.
    leaf = Path(seen["folder"])
    assert store_folders(elsewhere) == [leaf]
    assert not ptd_env.persist.exists()
    # hashsize: every call landed in one of 7 buckets (40 calls over 500 would not).
    store = Store(str(leaf))
    buckets = {bucket for bucket, _, _ in store.scan()}
    assert buckets <= set(range(7)) and len(buckets) > 1
    assert store.read_meta()["hashsize"] == 7
    # lock_granularity: the computing calls locked one bucket, the function, or the project.
    root = leaf.parent.parent
    locks = sorted(str(p.relative_to(root)) for p in root.rglob("*.lock"))
    expected = {
        "call": ["_interactive/square/locks/calls.lock"],  # one file, a byte per call
        "func": ["_interactive/square/func.lock"],
        "global": ["global.lock"],
    }[granularity]
    assert locks == sorted(expected)


@pytest.mark.parametrize("contents, key, value", [
    ("[global_settings]\nhashsize = abc\n", "hashsize", "abc"),
    ("[global_settings]\nhashsize = 0\n", "hashsize", "0"),
    ("[global_settings]\nlock_granularity = bogus\n", "lock_granularity", "bogus"),
    ("[global_settings]\ndurability = bogus\n", "durability", "bogus"),
    ("hashsize = 7\n", None, None),  # not an ini file at all (no section header)
], ids=["hashsize-not-a-number", "hashsize-zero", "lock-granularity", "durability",
        "no-section"])
def test_bad_config_value_raises_config_error_at_first_call_not_at_import(
        ptd_env, python_runner, contents, key, value):
    ptd_env.home.mkdir()
    config_ini = ptd_env.home / "config.ini"
    config_ini.write_text(contents)

    result = python_runner("""
        import persist_to_disk as ptd
        print("imported")

        @ptd.persistf()
        def square(x):
            return x * x
        print("decorated")

        try:
            square(3)
        except ptd.ConfigError as err:
            print("ConfigError:", err)
        else:
            print("no error")
    """)
    lines = result.stdout.splitlines()

    assert lines[:2] == ["imported", "decorated"]
    message = lines[2]
    assert message.startswith("ConfigError:")
    assert str(config_ini) in message
    if key is not None:
        assert key in message and value in message


def test_persist_path_local_from_config_ini_is_used_by_local_functions(ptd_env, python_runner):
    shared, local = ptd_env.tmp / "shared", ptd_env.tmp / "node_local"
    write_config(ptd_env.home, persist_path=shared, persist_path_local=local)

    result = python_runner("""
        import persist_to_disk as ptd

        @ptd.persistf(local=True)
        def scratch(x):
            return x

        @ptd.persistf()
        def shared(x):
            return x

        scratch(1), shared(1)
        print(ptd.config.get_persist_path(local=True))
        print(scratch.cache_folder())
        print(shared.cache_folder())
    """)
    local_path, scratch_folder, shared_folder = result.stdout.splitlines()

    assert local_path == str(local)
    assert store_folders(local) == [Path(scratch_folder)]
    assert store_folders(shared) == [Path(shared_folder)]


def test_persist_path_local_defaults_to_persist_path(ptd_env):
    write_config(ptd_env.home, persist_path=ptd_env.tmp / "shared")
    ptd.config.reload()

    assert ptd.config.get_persist_path(local=True) == str(ptd_env.tmp / "shared")


# --- setting paths in code --------------------------------------------------------------------

def test_set_persist_path_after_decoration_moves_later_calls(ptd_env):
    compute, calls = counting()
    assert compute(1) == (1, 1)
    assert Path(compute.cache_folder()).is_relative_to(ptd_env.persist)

    moved = ptd_env.tmp / "moved"
    ptd.config.set_persist_path(str(moved))
    assert ptd.config.get_persist_path() == str(moved)
    assert compute(1) == (1, 2)  # the new persist path has no cache yet: computed again
    assert compute(1) == (1, 2)
    assert calls == [1, 1]
    assert store_folders(moved) == [Path(compute.cache_folder())]

    ptd.config.set_persist_path(str(ptd_env.persist))  # back: the first cache is still there
    assert compute(1) == (1, 1)
    assert calls == [1, 1]


def test_get_persist_path_returns_the_set_path_made_absolute(ptd_env, monkeypatch):
    monkeypatch.chdir(ptd_env.tmp)
    ptd.config.set_persist_path("relative_cache")
    assert ptd.config.get_persist_path() == str(ptd_env.tmp / "relative_cache")
    ptd.config.set_persist_path_local("~/scratch_cache")
    assert ptd.config.get_persist_path(local=True) == os.path.expanduser("~/scratch_cache")


def test_set_project_path_after_decoration_moves_later_calls(ptd_env):
    compute, calls = counting()
    compute(1)
    first_root = project_root(ptd_env)
    assert Path(compute.cache_folder()).is_relative_to(first_root)

    other = ptd_env.tmp / "other_project"
    other.mkdir()
    ptd.config.set_project_path(str(other))
    assert compute(1) == (1, 2)
    assert calls == [1, 1]  # another project, another cache
    assert Path(compute.cache_folder()).is_relative_to(project_root(ptd_env, other))
    assert project_root(ptd_env, other) != first_root


def test_local_functions_use_persist_path_local_set_in_code(ptd_env):
    local = ptd_env.tmp / "node_local"
    ptd.config.set_persist_path_local(str(local))

    @ptd.persistf(local=True)
    def scratch(x):
        return x

    scratch(1)
    assert store_folders(local) == [Path(scratch.cache_folder())]
    assert not ptd_env.persist.exists()


# --- functions without a source file in the project folder ------------------------------------

def test_python_c_caches_under_interactive_and_hits_in_a_new_interpreter(
        ptd_env, python_runner, counter):
    code = """
        import os
        import persist_to_disk as ptd

        @ptd.persistf()
        def interactive_square(x):
            with open(os.environ["COUNTER_FILE"], "a") as handle:
                handle.write(f"{x}\\n")
            return x * x

        print(interactive_square(7))
        print(interactive_square.cache_folder())
    """
    env = counter.env
    first = python_runner(code, extra_env=env).stdout.splitlines()
    second = python_runner(code, extra_env=env).stdout.splitlines()

    folder = project_root(ptd_env) / "_interactive" / "interactive_square"
    assert first == second == ["49", str(folder)]
    assert counter.lines() == ["7"]
    assert store_folders(ptd_env.persist) == [folder]


def test_a_repl_session_caches_under_interactive(ptd_env):
    # A real interactive interpreter reading statements from stdin (no source file).
    session = textwrap.dedent("""\
        import persist_to_disk as ptd
        @ptd.persistf()
        def repl_square(x):
            return x * x

        print("RESULT", repl_square(5), repl_square.cache_folder())
    """)
    result = run_fresh(["-i"], ptd_env.project, ptd_env.home, input=session)

    folder = project_root(ptd_env) / "_interactive" / "repl_square"
    assert f"RESULT 25 {folder}" in result.stdout
    assert "Traceback" not in result.stderr
    assert store_folders(ptd_env.persist) == [folder]


def test_notebook_cells_exec_without_a_source_file_cache_under_interactive(ptd_env):
    # Notebook kernels compile each cell under a file name that does not exist on disk; the
    # script running the cells has its own folder, mirroring its path in the project.
    (ptd_env.project / "run_cells.py").write_text(textwrap.dedent('''
        import persist_to_disk as ptd

        CELL = """
        @ptd.persistf()
        def cell_square(x):
            return x * x
        """

        @ptd.persistf()
        def script_square(x):
            return x * x

        for filename in ("/tmp/ipykernel_4242/2871.py", "<stdin>", "<string>"):
            namespace = {"ptd": ptd}
            exec(compile(CELL, filename, "exec"), namespace)
            print(namespace["cell_square"](4), namespace["cell_square"].cache_folder())
        print(script_square(4), script_square.cache_folder())
    '''))
    result = run_fresh(["run_cells.py"], ptd_env.project, ptd_env.home)

    root = project_root(ptd_env)
    cell, script = root / "_interactive" / "cell_square", root / "run_cells" / "script_square"
    assert result.stdout.splitlines() == [f"16 {cell}"] * 3 + [f"16 {script}"]
    assert store_folders(ptd_env.persist) == [cell, script]


def test_module_imported_from_outside_the_project_caches_under_modules_and_hits(
        ptd_env, python_runner, counter):
    outside = ptd_env.tmp / "site" / "libpkg"
    outside.mkdir(parents=True)
    (outside / "__init__.py").write_text("")
    (outside / "helpers.py").write_text(textwrap.dedent('''
        import os
        import persist_to_disk as ptd

        @ptd.persistf()
        def slow_add(a, b):
            with open(os.environ["COUNTER_FILE"], "a") as handle:
                handle.write(f"{a}+{b}\\n")
            return a + b
    '''))
    code = """
        from libpkg.helpers import slow_add
        print(slow_add(1, 2))
        print(slow_add.cache_folder())
    """
    # Prepend the outside folder to whatever import path the environment already has.
    python_path = os.pathsep.join(filter(None, [str(outside.parent),
                                                os.environ.get("PYTHONPATH")]))
    env = {**counter.env, "PYTHONPATH": python_path}
    first = python_runner(code, extra_env=env).stdout.splitlines()
    second = python_runner(code, extra_env=env).stdout.splitlines()

    folder = project_root(ptd_env) / "_modules" / "libpkg.helpers" / "slow_add"
    assert first == second == ["3", str(folder)]
    assert counter.lines() == ["1+2"]  # the second interpreter read the cache


def test_script_outside_the_project_caches_under_scripts(ptd_env, counter):
    tools = ptd_env.tmp / "tools"
    tools.mkdir()
    (tools / "make_report.py").write_text(textwrap.dedent('''
        import os
        import persist_to_disk as ptd

        @ptd.persistf()
        def report(name):
            with open(os.environ["COUNTER_FILE"], "a") as handle:
                handle.write(name + "\\n")
            return name.upper()

        print(report("weekly"), report.cache_folder())
    '''))
    env = counter.env
    # Run from the project folder (the default project path), the script lives elsewhere.
    first = run_fresh([str(tools / "make_report.py")], ptd_env.project, ptd_env.home,
                      extra_env=env)
    second = run_fresh([str(tools / "make_report.py")], ptd_env.project, ptd_env.home,
                       extra_env=env)

    folder = project_root(ptd_env) / "_scripts" / "make_report" / "report"
    assert first.stdout.splitlines() == second.stdout.splitlines() == [f"WEEKLY {folder}"]
    assert counter.lines() == ["weekly"]


# --- nothing happens at import ----------------------------------------------------------------

def test_import_and_decoration_create_no_settings_folder(ptd_env, python_runner):
    result = python_runner("""
        import os
        import persist_to_disk as ptd
        print(os.path.exists(os.environ["PERSIST_TO_DISK_HOME"]))

        @ptd.persistf(groupby=["dataset"])
        def train(dataset, lr):
            return lr
        print(os.path.exists(os.environ["PERSIST_TO_DISK_HOME"]))
    """)

    assert result.stdout.splitlines() == ["False", "False"]
    assert not ptd_env.home.exists()


def test_default_settings_folder_is_dot_persist_to_disk_in_home_created_on_first_call(
        ptd_env, tmp_path):
    # The README: "By default, a folder called .persist_to_disk is created under your home
    # directory, and will be used to store cache files." -- by the first call, not by import.
    home = tmp_path / "user_home"
    home.mkdir()
    env = {"HOME": str(home)}
    code = textwrap.dedent("""
        import os
        import persist_to_disk as ptd
        settings = os.path.expanduser("~/.persist_to_disk")
        print(os.path.exists(settings))

        @ptd.persistf()
        def square(x):
            return x * x

        square(2)
        print(os.path.exists(settings))
        print(ptd.config.get_persist_path())
        print(square.cache_folder())
    """)
    # No PERSIST_TO_DISK_HOME: the settings folder is the default one under HOME.
    result = subprocess.run([sys.executable, "-c", code], cwd=str(ptd_env.project),
                            env={**clean_environment(), **env}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    before, after, persist_path, folder = result.stdout.splitlines()

    settings = home / ".persist_to_disk"
    assert (before, after) == ("False", "True")
    assert Path(persist_path).is_relative_to(settings)
    assert store_folders(settings) == [Path(folder)]
    assert (settings / "project_to_pids.txt").read_text().startswith(
        f"{ptd_env.project.resolve()}||")


def test_an_unknown_key_in_config_ini_is_reported_not_silently_ignored(ptd_env):
    """A typo such as ``hash_size = 7`` would otherwise leave the default in force unnoticed."""
    ptd_env.home.mkdir(parents=True, exist_ok=True)
    (ptd_env.home / "config.ini").write_text("[global_settings]\nhash_size = 7\n")
    ptd.config.reload()
    with pytest.warns(ptd.PersistWarning, match=r"unknown key 'hash_size'"):
        assert ptd.config.get_hashsize() == 500


def test_persist_path_local_follows_persist_path_until_set_itself(ptd_env, monkeypatch):
    """Unset, ``persist_path_local`` is wherever ``persist_path`` is, however that was set."""
    ptd.config.set_persist_path(str(ptd_env.tmp / "fast_disk"))
    assert ptd.config.get_persist_path(local=True) == str(ptd_env.tmp / "fast_disk")

    ptd.config.reload()
    monkeypatch.setenv("PERSIST_TO_DISK_PERSIST_PATH", str(ptd_env.tmp / "from_env"))
    assert ptd.config.get_persist_path(local=True) == str(ptd_env.tmp / "from_env")

    ptd.config.set_persist_path_local(str(ptd_env.tmp / "node_local"))
    assert ptd.config.get_persist_path(local=True) == str(ptd_env.tmp / "node_local")
    assert ptd.config.get_persist_path() == str(ptd_env.tmp / "from_env")
