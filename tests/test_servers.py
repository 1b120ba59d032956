"""The real servers the shared-tier tests run against (tests/servers.py, fixtures in conftest.py).

These tests pin down what the shared tier relies on from the servers themselves: SeaweedFS checks
signatures, enforces conditional writes (also on multipart completion) and keeps its data across a
restart; everything listens on 127.0.0.1 only; Valkey, alone and as a cluster, stores keys and
delivers published messages.
"""

import os
import socket
import sys
import time

import pytest

import servers
from conftest import run_python

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads the listening sockets from /proc")


def s3_error(call):
    """Run ``call`` and return the (HTTP status, error code) of the ClientError it must raise."""
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def boto3_client_from_environment():
    """A client made only from boto3's standard sources (what the library's client does)."""
    import boto3
    from botocore.config import Config
    return boto3.session.Session().client(
        "s3", config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- S3 (SeaweedFS) ---------------------------------------------------------------------------


def test_boto3_configured_only_by_s3_env_reaches_the_server_and_round_trips_an_object(s3_env):
    client = boto3_client_from_environment()
    assert client.meta.endpoint_url == s3_env.endpoint
    key = f"{s3_env.prefix}/hello"
    client.put_object(Bucket=s3_env.bucket, Key=key, Body=b"hello")
    assert client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read() == b"hello"
    assert s3_env.url == f"s3://{s3_env.bucket}/{s3_env.prefix}"


def test_the_s3_server_refuses_a_wrong_secret_and_an_unknown_key(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    status, code = s3_error(lambda: boto3_client_from_environment().get_object(
        Bucket=s3_env.bucket, Key=f"{s3_env.prefix}/x"))
    assert (status, code) == (403, "SignatureDoesNotMatch")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    status, code = s3_error(lambda: boto3_client_from_environment().get_object(
        Bucket=s3_env.bucket, Key=f"{s3_env.prefix}/x"))
    assert (status, code) == (403, "InvalidAccessKeyId")


def test_a_missing_bucket_is_an_error_not_created_on_put(s3_env):
    client = s3_env.client()
    assert s3_error(lambda: client.put_object(Bucket="ptd-no-such-bucket", Key="k", Body=b"x")) \
        == (404, "NoSuchBucket")
    assert s3_error(lambda: client.get_object(Bucket="ptd-no-such-bucket", Key="k")) \
        == (404, "NoSuchBucket")


def test_a_second_put_with_if_none_match_is_refused_and_the_first_value_stays(s3_env):
    client = s3_env.client()
    key = f"{s3_env.prefix}/first-writer-wins"
    first = client.put_object(Bucket=s3_env.bucket, Key=key, Body=b"first", IfNoneMatch="*")
    assert s3_error(lambda: client.put_object(Bucket=s3_env.bucket, Key=key, Body=b"second",
                                              IfNoneMatch="*")) == (412, "PreconditionFailed")
    got = client.get_object(Bucket=s3_env.bucket, Key=key)
    assert got["Body"].read() == b"first" and got["ETag"] == first["ETag"]


def test_a_put_with_if_match_succeeds_only_with_the_current_etag(s3_env):
    client = s3_env.client()
    key = f"{s3_env.prefix}/lease"
    etag = client.put_object(Bucket=s3_env.bucket, Key=key, Body=b"holder-1")["ETag"]
    wrong = '"0123456789abcdef0123456789abcdef"'
    assert s3_error(lambda: client.put_object(Bucket=s3_env.bucket, Key=key, Body=b"x",
                                              IfMatch=wrong)) == (412, "PreconditionFailed")
    # on a key that does not exist SeaweedFS answers 412 too (AWS answers 404 NoSuchKey)
    assert s3_error(lambda: client.put_object(Bucket=s3_env.bucket, Key=key + "-absent",
                                              Body=b"x", IfMatch=etag))[0] in (404, 412)
    renewed = client.put_object(Bucket=s3_env.bucket, Key=key, Body=b"holder-2", IfMatch=etag)
    assert renewed["ETag"] != etag
    assert client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read() == b"holder-2"


def test_completing_a_multipart_upload_with_if_none_match_over_an_object_is_refused(s3_env):
    client = s3_env.client()
    bucket, key = s3_env.bucket, f"{s3_env.prefix}/big"
    client.put_object(Bucket=bucket, Key=key, Body=b"the winner", IfNoneMatch="*")
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"late")
    assert s3_error(lambda: client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload, IfNoneMatch="*",
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})) \
        == (412, "PreconditionFailed")
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"the winner"
    # the refused upload is still pending until the client aborts it; then nothing is left
    pending = client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    assert [u["UploadId"] for u in pending] == [upload]
    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
    assert client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []) == []


def test_an_unfinished_multipart_upload_is_invisible(s3_env):
    client = s3_env.client()
    bucket, key = s3_env.bucket, f"{s3_env.prefix}/unfinished"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"part")
    assert s3_error(lambda: client.head_object(Bucket=bucket, Key=key))[0] == 404
    assert client.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount") == 0
    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)


