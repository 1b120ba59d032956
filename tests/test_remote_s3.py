"""The S3 layer of the shared tier (issue 12): the client, the signed object format, and leases.

* ``remote/objects.py``: every object is signed over its bytes and its name; a reader loads
  nothing whose signature fails (any byte changed, a renamed object, truncation, the wrong kind
  of object for the reader), and unpickles nothing at all. Values stream both ways in slices.
* ``remote/client.py``: against a real SeaweedFS server: first writer wins under racing
  threads, a large value goes up in parts and a failed upload leaves nothing behind, a dead or
  silent endpoint costs seconds (``RemoteUnavailable``), and the server is checked to enforce
  conditional writes.
* ``remote/leases.py``: exactly one computation per call among racing processes, a dead
  holder's lease taken over (after its time-to-live by the server's clock on another machine,
  at once on this one), renewal keeping a busy holder's lease, and fork safety.

Every test that could hang is bounded (subprocess timeouts, joins, lease timeouts; every S3
request is bounded by the client's own timeouts).
"""

import io
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from test_engine import wait_for_child

from persist_to_disk.engine import Record, RecordKind, Store
from persist_to_disk.engine.locks import Timeout
from persist_to_disk.remote.objects import (MAGIC_SIGNED, MAGIC_UNSIGNED, ObjectRejected,
                                            Signer, object_chunks, object_size, open_object,
                                            read_record)

SECRET = b"team secret for the tests"
MiB = 1024 * 1024


def record(value: bytes = b"the value", key: bytes = b"the key") -> Record:
    return Record(RecordKind.VALUE, 1700000000.25, 1.5, "pickle:5", "3.11.7", key, value,
                  origin="")


def build(name: str, rec: Record, signer: Signer, chunk_size: int = 8 << 20) -> bytes:
    data = b"".join(bytes(chunk) for chunk in object_chunks(name, rec, signer, chunk_size))
    assert len(data) == object_size(rec)
    return data


def load(name: str, data: bytes, signer: Signer, size: int = None) -> bytes:
    """The value of the object, read the way the tier reads it (open_object + write_value)."""
    opened, write_value = open_object(name, io.BytesIO(data), len(data) if size is None else size,
                                      signer)
    out = io.BytesIO()
    assert write_value(out) == "pickle:5"
    return out.getvalue()


def rejected_both_ways(name: str, data: bytes, signer: Signer, size: int = None) -> None:
    size = len(data) if size is None else size
    with pytest.raises(ObjectRejected) as streamed:
        load(name, data, signer, size)
    with pytest.raises(ObjectRejected) as whole:
        read_record(name, io.BytesIO(data), size, signer)
    assert name in str(streamed.value) and name in str(whole.value)


# --- the object format (no server) -------------------------------------------------------------
def test_a_signed_object_reads_back_its_record_streamed_or_whole():
    signer = Signer(SECRET)
    rec = record(b"v" * 1000, b"k" * 10)._replace(origin="ptd-0.0.7")
    data = build("ns/f/abc.ptd", rec, signer)
    assert data.startswith(MAGIC_SIGNED)

    opened, write_value = open_object("ns/f/abc.ptd", io.BytesIO(data), len(data), signer)
    assert (opened.created, opened.compute_seconds, opened.python_version, opened.origin,
            opened.key_blob, opened.value_size) == (rec.created, 1.5, "3.11.7", "ptd-0.0.7",
                                                    b"k" * 10, 1000)
    out = io.BytesIO()
    assert write_value(out) == "pickle:5" and out.getvalue() == b"v" * 1000

    got = read_record("ns/f/abc.ptd", io.BytesIO(data), len(data), signer)
    assert got == rec._replace(value_blob=got.value_blob) and bytes(got.value_blob) == rec.value_blob


def test_changing_any_byte_of_a_signed_object_gets_it_rejected():
    signer = Signer(SECRET)
    name = "ns/f/abc.ptd"
    data = build(name, record(b"value bytes", b"key bytes"), signer)
    for position in range(len(data)):
        altered = bytearray(data)
        altered[position] ^= 0x01
        rejected_both_ways(name, bytes(altered), signer)


