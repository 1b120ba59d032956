"""``ptd remote status|push|pull`` and ``ptd ls --remote``, against a real S3 server (SeaweedFS,
started by the ``s3_server`` fixture on the loopback interface).

Two "machines" are simulated as two settings folders (``PERSIST_TO_DISK_HOME``), two persist
paths and two checkouts of the project at different absolute paths, sharing one remote
namespace. Each machine's jobs run in their own interpreter (``run_python``); the commands run
in-process through ``main([...])`` with that machine's settings, and once through ``python -m
persist_to_disk.cli``.

Exit codes: 0 done, 1 something could not be processed (or the server cannot be reached),
2 usage error (which includes "no shared cache is configured").
"""

import contextlib
import json
import signal
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

import persist_to_disk as ptd
from conftest import run_python, write_module
from persist_to_disk.cli import main

SECRET = "a-team-secret-for-the-tests-0123456789"
NAMESPACE = "team-project"

PIPELINE = """\
    import os

    import persist_to_disk as ptd


    @ptd.persistf(groupby=["dataset"])
    def fit(dataset, lr):
        with open(os.environ["COMPUTED_LOG"], "a") as log:
            log.write(f"{dataset} {lr}\\n")
        return {"dataset": dataset, "lr": lr, "weights": "w" * 2000}


    @ptd.persistf(groupby=["dataset"], hashsize=7)
    def score(dataset, lr):
        with open(os.environ["COMPUTED_LOG"], "a") as log:
            log.write(f"score {dataset} {lr}\\n")
        return {"score": dataset, "lr": lr}
"""

#: The calls a job makes: argv is "[FUNCTION:]DATASET:LR ..." (fit by default); prints one JSON
#: list of the results.
JOB = """\
    import json, sys
    from pipeline import train
    calls = [(["fit"] + arg.split(":"))[-3:] for arg in sys.argv[1:]]
    print(json.dumps([getattr(train, name)(dataset, float(lr)) for name, dataset, lr in calls]))
"""

