"""The Redis/Valkey lock service of the shared tier (remote/redis_leases.py), against real servers.

A single Valkey server and a 3-node Valkey cluster are started by the fixtures in conftest.py
(``valkey_server``, ``valkey_cluster``). Each test uses a key prefix of its own, so tests share
the servers without seeing each other's leases. "Machines" are simulated by the ``machine``
name a service is given: processes with different names behave as if on different machines.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from test_engine import wait_for_child

from persist_to_disk.engine.locks import Timeout
from persist_to_disk.remote import redis_leases
from persist_to_disk.remote.client import RemoteUnavailable
from persist_to_disk.remote.redis_leases import RedisLockService, parse_lock_url

pytestmark = pytest.mark.slow


@pytest.fixture(params=["single server", "cluster"])
def lock_url(request):
    """The URL of a real lock service: a single Valkey server, then a 3-node cluster."""
    if request.param == "single server":
        return request.getfixturevalue("valkey_server").url
    return request.getfixturevalue("valkey_cluster").url


@pytest.fixture
def prefix():
    """A key prefix of the test's own."""
    return f"test-{uuid.uuid4().hex[:10]}:"


def service(url, prefix, machine="machine-a", ttl=5.0, holder="tester"):
    return RedisLockService(url, holder=holder, machine=machine, ttl=ttl,
                            namespace_prefix=prefix, connect_timeout=2.0, read_timeout=5.0)


def never() -> bool:
    return False


def run_in_thread(function, timeout: float):
    """Run ``function`` in a thread; returns a callable giving ``(result or exception, the
    monotonic time it returned)`` after joining it within ``timeout``."""
    box = {}

    def target():
        try:
            box["result"] = function()
        except BaseException as err:  # handed to the test
            box["result"] = err
        box["at"] = time.monotonic()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def outcome():
        thread.join(timeout)
        assert not thread.is_alive(), f"{function} did not return within {timeout} s"
        return box["result"], box["at"]
    return outcome


# A process that takes a lease, says so, and holds it until killed.
HOLDER = """
import sys, time
from persist_to_disk.remote.redis_leases import RedisLockService
url, prefix, machine, ttl, name = sys.argv[1:6]
svc = RedisLockService(url, holder="holder", machine=machine, ttl=float(ttl),
                       namespace_prefix=prefix)
lease = svc.lease(name, timeout=10, result_exists=lambda: False)
assert lease.acquire() is None
print("held", flush=True)
time.sleep(600)
"""

# A process computing names in a shuffled order, each under its lease; a result is a file.
WORKER = """
import os, random, sys, time
from persist_to_disk.remote.redis_leases import RedisLockService
url, prefix, machine, folder = sys.argv[1:5]
names = sys.argv[5:]
svc = RedisLockService(url, holder=machine, machine=machine, ttl=3.0, namespace_prefix=prefix)
random.shuffle(names)
for name in names:
    result = os.path.join(folder, name.replace("/", "_") + ".result")
    if os.path.exists(result):
        continue
    lease = svc.lease(name, timeout=60, result_exists=lambda: os.path.exists(result))
    reason = lease.acquire()
    assert reason is None, reason
    try:
        if os.path.exists(result):  # it arrived while we waited: no computation
            continue
        with open(os.path.join(folder, "computed.log"), "a") as log:
            log.write(f"{name} {os.getpid()}\\n")
        time.sleep(0.2)  # the computation
        with open(result + ".tmp", "w") as out:
            out.write(name)
        os.replace(result + ".tmp", result)
        svc.notify(name)
    finally:
        lease.release()
print("done", flush=True)
"""


def start_holder(url, prefix, machine, ttl, name) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, url, prefix, machine, str(ttl),
                                name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    line = _read_line(process, timeout=30)
    if line.strip() != "held":
        process.kill()
        process.wait(10)
        raise AssertionError(f"the holder did not take the lease: {line!r} "
                             f"{process.stderr.read()}")
    return process


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    box = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        process.kill()
        process.wait(10)
        raise AssertionError(f"no output within {timeout} s")
    return box[0]


def kill_hard(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)  # reaped: the pid no longer exists


