"""The ``ptd`` command line: what each command prints, and the exit codes scripts rely on.

Commands run in-process through ``main([...])`` (their exit code returned, output captured),
and once each through the ways users start them: ``python -m persist_to_disk.cli``, the
installed ``ptd`` script and ``tools/compact``.

Exit codes: 0 done, 1 damage found or something not processed, 2 usage error, 3 declined at
the prompt.
"""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest

import persist_to_disk as ptd
from conftest import write_module
from persist_to_disk.cli import main
from persist_to_disk.cli.progress import progress_bar
from persist_to_disk.cli.units import parse_duration, parse_size
from persist_to_disk.engine import POOL

REPOSITORY = Path(__file__).parent.parent

computed = []


@ptd.persistf(groupby=["dataset"], skip_kwargs=["seconds"])
def train(dataset, lr, seconds=0.0, payload=0):
    time.sleep(seconds)
    computed.append((dataset, lr))
    return {"dataset": dataset, "lr": lr, "weights": b"w" * payload}


@ptd.persistf()
def square(x):
    computed.append(x)
    return x * x


def run(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``ptd <argv>``."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def function_folder(func) -> Path:
    return Path(func.cache_folder())


# --- ls ---------------------------------------------------------------------------------------
def test_ls_lists_each_function_and_groupby_leaf_with_entries_size_and_last_write(
        ptd_env, capsys):
    train("MNIST", 0.1), train("MNIST", 0.2), train("CIFAR", 0.1)
    [square(i) for i in range(3)]
    started = time.time()

    code, out, _ = run(capsys, "ls", "--json")
    rows = {(row["function"].rsplit(".", 1)[-1], row["leaf"]): row for row in json.loads(out)}
    assert code == 0
    assert sorted(rows) == [("square", ""), ("train", "CIFAR"), ("train", "MNIST")]
    assert [rows[k]["entries"] for k in sorted(rows)] == [3, 1, 2]
    assert {row["project"] for row in rows.values()} == {"project-1"}
    assert rows[("train", "MNIST")]["path"] == str(function_folder(train) / "MNIST")
    for row in rows.values():
        files = [p for p in Path(row["path"]).rglob("*") if p.is_file()]
        assert row["disk_bytes"] == sum(p.stat().st_size for p in files) > 0
        assert started - 60 < row["last_write_epoch"] <= time.time()

    code, out, _ = run(capsys, "ls")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split() == ["PROJECT", "FUNCTION", "LEAF", "ENTRIES", "SIZE", "LAST", "WRITE"]
    mnist = next(line for line in lines if "MNIST" in line).split()
    assert mnist[0] == "project-1" and mnist[1].endswith("/train") and mnist[3] == "2"
    assert lines[-1].startswith("3 store(s), 6 entries")


def test_ls_with_nothing_cached_says_so(ptd_env, capsys):
    assert run(capsys, "ls")[:2] == (0, f"No cache stores under {ptd_env.persist}.\n")
    assert json.loads(run(capsys, "ls", "--json")[1]) == []


def test_ls_of_a_path_that_is_not_a_folder_is_a_usage_error(ptd_env, capsys):
    code, out, err = run(capsys, "ls", str(ptd_env.tmp / "nowhere"))
    assert code == 2 and out == ""
    assert f"PATH {ptd_env.tmp / 'nowhere'} is not a folder" in err


# --- stats ------------------------------------------------------------------------------------
def test_stats_counts_entries_versions_tombstones_and_the_compute_time_stored(ptd_env, capsys):
    for lr in (0.1, 0.2, 0.3):
        train("MNIST", lr, seconds=0.05)
    train("MNIST", 0.1, seconds=0.05, cache_switch=ptd.RECACHE)  # a second version
    train.forget("MNIST", 0.2)                                    # a tombstone
    train("CIFAR", 0.1)

    code, out, _ = run(capsys, "stats", "train", "--json")
    stats = json.loads(out)
    assert code == 0
    assert (stats["leaves"], stats["entries"], stats["versions"], stats["tombstones"],
            stats["superseded"]) == (2, 3, 6, 1, 2)
    assert 0.1 <= stats["compute_seconds"] < 1   # the live entries: two of 0.05 s, one of ~0
    assert stats["oldest_epoch"] <= stats["newest_epoch"]
    assert 0 < stats["live_bytes"] <= stats["file_bytes"] <= stats["disk_bytes"]
    assert stats["function"].endswith(".train")
    assert [leaf["entries"] for leaf in stats["per_leaf"]] == [1, 2]   # CIFAR, MNIST

    code, out, _ = run(capsys, "stats", str(function_folder(train) / "MNIST"))
    assert code == 0
    assert "entries:        2" in out and "tombstones:     1 deleted calls" in out
    assert "compute stored: " in out and "per entry on average" in out


def test_stats_finds_functions_and_leaves_by_name_and_refuses_an_ambiguous_name(
        ptd_env, capsys, monkeypatch):
    train("MNIST", 0.1), train("CIFAR", 0.1)
    assert json.loads(run(capsys, "stats", "train", "--json")[1])["leaves"] == 2
    assert json.loads(run(capsys, "stats", "train/MNIST", "--json")[1])["leaves"] == 1

    code, _, err = run(capsys, "stats", "no_such_function")
    assert code == 2 and "No function or leaf named 'no_such_function'" in err

    monkeypatch.syspath_prepend(str(ptd_env.project))
    for name in ("first_tasks", "second_tasks"):
        write_module(ptd_env.project, f"{name}.py", """
            import persist_to_disk as ptd

            @ptd.persistf()
            def job(x):
                return x
        """)
        __import__(name).job(1)
        monkeypatch.delitem(sys.modules, name)
    code, _, err = run(capsys, "stats", "job")
    assert code == 2
    assert "'job' names several functions" in err
    assert "first_tasks/job" in err and "second_tasks/job" in err


# --- verify -----------------------------------------------------------------------------------
def test_verify_exits_zero_on_good_stores_and_one_on_a_damaged_one(ptd_env, capsys):
    train("MNIST", 0.1), square(2)
    code, out, _ = run(capsys, "verify")
    assert code == 0 and out.endswith("2 store(s), 2 records read: no damage found.\n")

    damaged = ptd_env.persist / "project-1" / "broken"
    damaged.mkdir(mode=0o700)
    (damaged / "data.mdb").write_bytes(os.urandom(64 * 1024))
    (damaged / "data.mdb").chmod(0o600)
    code, out, _ = run(capsys, "verify")
    assert code == 1
    assert f"DAMAGED  {damaged}" in out and "1 damaged." in out

    code, out, _ = run(capsys, "verify", "--json")
    reports = {Path(r["path"]): r for r in json.loads(out)}
    assert code == 1 and not reports[damaged]["ok"] and reports[damaged]["problems"]
    assert all(r["ok"] for path, r in reports.items() if path != damaged)
    assert run(capsys, "verify", str(function_folder(train)))[0] == 0  # only the good part


def test_verify_names_each_record_that_cannot_be_read(ptd_env, capsys):
    [square(i) for i in range(5)]
    folder = function_folder(square)
    POOL.close_all()
    # Damage written below the engine, into the generation-0 files a new store has.
    env = lmdb.open(str(folder), subdir=True, max_readers=1024)
    with env.begin(write=True) as txn:
        txn.put(struct.pack(">I", 3) + b"d" * 16 + struct.pack(">Q", 0), b"short")
        txn.put(b"not a record key", b"?")
    env.close()

    code, out, _ = run(capsys, "verify", "--json")
    (report,) = json.loads(out)
    assert code == 1 and report["problem_count"] == 2 and report["records"] == 6
    assert f"record bucket 3 digest {'64' * 16} version 0: 5 bytes, shorter than a record " \
           "header" in report["problems"]
    assert any("a key of 16 bytes that is not a record" in p for p in report["problems"])
    assert [square(i) for i in range(5)] == [0, 1, 4, 9, 16]   # the rest still reads


def test_verify_deep_loads_every_result(ptd_env, capsys, monkeypatch, request):
    monkeypatch.syspath_prepend(str(ptd_env.project))
    write_module(ptd_env.project, "shapes.py", """
        import persist_to_disk as ptd

        class Box:
            def __init__(self, side):
                self.side = side

        @ptd.persistf()
        def make_box(side):
            return Box(side)
    """)
    import shapes
    request.addfinalizer(lambda: sys.modules.pop("shapes", None))
    shapes.make_box(3)
    assert run(capsys, "verify", "--deep")[0] == 0
    monkeypatch.delattr(shapes, "Box")  # the class of a stored result is gone

    assert run(capsys, "verify")[0] == 0             # every record can still be read
    code, out, _ = run(capsys, "verify", "--deep")   # but a result cannot be loaded
    assert code == 1 and "cannot be loaded: AttributeError" in out


# --- clear ------------------------------------------------------------------------------------
def test_clear_asks_first_and_keeps_everything_when_the_answer_is_no(ptd_env, capsys,
                                                                     monkeypatch):
    [train("MNIST", lr / 10, payload=20_000) for lr in range(20)]
    train("CIFAR", 0.1)
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))

    code, out, err = run(capsys, "clear", "train")
    assert code == 3
    assert "Delete 21 stored result(s) of" in err and "Nothing was deleted." in err
    assert train.cache_info()["entries"] == 21

    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    before = train.cache_info()["file_bytes"]
    code, out, err = run(capsys, "clear", "train")
    assert code == 0 and "Deleted 21 stored result(s)" in out
    assert train.cache_info()["entries"] == 0
    assert train.cache_info()["file_bytes"] < before   # compacted, not only emptied
    assert (function_folder(train) / "MNIST").is_dir()
    computed.clear()
    train("CIFAR", 0.1)
    assert computed == [("CIFAR", 0.1)]  # computed again