def test_an_object_copied_under_another_calls_name_is_rejected():
    signer = Signer(SECRET)
    data = build("ns/f/aaaa.ptd", record(), signer)
    assert load("ns/f/aaaa.ptd", data, signer) == b"the value"
    rejected_both_ways("ns/f/bbbb.ptd", data, signer)


def test_an_object_signed_with_another_secret_is_rejected():
    data = build("ns/f/abc.ptd", record(), Signer(b"someone else's secret"))
    rejected_both_ways("ns/f/abc.ptd", data, Signer(SECRET))


def test_signed_readers_refuse_unsigned_objects_and_unsigned_readers_refuse_signed_ones():
    unsigned = build("ns/f/abc.ptd", record(), Signer(None))
    assert unsigned.startswith(MAGIC_UNSIGNED)
    assert load("ns/f/abc.ptd", unsigned, Signer(None)) == b"the value"
    with pytest.raises(ObjectRejected, match="not signed"):
        load("ns/f/abc.ptd", unsigned, Signer(SECRET))

    signed = build("ns/f/abc.ptd", record(), Signer(SECRET))
    with pytest.raises(ObjectRejected, match="no secret"):
        load("ns/f/abc.ptd", signed, Signer(None))

    # an unsigned object still carries a checksum over its bytes and name
    altered = bytearray(unsigned)
    altered[-40] ^= 0x01
    rejected_both_ways("ns/f/abc.ptd", bytes(altered), Signer(None))
    rejected_both_ways("ns/f/other.ptd", unsigned, Signer(None))


def test_a_truncated_or_extended_object_is_rejected():
    signer = Signer(SECRET)
    name = "ns/f/abc.ptd"
    data = build(name, record(b"x" * 300), signer)
    for cut in list(range(0, 60)) + list(range(len(data) - 40, len(data))):
        rejected_both_ways(name, data[:cut], signer)  # the size the server reports
        rejected_both_ways(name, data[:cut], signer, size=len(data))  # a stream cut short
    rejected_both_ways(name, data + b"\0", signer)
    rejected_both_ways(name, data + b"\0", signer, size=len(data))
    rejected_both_ways(name, b"", signer)
    rejected_both_ways(name, b"not an object of ours at all, but long enough" * 3, signer)


def test_a_value_larger_than_the_chunk_size_streams_in_slices_of_the_value_itself():
    signer = Signer(SECRET)
    value = os.urandom(5 * MiB + 123)
    rec = record(value)
    chunks = list(object_chunks("ns/f/big.ptd", rec, signer, chunk_size=1 * MiB))
    slices = [chunk for chunk in chunks if isinstance(chunk, memoryview)]
    assert len(slices) == 6 and all(chunk.obj is value for chunk in slices)  # no copies
    assert max(len(chunk) for chunk in slices) == 1 * MiB

    class Recording(io.BytesIO):
        writes = []

        def write(self, data):
            self.writes.append(len(data))
            return super().write(data)

    data = b"".join(bytes(chunk) for chunk in chunks)
    out = Recording()
    opened, write_value = open_object("ns/f/big.ptd", io.BytesIO(data), len(data), signer)
    assert opened.value_size == len(value) and write_value(out) == "pickle:5"
    assert out.getvalue() == value and max(Recording.writes) <= 1 * MiB
    assert len(Recording.writes) >= 6
    with pytest.raises(RuntimeError, match="already been read"):
        write_value(io.BytesIO())


def test_write_value_of_a_tampered_object_makes_append_value_store_nothing(tmp_path):
    signer = Signer(SECRET)
    name = "ns/f/abc.ptd"
    good = build(name, record(b"good value " * 1000), signer)
    bad = bytearray(good)
    bad[-100] ^= 0x01
    store = Store(tmp_path / "leaf", "fast")
    digest = bytes(16)

    opened, write_value = open_object(name, io.BytesIO(bytes(bad)), len(bad), signer)
    with pytest.raises(ObjectRejected):
        store.append_value(0, digest, write_value, created=opened.created,
                           compute_seconds=opened.compute_seconds,
                           python_version=opened.python_version, key_blob=opened.key_blob)
    assert store.latest(0, digest) is None

    opened, write_value = open_object(name, io.BytesIO(good), len(good), signer)
    store.append_value(0, digest, write_value, created=opened.created,
                       compute_seconds=opened.compute_seconds,
                       python_version=opened.python_version, key_blob=opened.key_blob)
    stored = store.latest(0, digest)
    assert bytes(stored.value_blob) == b"good value " * 1000 and stored.serializer == "pickle:5"


