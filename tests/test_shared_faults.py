"""The shared tier when things go wrong, in this process: a server that stops answering, calls
that nest and race, owed uploads, settings that are wrong. (Machines in separate processes:
test_shared_cache.py.)"""

import os
import socket
import threading
import time
import warnings
from pathlib import Path

import pytest

import persist_to_disk as ptd
from persist_to_disk.errors import ConfigError, PersistWarning
from shared_machines import SECRET, Machine, computations
from test_engine import wait_for_child


@pytest.fixture
def shared(s3_env, monkeypatch):
    """This process configured with the test's remote and the team secret."""
    monkeypatch.setenv("PERSIST_TO_DISK_REMOTE_SECRET", SECRET)
    ptd.config.set_remote(s3_env.url)
    return s3_env


def keys_under(s3_env):
    client = s3_env.client()
    found = client.list_objects_v2(Bucket=s3_env.bucket, Prefix=s3_env.prefix + "/")
    return [item["Key"] for item in found.get("Contents", [])]


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for connection in accepted:
        connection.close()
    listener.close()


@pytest.fixture
def trickling_server():
    """An HTTP server that answers every GET with the start of a result object, then sends the
    rest one byte a second (each socket read returns well within any read timeout)."""
    import json
    import struct
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stop = threading.Event()

    def serve(connection):
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                piece = connection.recv(65536)
                if not piece:
                    return
                request += piece
            if not request.startswith(b"GET"):
                return
            header = json.dumps({"created": 1.0, "compute_seconds": 0.0, "serializer": "pickle",
                                 "python_version": "3.11", "origin": "", "key_size": 0,
                                 "value_size": 100000}).encode()
            total = 12 + len(header) + 100000 + 32
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: \"x\"\r\n"
                               b"Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n" % total)
            connection.sendall(b"PTDOBJS1" + struct.pack("<I", len(header)) + header)
            while not stop.is_set():
                connection.sendall(b"\0")
                time.sleep(1)
        except OSError:
            pass
        finally:
            connection.close()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection = listener.accept()[0]
            except OSError:
                continue
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_a_download_that_trickles_is_abandoned_and_the_call_computes(
        shared, trickling_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", trickling_server)
    monkeypatch.setenv("PERSIST_TO_DISK_REMOTE_TIMEOUT", "2")
    ptd.config.reload()
    monkeypatch.setenv("PERSIST_TO_DISK_REMOTE_SECRET", SECRET)
    ptd.config.set_remote(shared.url)

    @ptd.persistf()
    def triple(x):
        return 3 * x

    result = {}

    def call():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result["value"] = triple(1)
        result["warnings"] = [str(w.message) for w in caught]

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout=90)
    assert not thread.is_alive(), "a download at one byte a second held the call"
    assert result["value"] == 3
    assert any("stalled" in w for w in result["warnings"]), result["warnings"]