def test_clear_with_yes_does_not_ask_and_clears_one_leaf(ptd_env, capsys, monkeypatch):
    train("MNIST", 0.1), train("CIFAR", 0.1)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # a prompt would read "no" here
    code, out, err = run(capsys, "clear", str(function_folder(train) / "MNIST"), "--yes")
    assert (code, err) == (0, "")
    assert "Deleted 1 stored result(s)" in out
    assert train.is_cached("CIFAR", 0.1) and not train.is_cached("MNIST", 0.1)


# --- compact ----------------------------------------------------------------------------------
def test_compact_prints_bytes_before_and_after_and_shrinks_the_files(ptd_env, capsys):
    for i in range(200):
        square(i)
    for i in range(0, 200, 2):
        square(i, cache_switch=ptd.RECACHE)
    folder = str(function_folder(square))

    code, out, _ = run(capsys, "compact", folder, "--dry-run", "--json")
    (planned,) = json.loads(out)
    assert code == 0 and planned["dry_run"] and planned["superseded"] == 100
    assert square.cache_info()["versions"] == 300          # a dry run changes nothing

    code, out, _ = run(capsys, "compact", folder)
    assert code == 0
    header, line = out.splitlines()[:2]
    assert header == f"Stores under {ptd_env.persist}:"
    assert line.startswith(f"{os.path.relpath(folder, ptd_env.persist)}: ")
    assert "200 kept, dropped: 100 superseded" in line
    before, after = (int(n) for n in [planned["bytes_before"], square.cache_info()["file_bytes"]])
    assert after < before
    assert out.splitlines()[-1].startswith("1 store(s): ")
    assert square.cache_info()["versions"] == 200
    computed.clear()
    assert [square(i) for i in range(200)] == [i * i for i in range(200)] and computed == []