def raw_client(url):
    """A plain redis-py client of the server, to look at keys from outside the service."""
    import redis
    import redis.cluster
    redis_url, cluster, _ = parse_lock_url(url)
    if cluster:
        return redis.cluster.RedisCluster.from_url(redis_url, socket_timeout=5)
    return redis.Redis.from_url(redis_url, socket_timeout=5)


# --- compute once ----------------------------------------------------------------------------
def test_eight_processes_on_eight_machines_compute_each_of_five_names_exactly_once(
        lock_url, prefix, tmp_path):
    names = [f"ns/module/func/{index:02d}.ptd" for index in range(5)]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, lock_url, prefix,
                                 f"machine-{index}", str(tmp_path), *names],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for index in range(8)]
    outputs = []
    for worker in workers:
        try:
            outputs.append(worker.communicate(timeout=240))
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            raise
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0 and out.strip() == "done", err
    computed = (tmp_path / "computed.log").read_text().split("\n")
    counts = {name: sum(1 for line in computed if line.split(" ")[0] == name)
              for name in names}
    assert counts == {name: 1 for name in names}
    assert all((tmp_path / (name.replace("/", "_") + ".result")).exists() for name in names)
    # every lease was given back
    client = raw_client(lock_url)
    assert all(client.get(f"{prefix}ptd:lease:{name}") is None for name in names)


# --- holders that die ------------------------------------------------------------------------
def test_a_holder_killed_on_another_machine_is_taken_over_after_the_time_to_live(
        lock_url, prefix):
    ttl = 1.5
    holder = start_holder(lock_url, prefix, "machine-a", ttl, "killed.ptd")
    try:
        waiter = service(lock_url, prefix, machine="machine-b", ttl=ttl)
        # alive and renewing: another machine waits (and times out), even past the TTL
        with pytest.raises(Timeout):
            waiter.lease("killed.ptd", timeout=2 * ttl, result_exists=never).acquire()
    finally:
        kill_hard(holder)
    killed = time.monotonic()
    lease = waiter.lease("killed.ptd", timeout=ttl + 10, result_exists=never)
    assert lease.acquire() is None
    waited = time.monotonic() - killed
    lease.release()
    # the key outlives its holder until Redis expires it: between 2/3 of the TTL (just
    # renewed) and the TTL, plus at most one backoff interval
    assert ttl / 3 <= waited <= ttl + 3, waited


def test_a_lease_of_a_dead_process_of_this_machine_is_taken_over_at_once(lock_url, prefix):
    holder = start_holder(lock_url, prefix, "machine-a", 60, "dead.ptd")
    kill_hard(holder)
    started = time.monotonic()
    lease = service(lock_url, prefix, machine="machine-a", ttl=60).lease(
        "dead.ptd", timeout=10, result_exists=never)
    assert lease.acquire() is None
    assert time.monotonic() - started < 5  # not the 60 s time-to-live
    value = json.loads(raw_client(lock_url).get(f"{prefix}ptd:lease:dead.ptd"))
    assert value["pid"] == os.getpid() and value["machine"] == "machine-a"
    lease.release()


def test_a_lease_held_by_a_live_process_of_this_machine_is_not_waited_for(lock_url, prefix):
    holder = start_holder(lock_url, prefix, "machine-a", 60, "nested.ptd")
    try:
        lease = service(lock_url, prefix, machine="machine-a").lease(
            "nested.ptd", timeout=30, result_exists=never)
        started = time.monotonic()
        reason = lease.acquire()
        assert time.monotonic() - started < 5
        assert reason is not None and f"process {holder.pid} of this machine" in reason
        lease.release()  # nothing held: the holder's lease stays
        assert raw_client(lock_url).get(f"{prefix}ptd:lease:nested.ptd") is not None
    finally:
        kill_hard(holder)


# --- renewal and release ---------------------------------------------------------------------
def test_a_renewed_lease_outlives_its_time_to_live_and_release_gives_it_back(lock_url, prefix):
    ttl = 0.6
    mine = service(lock_url, prefix, machine="machine-a", ttl=ttl)
    lease = mine.lease("renewed.ptd", timeout=5, result_exists=never)
    assert lease.acquire() is None
    time.sleep(4 * ttl)
    key = f"{prefix}ptd:lease:renewed.ptd"
    client = raw_client(lock_url)
    assert json.loads(client.get(key))["pid"] == os.getpid()
    assert not lease.lost
    other = service(lock_url, prefix, machine="machine-b", ttl=ttl)
    with pytest.raises(Timeout):
        other.lease("renewed.ptd", timeout=ttl, result_exists=never).acquire()
    lease.release()
    lease.release()  # idempotent
    assert client.get(key) is None
    again = other.lease("renewed.ptd", timeout=1, result_exists=never)
    assert again.acquire() is None
    again.release()