CALLS = ["MNIST:0.1", "MNIST:0.2", "CIFAR:0.1"]


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging) if the block takes longer than ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def dead_endpoint() -> str:
    """An http:// endpoint on a loopback port nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def make_machine(folder: Path) -> SimpleNamespace:
    """A machine: its settings folder, persist path, a checkout of the project (same folder
    name, different absolute path) and a log of what its jobs computed."""
    project = folder / "checkouts" / "project"
    write_module(project, "pipeline/__init__.py", "")
    write_module(project, "pipeline/train.py", PIPELINE)
    return SimpleNamespace(home=folder / "home", persist=folder / "scratch" / "cache",
                           project=project, log=folder / "computed.log")


@pytest.fixture
def machines(ptd_env):
    """Machines A and B (see :func:`make_machine`)."""
    return make_machine(ptd_env.tmp / "machine-a"), make_machine(ptd_env.tmp / "machine-b")


def machine_env(machine, s3_env, remote: bool = True, endpoint: str = None) -> dict:
    """The environment of ``machine``'s processes: its settings, the server (or ``endpoint``),
    the shared namespace and secret; ``remote=False``: no shared cache configured."""
    env = {**s3_env.environ(), "PERSIST_TO_DISK_PERSIST_PATH": str(machine.persist),
           "PERSIST_TO_DISK_REMOTE_NAMESPACE": NAMESPACE,
           "PERSIST_TO_DISK_REMOTE_SECRET": SECRET, "COMPUTED_LOG": str(machine.log)}
    if remote:
        env["PERSIST_TO_DISK_REMOTE"] = s3_env.url
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


def run_job(machine, s3_env, *calls: str, remote: bool = True, endpoint: str = None):
    """Run the job on ``machine`` in a fresh interpreter: ``(results, stderr)``."""
    result = run_python(JOB, machine.project, machine.home, *calls, timeout=120,
                        extra_env=machine_env(machine, s3_env, remote, endpoint))
    return json.loads(result.stdout), result.stderr


def computed(machine) -> list:
    return machine.log.read_text().splitlines() if machine.log.exists() else []


def use_machine(monkeypatch, machine, s3_env, remote: bool = True, endpoint: str = None) -> None:
    """Make this process ``machine`` for the commands run in-process."""
    for name, value in machine_env(machine, s3_env, remote, endpoint).items():
        monkeypatch.setenv(name, value)
    if not remote:
        monkeypatch.delenv("PERSIST_TO_DISK_REMOTE", raising=False)
    monkeypatch.setenv("PERSIST_TO_DISK_HOME", str(machine.home))
    ptd.config.reload()
    ptd.config.set_project_path(str(machine.project))


def ptd_cli(capsys, *argv, seconds: int = 120):
    """``(exit code, stdout, stderr)`` of ``ptd <argv>`` run in this process."""
    with deadline(seconds):
        code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ptd_json(capsys, *argv, seconds: int = 120):
    code, out, err = ptd_cli(capsys, *argv, "--json", seconds=seconds)
    return code, json.loads(out), err


# --- status -----------------------------------------------------------------------------------
def test_status_of_a_reachable_server_reports_namespace_conditional_writes_and_objects(
        machines, s3_env, monkeypatch, capsys):
    a, _ = machines
    run_job(a, s3_env, *CALLS)  # computed and uploaded as they go
    use_machine(monkeypatch, a, s3_env)

    code, status, _ = ptd_json(capsys, "remote", "status")
    assert code == 0
    assert status["url"] == s3_env.url
    assert status["endpoint"].rstrip("/") == s3_env.endpoint.rstrip("/")
    assert status["namespace"] == NAMESPACE
    assert status["reachable"] is True and status["error"] == ""
    assert status["conditional_writes"] is True
    assert status["signed"] is True
    assert status["objects"] == len(CALLS)
    assert status["bytes"] > 2000 * len(CALLS)
    assert status["pending"] == 0
    assert status["lock_service"] == "the bucket"

    code, out, _ = ptd_cli(capsys, "remote", "status")
    assert code == 0
    assert s3_env.url in out and NAMESPACE in out
    assert "reachable:" in out and "enforced" in out and f"{len(CALLS)} objects" in out


def test_status_of_an_unreachable_endpoint_exits_1_quickly_and_says_why(
        machines, s3_env, monkeypatch, capsys):
    a, _ = machines
    use_machine(monkeypatch, a, s3_env, endpoint=dead_endpoint())

    code, status, err = ptd_json(capsys, "remote", "status", seconds=60)
    assert code == 1
    assert status["reachable"] is False
    assert status["error"]
    assert status["conditional_writes"] is None
    assert "cannot be reached" in err and "AWS_ENDPOINT_URL" in err


def test_remote_commands_without_a_configured_remote_are_a_usage_error_saying_how_to_set_one(
        machines, s3_env, monkeypatch, capsys):
    a, _ = machines
    use_machine(monkeypatch, a, s3_env, remote=False)
    for argv in (["remote", "status"], ["remote", "push"], ["remote", "pull", "x.f"],
                 ["ls", "--remote"]):
        code, out, err = ptd_cli(capsys, *argv)
        assert code == 2, argv
        assert "remote = s3://BUCKET/PREFIX" in err
        assert "PERSIST_TO_DISK_REMOTE" in err and "PERSIST_TO_DISK_REMOTE_SECRET" in err
        assert out == ""


def test_local_commands_keep_working_when_the_remote_is_misconfigured_or_down(
        machines, s3_env, monkeypatch, capsys):
    a, _ = machines
    run_job(a, s3_env, *CALLS, remote=False)
    use_machine(monkeypatch, a, s3_env)
    monkeypatch.delenv("PERSIST_TO_DISK_REMOTE_SECRET")  # remote set, but no secret
    ptd.config.reload()
    ptd.config.set_project_path(str(a.project))

    code, out, err = ptd_cli(capsys, "remote", "status")
    assert code == 2 and "no team secret" in err
    code, rows, _ = ptd_json(capsys, "ls")
    assert code == 0 and sum(row["entries"] for row in rows) == len(CALLS)
    code, out, _ = ptd_cli(capsys, "verify")
    assert code == 0
    code, stats, _ = ptd_json(capsys, "stats", "pipeline.train.fit")
    assert code == 0 and stats["entries"] == len(CALLS)

    use_machine(monkeypatch, a, s3_env, endpoint=dead_endpoint())
    code, rows, _ = ptd_json(capsys, "ls", seconds=30)
    assert code == 0 and sum(row["entries"] for row in rows) == len(CALLS)


# --- push -------------------------------------------------------------------------------------
def test_push_uploads_what_a_machine_computed_while_the_remote_was_unset_or_unreachable(
        machines, s3_env, monkeypatch, capsys):
    a, b = machines
    first, _ = run_job(a, s3_env, "MNIST:0.1", "MNIST:0.2", remote=False)
    # the server is unreachable: the call computes, returns, and owes its upload
    second, warned = run_job(a, s3_env, "CIFAR:0.1", endpoint=dead_endpoint())
    assert "CIFAR" in second[0]["dataset"] and warned
    assert len(computed(a)) == 3

    use_machine(monkeypatch, a, s3_env)
    code, status, _ = ptd_json(capsys, "remote", "status")
    assert code == 0 and status["objects"] == 0 and status["pending"] == 1

    code, pushed, err = ptd_json(capsys, "remote", "push")
    assert code == 0, err
    assert (pushed["copied"], pushed["present"], pushed["failed"]) == (3, 0, 0)
    assert pushed["unreachable"] is None and pushed["errors"] == []
    assert sorted(row["leaf"] for row in pushed["per_store"]) == [
        "pipeline/train/fit/CIFAR", "pipeline/train/fit/MNIST"]
    code, status, _ = ptd_json(capsys, "remote", "status")
    assert status["objects"] == 3 and status["pending"] == 0

    code, again, _ = ptd_json(capsys, "remote", "push")  # nothing left to upload
    assert code == 0 and (again["copied"], again["present"], again["failed"]) == (0, 3, 0)
    code, out, _ = ptd_cli(capsys, "remote", "push")
    assert code == 0 and "0 uploaded, 3 already there, 0 failed" in out

    # machine B (another checkout, settings folder and persist path) hits what A computed
    results, _ = run_job(b, s3_env, "MNIST:0.1", "MNIST:0.2", "CIFAR:0.1")
    assert results == first + second
    assert computed(b) == []


def test_push_of_a_folder_pushes_only_its_stores(machines, s3_env, monkeypatch, capsys):
    a, _ = machines
    run_job(a, s3_env, *CALLS, remote=False)
    use_machine(monkeypatch, a, s3_env)
    leaf = Path(ptd.config.get_project_persist_path()) / "pipeline" / "train" / "fit" / "MNIST"

    code, pushed, _ = ptd_json(capsys, "remote", "push", str(leaf))
    assert code == 0
    assert (pushed["copied"], pushed["stores"]) == (2, 1)
    code, listed, _ = ptd_json(capsys, "ls", "--remote")
    assert [(row["leaf"], row["objects"]) for row in listed] == [("pipeline/train/fit/MNIST", 2)]


def test_push_refuses_a_folder_outside_this_projects_cache(machines, s3_env, monkeypatch,
                                                           capsys):
    a, b = machines
    run_job(b, s3_env, *CALLS, remote=False)
    use_machine(monkeypatch, a, s3_env)
    code, _, err = ptd_cli(capsys, "remote", "push", str(b.persist))
    assert code == 2
    assert "not inside this project's cache folder" in err


def test_push_to_an_unreachable_server_exits_1_and_keeps_everything_local(
        machines, s3_env, monkeypatch, capsys):
    a, _ = machines
    run_job(a, s3_env, *CALLS, remote=False)
    use_machine(monkeypatch, a, s3_env, endpoint=dead_endpoint())

    code, pushed, err = ptd_json(capsys, "remote", "push", seconds=60)
    assert code == 1
    assert pushed["copied"] == 0 and pushed["unreachable"]
    assert "cannot be reached" in err and "ptd remote push" in err
    code, rows, _ = ptd_json(capsys, "ls")
    assert sum(row["entries"] for row in rows) == len(CALLS)

    use_machine(monkeypatch, a, s3_env)  # the server is back: everything arrives
    code, pushed, _ = ptd_json(capsys, "remote", "push")
    assert code == 0 and pushed["copied"] == len(CALLS)


# --- pull and ls --remote ---------------------------------------------------------------------
def test_pull_prefetches_a_function_so_that_the_first_call_on_machine_b_is_a_local_hit(
        machines, s3_env, monkeypatch, capsys):
    a, b = machines
    results_a, _ = run_job(a, s3_env, *CALLS)  # computed on A, uploaded as they go
    use_machine(monkeypatch, b, s3_env)

    code, listed, _ = ptd_json(capsys, "ls", "--remote")
    assert code == 0
    assert [(row["leaf"], row["objects"]) for row in listed] == [
        ("pipeline/train/fit/CIFAR", 1), ("pipeline/train/fit/MNIST", 2)]
    project_root = Path(ptd.config.get_project_persist_path())
    assert listed[1]["path"] == str(project_root / "pipeline" / "train" / "fit" / "MNIST")
    assert all(row["bytes"] > 2000 and row["newest_upload"] for row in listed)
    code, out, _ = ptd_cli(capsys, "ls", "--remote")
    assert code == 0 and "pipeline/train/fit/MNIST" in out and "3 objects" in out
    code, one, _ = ptd_json(capsys, "ls", "--remote", "pipeline/train/fit/MNIST")
    assert code == 0 and [row["leaf"] for row in one] == ["pipeline/train/fit/MNIST"]

    assert not project_root.exists()  # the function never ran on B
    code, pulled, err = ptd_json(capsys, "remote", "pull", "pipeline.train.fit")
    assert code == 0, err
    assert (pulled["copied"], pulled["present"], pulled["rejected"], pulled["failed"]) == (
        3, 0, 0, 0)
    assert pulled["leaves"] == 2

    code, again, _ = ptd_json(capsys, "remote", "pull", "pipeline.train.fit")
    assert code == 0 and (again["copied"], again["present"]) == (0, 3)

    # the remote is not even configured for this run: every call is a local hit
    results_b, _ = run_job(b, s3_env, *CALLS, remote=False)
    assert results_b == results_a
    assert computed(b) == []


def test_pull_of_one_leaf_fetches_that_leaf_only(machines, s3_env, monkeypatch, capsys):
    a, b = machines
    run_job(a, s3_env, *CALLS)
    use_machine(monkeypatch, b, s3_env)

    code, pulled, _ = ptd_json(capsys, "remote", "pull", "pipeline/train/fit/CIFAR")
    assert code == 0 and pulled["copied"] == 1 and pulled["leaves"] == 1
    run_job(b, s3_env, "CIFAR:0.1", "MNIST:0.1", remote=False)
    assert computed(b) == ["MNIST 0.1"]  # CIFAR was local, MNIST was not pulled


def test_pull_of_a_function_that_never_ran_here_stores_by_the_hashsize_given(
        machines, s3_env, monkeypatch, capsys):
    a, b = machines
    run_job(a, s3_env, "score:MNIST:0.1", "score:CIFAR:0.1")  # score sets hashsize=7
    use_machine(monkeypatch, b, s3_env)

    code, pulled, _ = ptd_json(capsys, "remote", "pull", "pipeline.train.score",
                               "--hashsize", "7")
    assert code == 0 and pulled["copied"] == 2
    run_job(b, s3_env, "score:MNIST:0.1", "score:CIFAR:0.1", remote=False)
    assert computed(b) == []


def test_pull_of_a_function_that_ran_here_describes_its_new_leaves_like_the_others(
        machines, s3_env, monkeypatch, capsys):
    a, b = machines
    run_job(a, s3_env, "score:MNIST:0.1", "score:CIFAR:0.1")
    run_job(b, s3_env, "score:CIFAR:0.1")  # a remote hit: B's CIFAR store knows the function
    assert computed(b) == []
    use_machine(monkeypatch, b, s3_env)

    # a bare name is found by the local stores; the new MNIST store gets their hashsize (7)
    code, pulled, _ = ptd_json(capsys, "remote", "pull", "score")
    assert code == 0 and (pulled["copied"], pulled["present"]) == (1, 1)
    code, stats, _ = ptd_json(capsys, "stats", "pipeline.train.score")
    assert code == 0 and stats["leaves"] == 2 and stats["entries"] == 2
    run_job(b, s3_env, "score:MNIST:0.1", remote=False)
    assert computed(b) == []


def test_pull_of_a_name_that_fits_two_shared_folders_is_refused_listing_them(
        machines, s3_env, monkeypatch, capsys):
    a, b = machines
    run_job(a, s3_env, "MNIST:0.1")  # pipeline/train/fit: the project's own module
    # the same module name imported from outside the project: _modules/pipeline.train/fit
    elsewhere = a.project.parent / "elsewhere"
    write_module(elsewhere, "pipeline/__init__.py", "")
    write_module(elsewhere, "pipeline/train.py", PIPELINE)
    run_python(JOB, elsewhere, a.home, "CIFAR:0.1", timeout=120,
               extra_env={**machine_env(a, s3_env), "PERSIST_TO_DISK_PROJECT_PATH": str(a.project)})
    use_machine(monkeypatch, b, s3_env)

    code, _, err = ptd_cli(capsys, "remote", "pull", "pipeline.train.fit")
    assert code == 2
    assert "fits several folders" in err
    assert "pipeline/train/fit" in err and "_modules/pipeline.train/fit" in err
    code, pulled, _ = ptd_json(capsys, "remote", "pull", "_modules/pipeline.train/fit")
    assert code == 0 and [row["leaf"] for row in pulled["per_leaf"]] == [
        "_modules/pipeline.train/fit/CIFAR"]


def test_pull_of_a_name_nobody_shared_is_a_usage_error(machines, s3_env, monkeypatch, capsys):
    a, _ = machines
    run_job(a, s3_env, *CALLS)
    use_machine(monkeypatch, a, s3_env)
    code, out, err = ptd_cli(capsys, "remote", "pull", "pipeline.train.predict")
    assert code == 2
    assert "No function or leaf named 'pipeline.train.predict'" in err
    assert "module.qualname" in err


def test_ls_remote_of_an_unreachable_server_exits_1(machines, s3_env, monkeypatch, capsys):
    a, _ = machines
    use_machine(monkeypatch, a, s3_env, endpoint=dead_endpoint())
    code, out, err = ptd_cli(capsys, "ls", "--remote", seconds=60)
    assert code == 1 and "cannot be reached" in err


# --- as users run it ----------------------------------------------------------------------------
def test_module_entry_point_runs_remote_status_and_ls_remote_with_json_and_no_progress(
        machines, s3_env):
    a, _ = machines
    run_job(a, s3_env, *CALLS)
    env = machine_env(a, s3_env)
    status = run_python("", a.project, a.home, "remote", "status", "--json",
                        module="persist_to_disk.cli", extra_env=env, timeout=120)
    document = json.loads(status.stdout)
    assert document["reachable"] is True and document["objects"] == len(CALLS)
    assert document["namespace"] == NAMESPACE
    assert status.stderr == ""

    listed = run_python("", a.project, a.home, "ls", "--remote", "--json",
                        module="persist_to_disk.cli", extra_env=env, timeout=120)
    assert sum(row["objects"] for row in json.loads(listed.stdout)) == len(CALLS)
    assert listed.stderr == ""

    down = run_python("", a.project, a.home, "remote", "status",
                      module="persist_to_disk.cli", check=False, timeout=120,
                      extra_env={**env, "AWS_ENDPOINT_URL": dead_endpoint()})
    assert down.returncode == 1 and "cannot be reached" in down.stderr