def test_compact_passes_age_and_size_limits_in_human_units(ptd_env, capsys):
    [square(i) for i in range(10)]
    folder = str(function_folder(square))
    code, out, _ = run(capsys, "compact", folder, "--older-than", "1h", "--json")
    assert code == 0 and json.loads(out)[0]["expired"] == 0
    code, out, _ = run(capsys, "compact", folder, "--max-size", "1B", "--json")
    assert code == 0 and json.loads(out)[0]["evicted"] == 10
    assert square.cache_info()["entries"] == 0

    code, _, err = run(capsys, "compact", "--max-size", "12parsecs")
    assert code == 2 and "'12parsecs' is not a size" in err
    code, _, err = run(capsys, "compact", "--older-than", "soon")
    assert code == 2 and "'soon' is not a duration" in err


@pytest.mark.parametrize("text, size", [
    ("4096", 4096), ("500MB", 500_000_000), ("2GiB", 2 << 30), ("1.5G", 3 << 29),
    ("10 kb", 10_000), ("3KiB", 3072), ("7b", 7),
])
def test_sizes_are_read_in_decimal_and_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text, seconds", [
    ("3600", 3600), ("45s", 45), ("90m", 5400), ("12h", 43200), ("30d", 30 * 86400),
    ("2w", 14 * 86400), ("1d12h", 1.5 * 86400), ("0.5h", 1800),
])
def test_durations_are_read_with_units_and_combined(text, seconds):
    assert parse_duration(text) == seconds