def test_releasing_a_lease_that_expired_and_was_taken_over_leaves_the_new_holder_alone(
        lock_url, prefix):
    first = service(lock_url, prefix, machine="machine-a", ttl=30).lease(
        "expired.ptd", timeout=1, result_exists=never)
    assert first.acquire() is None
    key = f"{prefix}ptd:lease:expired.ptd"
    client = raw_client(lock_url)
    client.delete(key)  # what Redis does when the time-to-live runs out
    second = service(lock_url, prefix, machine="machine-b", ttl=30).lease(
        "expired.ptd", timeout=1, result_exists=never)
    assert second.acquire() is None
    first.release()
    assert json.loads(client.get(key))["machine"] == "machine-b"
    second.release()
    assert client.get(key) is None


def test_a_waiter_returns_without_the_lease_when_the_result_exists(lock_url, prefix):
    holder = service(lock_url, prefix, machine="machine-a").lease(
        "present.ptd", timeout=1, result_exists=never)
    assert holder.acquire() is None
    waiter = service(lock_url, prefix, machine="machine-b").lease(
        "present.ptd", timeout=5, result_exists=lambda: True)
    assert waiter.acquire() is None
    waiter.release()  # held nothing: the holder keeps its lease
    assert json.loads(raw_client(lock_url).get(f"{prefix}ptd:lease:present.ptd")
                      )["machine"] == "machine-a"
    holder.release()


# --- wake-ups --------------------------------------------------------------------------------
def _wake_latency(url, prefix, name, wake, result_flag) -> float:
    """Seconds between ``wake(holder_lease, holder_service)`` and a waiter on another machine
    returning from acquire."""
    holder_service = service(url, prefix, machine="machine-a")
    holder = holder_service.lease(name, timeout=1, result_exists=never)
    assert holder.acquire() is None
    waiter = service(url, prefix, machine="machine-b").lease(
        name, timeout=20, result_exists=lambda: result_flag.is_set())
    outcome = run_in_thread(waiter.acquire, timeout=30)
    time.sleep(2.5)  # the waiter's backoff has grown to its largest interval
    woken = time.monotonic()
    wake(holder, holder_service)
    result, returned = outcome()
    assert result is None, result
    waiter.release()
    holder.release()
    return returned - woken


def test_a_waiter_wakes_at_once_when_the_holder_releases_or_notifies(
        lock_url, prefix, monkeypatch):
    """With the backoff made 30 s, only the message can wake the waiter within the test."""
    latencies = {}
    measured_polling = {}

    def release(holder, _service):
        holder.release()

    def notify(holder, holder_service):
        flag.set()  # the result is there; the holder still holds its lease
        holder_service.notify("notified.ptd")

    def expire(holder, _service):  # the key vanishes with no message: only polling sees it
        raw_client(lock_url).delete(holder.key)

    measured_polling["polling"] = _wake_latency(lock_url, prefix, "polled.ptd", expire,
                                                threading.Event())
    monkeypatch.setattr(redis_leases, "BACKOFF_FIRST", 30.0)
    monkeypatch.setattr(redis_leases, "BACKOFF_MAX", 30.0)
    latencies["release"] = _wake_latency(lock_url, prefix, "released.ptd", release,
                                         threading.Event())
    flag = threading.Event()
    latencies["notify"] = _wake_latency(lock_url, prefix, "notified.ptd", notify, flag)
    print(f"\nwake-up latency ({lock_url}): release {latencies['release'] * 1000:.1f} ms, "
          f"notify {latencies['notify'] * 1000:.1f} ms, polling without a message "
          f"{measured_polling['polling'] * 1000:.1f} ms")
    # a poll would take 30 s here; the waiter would have timed out after 20 s
    assert latencies["release"] < 5 and latencies["notify"] < 5