def test_a_server_that_stops_answering_costs_one_timeout_then_calls_go_on_locally(
        shared, silent_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_server)
    monkeypatch.setenv("PERSIST_TO_DISK_REMOTE_TIMEOUT", "1")
    ptd.config.reload()
    monkeypatch.setenv("PERSIST_TO_DISK_REMOTE_SECRET", SECRET)
    ptd.config.set_remote(shared.url)

    @ptd.persistf()
    def double(x):
        return 2 * x

    result = {}

    def calls():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            started = time.monotonic()
            result["first"] = double(1)
            result["first_seconds"] = time.monotonic() - started
            started = time.monotonic()
            result["more"] = [double(x) for x in range(2, 12)]
            result["more_seconds"] = time.monotonic() - started
            result["hit"] = double(1)
        result["warnings"] = [str(w.message) for w in caught
                              if issubclass(w.category, PersistWarning)]

    thread = threading.Thread(target=calls, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "a call hung on a server that does not answer"
    assert result["first"] == 2 and result["more"] == [2 * x for x in range(2, 12)]
    assert result["hit"] == 2
    assert result["more_seconds"] < result["first_seconds"] + 5, \
        "after the first failure the remote is left alone: no timeout per call"
    assert len(result["warnings"]) == 1, result["warnings"]
    assert shared.url in result["warnings"][0]


@ptd.persistf()
def inner(x):
    return x + 1


@ptd.persistf()
def outer(x):
    return inner(x) * 10


def test_nested_cached_calls_share_through_the_remote(shared):
    with warnings.catch_warnings():
        warnings.simplefilter("error", PersistWarning)
        assert outer(1) == 20
        assert outer(1) == 20
    names = keys_under(shared)
    assert len([n for n in names if "/outer/" in n]) == 1, names
    assert len([n for n in names if "/inner/" in n]) == 1, names


def test_threads_of_one_process_compute_a_call_once(shared):
    computed = []

    @ptd.persistf()
    def slow(x):
        computed.append(x)
        time.sleep(0.3)
        return x

    threads = [threading.Thread(target=slow, args=(1,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert computed == [1]


def test_owed_uploads_are_retried_by_the_next_process_that_uploads(tmp_path, s3_env):
    log = tmp_path / "log"
    a = Machine(tmp_path, "a", s3_env, log)
    a.env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    assert a.run("square", 7).results[0]["square"] == 49
    pending = a.home / "remote-pending"
    assert len(list(pending.glob("*.json"))) == 1, "the upload is owed, on disk"
    a.env["AWS_ENDPOINT_URL"] = s3_env.endpoint
    assert a.run("square", 8).results[0]["square"] == 64
    assert len(keys_under(s3_env)) == 2, "the owed upload went up with the next one"
    assert list(pending.glob("*.json")) == []
    assert computations(log) == ["square:7", "square:8"]


def test_a_malformed_remote_url_is_refused_naming_the_setting(monkeypatch):
    with pytest.raises(ConfigError, match="not an s3:// URL"):
        ptd.config.set_remote("https://bucket/prefix")
    monkeypatch.setenv("PERSIST_TO_DISK_REMOTE", "s3:///no-bucket")
    ptd.config.reload()

    @ptd.persistf()
    def f(x):
        return x

    with pytest.raises(ConfigError, match="PERSIST_TO_DISK_REMOTE"):
        f(1)


def test_a_namespace_with_a_slash_is_refused():
    with pytest.raises(ConfigError, match="namespace"):
        ptd.config.set_remote_namespace("a/b")


def test_the_network_filesystem_refusal_names_the_shared_cache_as_the_way_to_share(tmp_path):
    from persist_to_disk.engine.errors import UnsafeFilesystemError
    from persist_to_disk.engine.filesystem import ensure_local_filesystem
    from test_engine import fake_mountinfo

    with pytest.raises(UnsafeFilesystemError) as raised:
        ensure_local_filesystem(str(tmp_path / "cache"), fake_mountinfo(tmp_path, "nfs4"))
    message = str(raised.value)
    assert "node-local" in message and "remote = s3://BUCKET/PREFIX" in message


def test_settings_written_by_generate_config_keep_the_remote(shared):
    ptd.config.set_remote_namespace("team-x")
    path = ptd.config.generate_config()
    text = Path(path).read_text()
    assert f"remote = {shared.url}" in text and "remote_namespace = team-x" in text
    assert "SECRET" not in text.upper().replace("REMOTE_SECRET_FILE", "")
    for name in ("PERSIST_TO_DISK_REMOTE", "PERSIST_TO_DISK_REMOTE_NAMESPACE"):
        os.environ.pop(name, None)
    ptd.config.reload()
    assert ptd.config.get_remote() == shared.url


def test_a_fork_while_another_thread_sets_up_the_remote_never_hangs_the_child(shared):
    @ptd.persistf()
    def first(x):
        return x

    thread = threading.Thread(target=first, args=(1,))
    thread.start()  # its miss builds the S3 client (hundreds of ms, under a lock)
    time.sleep(0.05)
    pid = os.fork()
    if pid == 0:  # the child: a cached call must work, whatever the parent's thread held
        code = 1
        try:
            signal_alarm = __import__("signal")
            signal_alarm.alarm(60)
            code = 0 if first(2) == 2 else 1
        finally:
            os._exit(code)
    thread.join(timeout=60)
    assert wait_for_child(pid, 90) == 0


def test_a_lock_service_that_is_down_costs_compute_once_never_the_sharing(tmp_path, s3_env):
    log = tmp_path / "log"
    a = Machine(tmp_path, "a", s3_env, log, remote_lock="redis://127.0.0.1:9/0")
    run = a.run("square", 1, 2)
    assert [r["square"] for r in run.results] == [1, 4]
    assert len(run.warnings) == 1 and "redis://127.0.0.1:9" in run.warnings[0], run.warnings
    assert len(keys_under(s3_env)) == 2, "the results were uploaded all the same"
    b = Machine(tmp_path, "b", s3_env, log)
    assert [r["by"] for r in b.run("square", 1, 2).results] == ["a", "a"]


def test_a_lease_shorter_than_its_renewal_needs_is_refused_naming_the_setting(monkeypatch):
    monkeypatch.setenv("PERSIST_TO_DISK_REMOTE_LEASE_SECONDS", "1")
    with pytest.raises(ConfigError, match="PERSIST_TO_DISK_REMOTE_LEASE_SECONDS"):
        ptd.config.reload()
        ptd.config.get_remote()


@ptd.persistf(groupby=["a", "b", "c", "d", "e"])
def tagged(x, a, b, c, d, e):
    return x


@ptd.persistf()
def plain(x):
    return x


def test_a_leaf_whose_remote_name_would_be_too_long_stays_local_and_others_still_share(
        shared):
    tags = ["t" * 220] * 5  # every folder name fits (255 bytes); the whole path does not
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tagged(1, *tags) == 1
        assert plain(2) == 2
    messages = [str(w.message) for w in caught if issubclass(w.category, PersistWarning)]
    assert len(messages) == 1 and "1024 bytes" in messages[0], messages
    names = keys_under(shared)
    assert len(names) == 1 and "/plain/" in names[0]


def test_clear_on_one_machine_removes_remote_results_of_leaves_it_never_saw(
        tmp_path, s3_env):
    log = tmp_path / "log"
    a = Machine(tmp_path, "a", s3_env, log)
    a.run("square", 1, 2)
    b = Machine(tmp_path, "b", s3_env, log)
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", "import work; print(work.square.clear())"],
                          cwd=str(b.project), env=b.env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert keys_under(s3_env) == []
    assert [r["by"] for r in b.run("square", 1).results] == ["b"]