# --- help, exit codes, progress ---------------------------------------------------------------
def test_help_has_examples_and_exit_codes_and_bad_usage_exits_2(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "examples:" in out and "exit codes:" in out
    for command in ("ls", "stats", "verify", "compact", "clear", "export-pkl", "import-pkl"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and "examples:" in out, command
    assert run(capsys)[0] == 2
    assert run(capsys, "ls", "--no-such-option")[0] == 2
    assert run(capsys, "frobnicate")[0] == 2


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_drawn_on_a_terminal_only():
    terminal, pipe = _Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        with progress_bar("compacting", unit="records", stream=stream) as advance:
            advance(5)
    assert "compacting" in terminal.getvalue()
    assert pipe.getvalue() == ""


# --- the ways of running it -------------------------------------------------------------------
def _environment(ptd_env) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_TO_DISK_")}
    env["PERSIST_TO_DISK_HOME"] = str(ptd_env.home)
    return env


def test_module_entry_point_prints_json_and_no_progress_into_a_pipe(ptd_env):
    train("MNIST", 0.1)
    result = subprocess.run([sys.executable, "-m", "persist_to_disk.cli", "ls", "--json"],
                            capture_output=True, text=True, env=_environment(ptd_env),
                            cwd=str(REPOSITORY), timeout=120)
    assert result.returncode == 0 and result.stderr == ""
    assert [row["leaf"] for row in json.loads(result.stdout)] == ["MNIST"]


def test_installed_ptd_script_runs_verify(ptd_env):
    script = shutil.which("ptd")
    if script is None:
        pytest.skip("the ptd script is not installed here; `pip install -e .` installs it")
    square(3)
    result = subprocess.run([script, "verify"], capture_output=True, text=True,
                            env=_environment(ptd_env), cwd=str(ptd_env.tmp), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1 store(s), 1 records read: no damage found." in result.stdout


def test_tools_compact_is_ptd_compact(ptd_env):
    for i in range(10):
        square(i)
        square(i, cache_switch=ptd.RECACHE)
    result = subprocess.run([str(REPOSITORY / "tools" / "compact"), "--json"],
                            capture_output=True, text=True, env=_environment(ptd_env),
                            cwd=str(ptd_env.tmp), timeout=120)
    assert result.returncode == 0, result.stderr
    (report,) = json.loads(result.stdout)
    assert (report["kept"], report["superseded"]) == (10, 10)
    assert report["bytes_after"] < report["bytes_before"]
    assert report["path"] == str(function_folder(square)) and not report["dry_run"]
    computed.clear()
    assert [square(i) for i in range(10)] == [i * i for i in range(10)] and computed == []