# --- faults ----------------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("form", ["redis://127.0.0.1:{port}/0",
                                  "redis+cluster://127.0.0.1:{port}",
                                  "redis://:s3cret@127.0.0.1:{port}/0?cluster=1"])
def test_an_unreachable_lock_service_raises_remote_unavailable_quickly(form):
    url = form.format(port=_closed_port())
    unreachable = RedisLockService(url, holder="h", machine="m", ttl=5)  # connects later
    started = time.monotonic()
    with pytest.raises(RemoteUnavailable) as caught:
        unreachable.lease("x.ptd", timeout=None, result_exists=never).acquire()
    with pytest.raises(RemoteUnavailable):
        unreachable.notify("x.ptd")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "127.0.0.1" in message and "s3cret" not in message
    assert isinstance(caught.value, OSError)


def test_a_stopped_server_makes_a_waiter_raise_remote_unavailable_not_hang(tmp_path, prefix):
    import servers  # tests/servers.py, as the fixtures use it
    server = servers.start_valkey(str(tmp_path / "valkey"))
    try:
        holder = service(server.url, prefix, machine="machine-a").lease(
            "stopped.ptd", timeout=1, result_exists=never)
        assert holder.acquire() is None
        waiter = service(server.url, prefix, machine="machine-b").lease(
            "stopped.ptd", timeout=None, result_exists=never)
        outcome = run_in_thread(waiter.acquire, timeout=30)
        time.sleep(0.5)
        server.stop()
        result, _ = outcome()
        assert isinstance(result, RemoteUnavailable), result
        holder.release()  # errors ignored: the lease would expire
    finally:
        server.stop()


# --- processes -------------------------------------------------------------------------------
def test_a_forked_child_neither_renews_nor_deletes_its_parents_lease(valkey_server, prefix):
    ttl = 0.9
    mine = service(valkey_server.url, prefix, machine="machine-a", ttl=ttl)
    lease = mine.lease("forked.ptd", timeout=1, result_exists=never)
    assert lease.acquire() is None
    key = f"{prefix}ptd:lease:forked.ptd"
    pid = os.fork()
    if pid == 0:  # the child: its own connection works, the parent's lease is not its own
        code = 1
        try:
            lease.release()
            assert mine.client().ping()
            value = mine.client().get(key)
            code = 0 if value is not None and json.loads(value)["pid"] != os.getpid() else 2
        finally:
            os._exit(code)
    assert wait_for_child(pid, 30) == 0
    time.sleep(2 * ttl)  # still renewed by the parent, and the parent's client still works
    assert json.loads(raw_client(valkey_server.url).get(key))["pid"] == os.getpid()
    lease.release()
    assert raw_client(valkey_server.url).get(key) is None


def test_without_redis_py_the_service_says_how_to_install_it(tmp_path):
    code = textwrap.dedent("""
        import sys
        sys.modules["redis"] = None  # as if not installed
        from persist_to_disk.remote.redis_leases import RedisLockService
        try:
            RedisLockService("redis://127.0.0.1:1/0", holder="h", machine="m", ttl=1)
        except ImportError as err:
            print(err)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=str(tmp_path))
    assert 'pip install "persist_to_disk[redis]"' in result.stdout, result.stderr


# --- URLs ------------------------------------------------------------------------------------
def test_lock_urls_name_a_server_or_a_cluster_and_never_show_the_password():
    assert parse_lock_url("redis://h:7/2") == ("redis://h:7/2", False, "redis://h:7/2")
    assert parse_lock_url("redis+cluster://h:7") == ("redis://h:7", True,
                                                     "redis+cluster://h:7")
    assert parse_lock_url("redis://h:7?cluster=1") == ("redis://h:7", True,
                                                       "redis+cluster://h:7")
    assert parse_lock_url("rediss://u:pw@h:7/0") == ("rediss://u:pw@h:7/0", False,
                                                     "rediss://u:***@h:7/0")
    for bad in ("http://h:7", "redis://", "redis+cluster://h:7/3", "redis://h:port"):
        with pytest.raises(ValueError):
            parse_lock_url(bad)
    with pytest.raises(ValueError) as caught:
        parse_lock_url("memcached://u:hunter2@h")
    assert "hunter2" not in str(caught.value)