class _Tripwire:
    """Unpickling this creates the file ``path``: the proof that something was loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_reading_objects_unpickles_nothing_even_when_the_signature_is_valid(tmp_path,
                                                                           monkeypatch):
    tripwire = tmp_path / "unpickled"
    value = pickle.dumps(_Tripwire(tripwire))

    def refuse(*args, **kwargs):
        raise AssertionError("remote/objects.py unpickled something")
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)

    for signer in (Signer(SECRET), Signer(None)):
        data = build("ns/f/abc.ptd", record(value, key=value), signer)
        assert load("ns/f/abc.ptd", data, signer) == value
        got = read_record("ns/f/abc.ptd", io.BytesIO(data), len(data), signer)
        assert bytes(got.value_blob) == value and got.key_blob == value
        for other in (Signer(b"wrong"), Signer(None) if signer.signed else Signer(SECRET)):
            rejected_both_ways("ns/f/abc.ptd", data, other)
    assert not tripwire.exists()


def test_importing_the_s3_layer_imports_neither_boto3_nor_the_api_layer():
    code = textwrap.dedent("""
        import sys
        import persist_to_disk.remote.client, persist_to_disk.remote.objects
        import persist_to_disk.remote.leases
        print(sorted(name for name in ("boto3", "botocore") if name in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    for module in ("client", "objects", "leases"):
        source = open(os.path.join(os.path.dirname(__file__), "..", "remote",
                                   module + ".py")).read()
        assert "import persist_to_disk" not in source and "from persist_to_disk" not in source
        assert "\nimport boto3" not in source and "\nimport pickle" not in source


# --- the client against a real S3 server -------------------------------------------------------
def _client(**kwargs):
    from persist_to_disk.remote.client import S3Client
    return S3Client(os.environ["PTD_TEST_BUCKET"], **kwargs)


@pytest.fixture
def s3(s3_env, monkeypatch):
    """An S3Client on the test server and this test's unique prefix."""
    monkeypatch.setenv("PTD_TEST_BUCKET", s3_env.bucket)
    return _client(connect_timeout=2.0, read_timeout=10.0), s3_env.prefix


@pytest.mark.slow
def test_of_8_threads_racing_to_create_an_object_exactly_one_wins(s3):
    client, prefix = s3
    for round_ in range(5):
        name = f"{prefix}/race-{round_}.ptd"
        barrier = threading.Barrier(8, timeout=30)
        winners = []

        def writer(number):
            barrier.wait()
            if client.put(name, b"writer %d" % number, if_none_match=True) is not None:
                winners.append(number)
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        assert len(winners) == 1, f"round {round_}: winners {winners}"
        assert client.get_bytes(name)[0] == b"writer %d" % winners[0]


def test_missing_objects_are_none_and_deleting_one_is_fine(s3):
    client, prefix = s3
    assert client.get(f"{prefix}/absent") is None
    assert client.get_bytes(f"{prefix}/absent") is None
    assert client.head(f"{prefix}/absent") is None
    client.delete(f"{prefix}/absent")
    info = client.put(f"{prefix}/present", b"12345")
    assert info.etag and info.server_now > 0
    head = client.head(f"{prefix}/present")
    assert (head.size, head.etag) == (5, info.etag) and abs(head.last_modified - time.time()) < 60
    assert client.put(f"{prefix}/present", b"other", if_match='"not-its-etag"') is None
    assert client.put(f"{prefix}/present", b"other", if_match=info.etag) is not None
    client.delete(f"{prefix}/present")
    assert client.head(f"{prefix}/present") is None


def test_list_yields_every_object_under_the_prefix_and_nothing_else(s3):
    client, prefix = s3
    names = [f"{prefix}/leaf/{n:03d}.ptd" for n in range(25)]
    for name in names:
        client.put(name, b"x" * 7)
    client.put(f"{prefix}/leafless.ptd", b"y")
    listed = list(client.list(f"{prefix}/leaf/"))
    assert [info.name for info in listed] == names
    assert all(info.size == 7 and info.etag and info.server_now == 0.0 for info in listed)


def test_a_large_value_goes_up_in_parts_and_streams_back_into_the_local_tier(s3, tmp_path):
    client, prefix = s3
    signer = Signer(SECRET)
    value = os.urandom(40 * MiB + 17)
    rec = record(value)
    name = f"{prefix}/f/large.ptd"
    began = time.monotonic()
    assert client.put_if_absent(name, object_chunks(name, rec, signer), object_size(rec),
                                part_size=5 * MiB)
    upload = time.monotonic() - began
    assert client.head(name).etag.endswith('-9"')  # a multipart upload of 9 parts

    # already there: not uploaded again, and not replaced
    never = iter(())
    assert not client.put_if_absent(name, never, object_size(rec), part_size=5 * MiB)

    body, info = client.get(name)
    with body:
        opened, write_value = open_object(name, body, info.size, signer)
        store = Store(tmp_path / "leaf", "fast")
        store.append_value(0, bytes(16), write_value, created=opened.created,
                           compute_seconds=opened.compute_seconds,
                           python_version=opened.python_version, key_blob=opened.key_blob)
    assert bytes(store.latest(0, bytes(16)).value_blob) == value
    print(f"40 MiB multipart upload: {upload:.2f} s")


def _pending_uploads(s3_env, prefix):
    listing = s3_env.client().list_multipart_uploads(Bucket=s3_env.bucket, Prefix=prefix)
    return [upload["Key"] for upload in listing.get("Uploads", [])]


def test_a_failed_multipart_upload_leaves_no_object_and_no_pending_upload(s3, s3_env):
    client, prefix = s3
    name = f"{prefix}/f/broken.ptd"

    def chunks_then_failure():
        for _ in range(3):
            yield bytes(5 * MiB)
        raise RuntimeError("the local disk went away")
    with pytest.raises(RuntimeError, match="disk went away"):
        client.put_if_absent(name, chunks_then_failure(), 40 * MiB, part_size=5 * MiB)
    assert client.head(name) is None and _pending_uploads(s3_env, prefix) == []

    with pytest.raises(ValueError, match="not the"):  # fewer bytes than announced
        client.put_if_absent(name, [bytes(11 * MiB)], 40 * MiB, part_size=5 * MiB)
    with pytest.raises(ValueError, match="more than"):
        client.put_replacing(name, [bytes(11 * MiB)], 8 * MiB, part_size=5 * MiB)
    assert client.head(name) is None and _pending_uploads(s3_env, prefix) == []


def test_of_racing_multipart_uploads_exactly_one_wins_whole_and_nothing_is_left_pending(
        s3, s3_env):
    """SeaweedFS lets two simultaneous completions with If-None-Match both succeed about one
    time in five: put_if_absent must still have exactly one winner."""
    client, prefix = s3
    for round_ in range(8):
        name = f"{prefix}/f/raced-{round_}.ptd"
        bodies = [bytes([n]) * (6 * MiB) for n in range(4)]
        results = {}
        start, complete = threading.Barrier(4, timeout=60), threading.Barrier(4, timeout=60)

        def chunks(n, bodies=bodies, complete=complete):
            yield bodies[n]
            complete.wait()  # every part is uploaded: all four complete at the same moment

        def upload(n, name=name, results=results, start=start, chunks=chunks):
            start.wait()
            results[n] = client.put_if_absent(name, chunks(n), 6 * MiB, part_size=5 * MiB)
        threads = [threading.Thread(target=upload, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert sorted(results.values()) == [False, False, False, True], (round_, results)
        winner = [n for n, won in results.items() if won][0]
        assert client.get_bytes(name)[0] == bodies[winner]
    assert _pending_uploads(s3_env, prefix) == []
    assert [info.name for info in client.list(prefix)] == [
        f"{prefix}/f/raced-{round_}.ptd" for round_ in range(8)]  # no claim left behind

    client.put_replacing(name, [bodies[winner - 1]], 6 * MiB, part_size=5 * MiB)
    assert client.get_bytes(name)[0] == bodies[winner - 1]


def test_a_multipart_upload_is_not_completed_over_an_object_stored_meanwhile(s3, s3_env):
    client, prefix = s3
    name = f"{prefix}/f/overtaken.ptd"

    def chunks():
        yield bytes(5 * MiB)
        client.put(name, b"another machine's result")  # stored while we upload
        yield bytes(5 * MiB)
    assert client.put_if_absent(name, chunks(), 10 * MiB, part_size=5 * MiB) is False
    assert client.get_bytes(name)[0] == b"another machine's result"
    assert _pending_uploads(s3_env, prefix) == []


def test_an_empty_object_does_not_stall_the_next_request(s3_env, monkeypatch):
    """SeaweedFS answers an empty PUT sent with Expect: 100-continue (botocore's default), and
    then leaves the next request on that connection unanswered until the read timeout."""
    monkeypatch.setenv("PTD_TEST_BUCKET", s3_env.bucket)
    client = _client(connect_timeout=2.0, read_timeout=4.0, max_attempts=1)
    for round_ in range(3):
        client.put(f"{s3_env.prefix}/empty-{round_}", b"")
        began = time.monotonic()
        assert client.put(f"{s3_env.prefix}/next-{round_}", b"x", if_none_match=True)
        assert time.monotonic() - began < 2.0
    assert client.get_bytes(f"{s3_env.prefix}/empty-0")[0] == b""


def test_seaweedfs_is_found_to_enforce_conditional_writes_and_the_probe_leaves_nothing(s3):
    client, prefix = s3
    assert client.conditional_writes_enforced(f"{prefix}/.probe/") is True
    assert "enforced" in client.probe_detail
    assert list(client.list(f"{prefix}/.probe/")) == []


_CALLS = ('client.head("a")', 'client.get("a")', 'client.put("a", b"x", if_none_match=True)',
          'list(client.list(""))', 'client.put_if_absent("a", [b"x" * 10], 10)',
          'client.conditional_writes_enforced("probe/")')


def _unreachable(endpoint: str, bucket: str, calls=_CALLS):
    """Run ``calls`` on a client of ``endpoint`` in a child process (killed if it hangs); each
    must raise RemoteUnavailable naming the endpoint and the bucket. Its output: the seconds
    each call took."""
    code = textwrap.dedent(f"""
        import time
        from persist_to_disk.remote.client import S3Client, RemoteUnavailable
        client = S3Client({bucket!r}, connect_timeout=1.0, read_timeout=1.0, max_attempts=2)
        calls = [{", ".join("lambda: " + call for call in calls)}]
        for call in calls:
            began = time.monotonic()
            try:
                call()
            except RemoteUnavailable as err:
                assert {endpoint!r} in str(err) and {bucket!r} in str(err), str(err)
                print(f"{{time.monotonic() - began:.2f}}")
            else:
                raise SystemExit("no RemoteUnavailable")
    """)
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint)
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, time.monotonic() - began


def test_an_endpoint_nobody_listens_on_raises_remote_unavailable_within_seconds(s3_env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: connections are refused
    result, elapsed = _unreachable(f"http://127.0.0.1:{port}", s3_env.bucket)
    times = [float(line) for line in result.stdout.split()]
    assert len(times) == 6 and max(times) < 15, times
    print(f"refused: {times} s per call, {elapsed:.1f} s in all")


@pytest.mark.slow
def test_an_endpoint_that_never_answers_raises_remote_unavailable_after_its_timeouts(s3_env):
    with socket.socket() as sock:  # accepts connections (the kernel's backlog), never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        result, elapsed = _unreachable(f"http://127.0.0.1:{port}", s3_env.bucket,
                                       _CALLS[2:3] + _CALLS[4:])
    times = [float(line) for line in result.stdout.split()]
    # two attempts of at most 1 s (connect) + 1 s (read) each, plus botocore's short backoff
    assert len(times) == 3 and max(times) < 15, times
    print(f"silent: {times} s per call, {elapsed:.1f} s in all")


def test_a_missing_bucket_and_refused_credentials_are_remote_unavailable_saying_so(s3_env,
                                                                                   monkeypatch):
    from persist_to_disk.remote.client import RemoteUnavailable, S3Client
    missing = S3Client("ptd-no-such-bucket", connect_timeout=2.0, read_timeout=5.0)
    with pytest.raises(RemoteUnavailable, match="'ptd-no-such-bucket' does not exist"):
        missing.put("a", b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    refused = S3Client(s3_env.bucket, connect_timeout=2.0, read_timeout=5.0)
    with pytest.raises(RemoteUnavailable, match="credentials were refused") as raised:
        refused.get("a")
    assert raised.value.status == 403 and s3_env.endpoint in str(raised.value)


def test_a_forked_child_makes_its_own_boto3_client_and_both_keep_working(s3):
    client, prefix = s3
    client.put(f"{prefix}/before", b"parent")
    parents = client._boto
    pid = os.fork()
    if pid == 0:  # the child: only os._exit leaves it
        try:
            ok = (client.get_bytes(f"{prefix}/before")[0] == b"parent"
                  and client.put(f"{prefix}/child", b"child") is not None
                  and client._boto is not parents)
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    assert wait_for_child(pid, 60) == 0
    assert client._boto is parents and client.get_bytes(f"{prefix}/child")[0] == b"child"


# --- leases ------------------------------------------------------------------------------------
def _service(machine: str, ttl: float = 3.0):
    from persist_to_disk.remote.leases import S3LockService
    return S3LockService(_client(connect_timeout=2.0, read_timeout=10.0),
                         holder=f"test {machine}", machine=machine, ttl=ttl)


_HOLDER = """
import os, sys, time
from persist_to_disk.remote.client import S3Client
from persist_to_disk.remote.leases import S3LockService
client = S3Client(os.environ["PTD_TEST_BUCKET"], connect_timeout=2.0, read_timeout=10.0)
service = S3LockService(client, holder="holder", machine=sys.argv[1], ttl=float(sys.argv[2]))
lease = service.lease(sys.argv[3], timeout=30, result_exists=lambda: False)
assert lease.acquire() is None
print("held", flush=True)
time.sleep(120)
"""


class _Holder:
    """A process of ``machine`` that takes the lease of ``name`` and holds it until killed."""

    def __init__(self, machine: str, ttl: float, name: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _HOLDER, machine, str(ttl), name],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        ready = []
        reader = threading.Thread(target=lambda: ready.append(self.process.stdout.readline()))
        reader.start()
        reader.join(timeout=60)
        if ready != ["held\n"]:
            self.kill()
            raise AssertionError(f"the holder did not take the lease: {ready} "
                                 f"{self.process.stderr.read()}")

    def kill(self) -> None:
        """SIGKILL, and reaped (a zombie is dead too, but this is what a crash looks like)."""
        self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def holders():
    started = []
    yield lambda *args: started.append(_Holder(*args)) or started[-1]
    for holder in started:
        if holder.process.poll() is None:
            holder.kill()


@pytest.mark.slow
def test_8_processes_racing_for_5_leases_compute_each_call_exactly_once(s3):
    client, prefix = s3
    code = textwrap.dedent("""
        import os, random, sys, time, uuid
        from persist_to_disk.remote.client import S3Client
        from persist_to_disk.remote.leases import S3LockService
        worker, prefix, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
        client = S3Client(os.environ["PTD_TEST_BUCKET"], connect_timeout=2.0, read_timeout=10.0)
        service = S3LockService(client, holder="worker " + worker, machine="machine-" + worker,
                                ttl=3.0)
        keys = list(range(5))
        random.shuffle(keys)
        time.sleep(max(0.0, start - time.time()))
        for key in keys:
            result = f"{prefix}/f/{key}.ptd"
            lease = service.lease(result, timeout=60,
                                  result_exists=lambda: client.head(result) is not None)
            assert lease.acquire() is None
            try:
                if client.head(result) is None:
                    client.put(f"{prefix}/computed/{key}/{worker}-{uuid.uuid4().hex}", b"")
                    time.sleep(0.3)
                    assert client.put_if_absent(result, [b"by " + worker.encode()], 4)
            finally:
                lease.release()
    """)
    start = time.time() + 4.0
    workers = [subprocess.Popen([sys.executable, "-c", code, str(n), prefix, str(start)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for n in range(8)]
    try:
        outputs = [worker.communicate(timeout=180) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=30)
    assert all(worker.returncode == 0 for worker in workers), "\n".join(o[1] for o in outputs)
    computed = {}
    for info in client.list(f"{prefix}/computed/"):
        key = info.name.split("/")[-2]
        computed[key] = computed.get(key, 0) + 1
    assert computed == {str(key): 1 for key in range(5)}
    assert len(list(client.list(f"{prefix}/f/"))) == 5  # results only: every lease deleted


@pytest.mark.slow
def test_a_lease_whose_holder_was_killed_is_taken_over_after_its_ttl_by_the_server_clock(
        s3, holders):
    client, prefix = s3
    name = f"{prefix}/f/call.ptd"
    holder = holders("machine-A", 3.0, name)
    lease = _service("machine-B", ttl=3.0).lease(name, timeout=1.0,
                                                 result_exists=lambda: False)
    with pytest.raises(Timeout):
        lease.acquire()  # the holder is alive: we wait (and here give up)

    holder.kill()
    killed = time.monotonic()
    lease = _service("machine-B", ttl=3.0).lease(name, timeout=30, result_exists=lambda: False)
    assert lease.acquire() is None
    waited = time.monotonic() - killed
    lease.release()
    # The holder renewed at most ttl/3 = 1 s before it died, and the server's dates count
    # whole seconds (rounding makes a lease look older only by less than 1 s, never younger):
    # it is taken over once more than 3 s old, 2-5 s after the kill.
    assert 1.5 <= waited <= 8.0, waited
    assert client.head(name + ".lease") is None
    print(f"taken over {waited:.2f} s after the kill (ttl 3 s)")


def test_a_lease_held_by_a_dead_process_of_this_machine_is_taken_over_at_once(s3, holders):
    client, prefix = s3
    name = f"{prefix}/f/call.ptd"
    holder = holders("this-machine", 60.0, name)
    holder.kill()
    killed = time.monotonic()
    lease = _service("this-machine", ttl=60.0).lease(name, timeout=30,
                                                     result_exists=lambda: False)
    assert lease.acquire() is None
    assert time.monotonic() - killed < 5.0  # not the 60 s time-to-live
    lease.release()


def test_a_lease_held_by_a_live_process_of_this_machine_is_never_waited_for(s3, holders):
    client, prefix = s3
    name = f"{prefix}/f/call.ptd"
    holder = holders("this-machine", 3.0, name)
    lease = _service("this-machine", ttl=3.0).lease(name, timeout=None,
                                                    result_exists=lambda: False)
    began = time.monotonic()
    reason = lease.acquire()
    assert reason == (f"the call's remote lease is held by process {holder.process.pid} "
                      "of this machine")
    assert time.monotonic() - began < 5.0
    lease.release()  # not held: nothing happens to the holder's lease
    assert client.head(name + ".lease") is not None


def test_a_lease_this_process_holds_is_not_waited_for_and_one_it_left_behind_is_taken_over(
        s3):
    client, prefix = s3
    name = f"{prefix}/f/call.ptd"
    service = _service("this-machine", ttl=30.0)
    held = service.lease(name, timeout=5, result_exists=lambda: False)
    assert held.acquire() is None
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(
        service.lease(name, timeout=None, result_exists=lambda: False).acquire()))
    thread.start()
    thread.join(timeout=30)
    assert outcome and "held by this process" in outcome[0]
    held.release()

    # a lease of this process that it no longer holds (its delete failed): taken over at once
    client.put(name + ".lease", json.dumps({"holder": "x", "machine": "this-machine",
                                             "pid": os.getpid(), "taken": 0.0}).encode())
    began = time.monotonic()
    again = service.lease(name, timeout=10, result_exists=lambda: False)
    assert again.acquire() is None and time.monotonic() - began < 3.0
    again.release()
    assert client.head(name + ".lease") is None


@pytest.mark.slow
def test_renewal_keeps_a_computing_holders_lease_past_its_ttl(s3):
    client, prefix = s3
    name = f"{prefix}/f/call.ptd"
    held = _service("machine-A", ttl=2.0).lease(name, timeout=5, result_exists=lambda: False)
    assert held.acquire() is None
    first = client.head(name + ".lease")
    waiter = _service("machine-B", ttl=2.0).lease(name, timeout=5.0,
                                                  result_exists=lambda: False)
    began = time.monotonic()
    with pytest.raises(Timeout, match=r"\.lease"):
        waiter.acquire()  # 5 s: 2.5 times the time-to-live
    assert time.monotonic() - began >= 4.9
    renewed = client.head(name + ".lease")
    assert renewed.etag != first.etag and renewed.last_modified >= first.last_modified + 3

    held.release()
    began = time.monotonic()
    assert waiter.acquire() is None and time.monotonic() - began < 3.0
    waiter.release()
    waiter.release()  # idempotent
    assert client.head(name + ".lease") is None


def test_a_waiter_returns_without_the_lease_as_soon_as_the_result_exists(s3):
    client, prefix = s3
    name = f"{prefix}/f/call.ptd"
    held = _service("machine-A").lease(name, timeout=5, result_exists=lambda: False)
    assert held.acquire() is None
    waiter = _service("machine-B").lease(name, timeout=30,
                                         result_exists=lambda: client.head(name) is not None)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(waiter.acquire()))
    thread.start()
    time.sleep(1.0)
    assert outcome == []  # still waiting
    client.put(name, b"the result")
    stored = time.monotonic()
    thread.join(timeout=30)
    assert outcome == [None] and time.monotonic() - stored < 3.0
    waiter.release()  # it does not hold the lease: the holder's stays
    assert client.head(name + ".lease") is not None
    held.release()
    assert client.head(name + ".lease") is None


def test_a_forked_child_never_renews_or_deletes_its_parents_lease(s3):
    client, prefix = s3
    name = f"{prefix}/f/call.ptd"
    held = _service("machine-A", ttl=2.0).lease(name, timeout=5, result_exists=lambda: False)
    assert held.acquire() is None
    first = client.head(name + ".lease")
    pid = os.fork()
    if pid == 0:
        try:
            held.release()
            time.sleep(2.5)
            os._exit(0)
        except BaseException:
            os._exit(1)
    assert wait_for_child(pid, 60) == 0
    still = client.head(name + ".lease")
    assert still is not None and still.etag != first.etag  # the parent kept renewing it
    held.release()
    assert client.head(name + ".lease") is None


@pytest.mark.slow
def test_releasing_a_lease_while_the_server_hangs_neither_waits_for_it_nor_raises(s3,
                                                                                 s3_server):
    client, prefix = s3
    name = f"{prefix}/f/call.ptd"
    held = _service("machine-A", ttl=3.0).lease(name, timeout=5, result_exists=lambda: False)
    assert held.acquire() is None
    os.kill(s3_server.pid, signal.SIGSTOP)  # connections are accepted, nothing answers
    try:
        time.sleep(1.5)  # a renewal (every 1 s) is now waiting for an answer
        began = time.monotonic()
        held.release()  # the client's timeouts would make a renewal and a delete wait 24 s
        released = time.monotonic() - began
    finally:
        os.kill(s3_server.pid, signal.SIGCONT)
    assert released < 5.0, released
    # left to expire; another machine takes it over once it has
    waiter = _service("machine-B", ttl=3.0).lease(name, timeout=30, result_exists=lambda: False)
    assert waiter.acquire() is None
    waiter.release()


def test_a_lease_time_to_live_under_two_seconds_is_refused(s3):
    with pytest.raises(ValueError, match="at least 2.0 seconds"):
        _service("machine-A", ttl=1.0)