def test_the_s3_server_keeps_its_objects_across_a_stop_and_a_start(s3_env):
    server = s3_env.server
    client = s3_env.client()
    key = f"{s3_env.prefix}/survives"
    client.put_object(Bucket=s3_env.bucket, Key=key, Body=b"kept")
    pid, endpoint = server.pid, server.endpoint
    server.stop()
    assert not process_alive(pid)
    from botocore.exceptions import EndpointConnectionError
    with pytest.raises(EndpointConnectionError):
        client.head_object(Bucket=s3_env.bucket, Key=key)
    server.start()
    assert server.endpoint == endpoint and server.pid != pid
    assert client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read() == b"kept"


@linux_only
def test_the_s3_server_listens_on_127_0_0_1_only(s3_server):
    sockets = servers.listening_sockets(s3_server.pid)
    assert {address for address, _, _ in sockets} == {"127.0.0.1"}
    ports = {port for _, port, _ in sockets}
    # every port it listens on is one the fixture chose (nothing on a default port)
    assert ports <= set(s3_server.ports.values())
    assert s3_server.ports["s3.port"] in ports


def test_a_child_process_given_s3_env_environ_reads_what_this_test_wrote(s3_env, ptd_env):
    key = f"{s3_env.prefix}/from-parent"
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=b"parent")
    child = run_python(f"""
        import boto3
        body = boto3.client("s3").get_object(Bucket={s3_env.bucket!r}, Key={key!r})["Body"].read()
        print(body.decode())
        """, ptd_env.project, ptd_env.home, timeout=60, extra_env=s3_env.environ())
    assert child.stdout.strip() == "parent"


# ---- Valkey -----------------------------------------------------------------------------------


def subscribe(pubsub, channel: str, timeout: float = 5.0) -> None:
    """Subscribe and wait for the server's confirmation (after it, a PUBLISH reaches us)."""
    pubsub.subscribe(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "subscribe":
            return
    raise AssertionError(f"no confirmation of SUBSCRIBE {channel} within {timeout} s")


def wait_for_message(pubsub, timeout: float = 5.0):
    """The next published message on ``pubsub`` (subscription confirmations skipped), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return message
    return None


def test_a_single_valkey_server_sets_gets_and_delivers_a_published_message(valkey_server):
    import redis
    client = redis.Redis.from_url(valkey_server.url, socket_timeout=5, socket_connect_timeout=5)
    assert client.set("ptd:test:single", b"v", nx=True, px=30000)
    assert not client.set("ptd:test:single", b"other", nx=True, px=30000)
    assert client.get("ptd:test:single") == b"v"
    subscriber = client.pubsub()
    subscribe(subscriber, "ptd:done:single")
    try:
        assert client.publish("ptd:done:single", b"ready") == 1
        message = wait_for_message(subscriber)
        assert message is not None and message["data"] == b"ready"
    finally:
        subscriber.close()
        client.delete("ptd:test:single")
        client.close()


def test_a_valkey_cluster_spreads_keys_over_its_nodes_and_delivers_a_message_to_any_node(
        valkey_cluster):
    import redis
    from redis.cluster import ClusterNode, RedisCluster
    assert valkey_cluster.url == f"redis+cluster://127.0.0.1:{valkey_cluster.nodes[0].port}"
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in valkey_cluster.startup_nodes],
        socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = [f"ptd:test:cluster:{i}" for i in range(30)]
        owners = {cluster.get_node_from_key(key).port for key in keys}
        assert owners == {node.port for node in valkey_cluster.nodes}
        for key in keys:
            assert cluster.set(key, key.encode(), nx=True, px=30000)
        assert [cluster.get(key) for key in keys] == [key.encode() for key in keys]
        cluster.delete(*keys)
        # PUBLISH in a cluster reaches subscribers on every node: subscribe on the last node,
        # publish through the cluster client
        last = valkey_cluster.nodes[-1]
        node_client = redis.Redis(host=last.host, port=last.port, socket_timeout=5)
        subscriber = node_client.pubsub()
        subscribe(subscriber, "ptd:done:cluster")
        try:
            cluster.publish("ptd:done:cluster", b"ready")
            message = wait_for_message(subscriber)
            assert message is not None and message["data"] == b"ready"
        finally:
            subscriber.close()
            node_client.close()
    finally:
        cluster.close()


@linux_only
def test_valkey_servers_and_cluster_nodes_listen_on_127_0_0_1_only(valkey_server, valkey_cluster):
    expected = {valkey_server.pid: {valkey_server.port}}
    for node in valkey_cluster.nodes:
        expected[node.pid] = {node.port, node.bus_port}
    for pid, ports in expected.items():
        sockets = servers.listening_sockets(pid)
        assert {address for address, _, _ in sockets} == {"127.0.0.1"}
        assert {port for _, port, _ in sockets} == ports


def test_a_stopped_valkey_server_is_gone_and_comes_back_on_the_same_port(valkey_server):
    pid, port = valkey_server.pid, valkey_server.port
    valkey_server.stop()
    assert not process_alive(pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    valkey_server.start()
    assert valkey_server.port == port and valkey_server.command("PING") == "PONG"
