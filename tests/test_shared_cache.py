"""A cache shared between machines: the local LMDB tier in front, S3-compatible storage behind.

Every test runs real processes against a real SeaweedFS server (``s3_env``), with machines
simulated as separate settings folders, local caches and checkouts of the project at different
absolute paths (``shared_machines.py``). A log file counts computations across all of them.
"""

import json
import os
import re
import signal
import time
from collections import Counter

import pytest

from shared_machines import SECRET, Machine, computations, finish, wait_for


@pytest.fixture
def machines(tmp_path, s3_env):
    log = tmp_path / "computations.log"

    def make(name: str, **settings) -> Machine:
        return Machine(tmp_path, name, s3_env, log, **settings)

    make.log = log
    return make


def objects_under(s3_env):
    client = s3_env.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3_env.bucket,
                                                             Prefix=s3_env.prefix + "/")
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_machine_b_hits_what_machine_a_computed_at_another_path(machines):
    a, b = machines("a"), machines("b")
    first = a.run("square", 1, 2, 3)
    assert first.results == [{"x": x, "square": x * x, "by": "a"} for x in (1, 2, 3)]
    assert first.warnings == []
    second = b.run("square", 1, 2, 3)
    assert second.results == first.results, "B returns A's results"
    assert second.warnings == []
    assert sorted(computations(machines.log)) == ["square:1", "square:2", "square:3"]


def test_a_remote_hit_is_written_locally_so_the_next_call_never_leaves_the_machine(
        machines, s3_env):
    a, b = machines("a"), machines("b")
    a.run("square", 4)
    assert b.run("square", 4).results[0]["by"] == "a"
    # the remote gone (a closed port): B's next call is still a hit, from its own disk
    b.env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    again = b.run("square", 4, timeout=60)
    assert again.results[0]["by"] == "a"
    assert again.warnings == [], "a local hit never contacts the remote"
    assert computations(machines.log) == ["square:4"]


def test_objects_are_named_by_namespace_leaf_and_digest_not_by_absolute_paths(machines,
                                                                               s3_env):
    machines("a").run("square", 5)
    (name,) = objects_under(s3_env)
    relative = name[len(s3_env.prefix) + 1:]
    namespace, *leaf, file_name = relative.split("/")
    assert namespace == "proj", "the default namespace is the project folder's name"
    assert leaf == ["work", "square"]
    assert re.fullmatch(r"[0-9a-f]{32}\.ptd", file_name), "the call digest, in hex"
    assert "deep-a" not in name and "checkouts" not in name


def test_a_different_namespace_sees_nothing(machines):
    machines("a").run("square", 6)
    other = machines("b", remote_namespace="another-team")
    assert other.run("square", 6).results[0]["by"] == "b"
    same = machines("c", remote_namespace="proj")
    assert same.run("square", 6).results[0]["by"] == "a"
    assert computations(machines.log) == ["square:6", "square:6"]


@pytest.mark.slow
def test_two_machines_of_four_processes_compute_each_overlapping_call_once(machines):
    a, b = machines("a"), machines("b")
    calls = list(range(8))
    processes = []
    for machine in (a, b):
        for worker in range(4):
            order = calls[worker:] + calls[:worker]  # overlapping, in different orders
            processes.append(machine.start("square", *order, delay=0.3))
    runs = [finish(p, timeout=240) for p in processes]
    for run in runs:
        assert run.code == 0, run.stderr
    counts = Counter(computations(machines.log))
    assert counts == Counter({f"square:{x}": 1 for x in calls}), counts
    results = [json.loads(run.stdout.strip().splitlines()[-1]) for run in runs]
    by_call = {}
    for result in results:
        for value in result:
            by_call.setdefault(value["x"], set()).add(value["by"])
    assert all(len(makers) == 1 for makers in by_call.values()), \
        "every process returned the one stored result of each call"


@pytest.mark.slow
def test_a_lease_whose_holder_was_killed_is_taken_over_after_its_time_to_live(machines):
    a = machines("a", remote_lease_seconds="2")
    b = machines("b", remote_lease_seconds="2")
    holder = a.start("slow", 1, 60)
    wait_for(lambda: "slow-start:1" in computations(machines.log), 60, "A to start computing")
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    started = time.monotonic()
    run = b.run("slow", 1, 0.1, timeout=120)
    assert run.results[0]["by"] == "b"
    assert time.monotonic() - started < 60, "B did not wait for A's whole computation"
    assert computations(machines.log).count("slow:1") == 1


@pytest.mark.slow
def test_a_waiting_machine_picks_up_the_result_of_the_machine_computing_it(machines):
    a, b = machines("a"), machines("b")
    computing = a.start("slow", 2, 2.0)
    wait_for(lambda: "slow-start:2" in computations(machines.log), 60, "A to start computing")
    waiting = b.run("slow", 2, 2.0, timeout=120)
    assert finish(computing).results[0]["by"] == "a"
    assert waiting.results[0]["by"] == "a", "B waited for A's result instead of computing"
    assert computations(machines.log).count("slow:2") == 1


def test_an_unreachable_remote_never_fails_a_call_and_owes_the_upload_until_push(
        machines, s3_env):
    a = machines("a")
    a.env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # nothing listens there
    run = a.run("square", 7, 8, timeout=90)
    assert [r["square"] for r in run.results] == [49, 64]
    assert len(run.warnings) == 1, run.warnings
    assert "failed while" in run.warnings[0] and "ptd remote push" in run.warnings[0]
    assert run.seconds < 60, "a dead endpoint costs its timeouts once, not per call"
    assert objects_under(s3_env) == []
    # the server back: the owed uploads go up, and another machine hits them
    a.env["AWS_ENDPOINT_URL"] = s3_env.endpoint
    pushed = a.ptd("remote", "push", "--json")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert len(objects_under(s3_env)) == 2
    b = machines("b")
    assert [r["by"] for r in b.run("square", 7, 8).results] == ["a", "a"]


@pytest.mark.slow
def test_the_server_stopped_mid_run_loses_nothing_and_owed_uploads_arrive_after_restart(
        machines, s3_env):
    a = machines("a")
    a.run("square", 10)
    s3_env.server.stop()
    try:
        run = a.run("square", 10, 11, 12, timeout=120)
        assert [r["square"] for r in run.results] == [100, 121, 144]
        assert len(run.warnings) == 1, run.warnings
    finally:
        s3_env.server.start()
    assert computations(machines.log) == ["square:10", "square:11", "square:12"]
    # the next upload of any process retries what is owed (in the background); push is the
    # way to do it now
    pushed = a.ptd("remote", "push")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert len(objects_under(s3_env)) == 3
    b = machines("b")
    assert [r["by"] for r in b.run("square", 10, 11, 12).results] == ["a", "a", "a"]


def test_a_tampered_object_is_never_loaded(machines, s3_env):
    a, b = machines("a"), machines("b")
    a.run("square", 20)
    (name,) = objects_under(s3_env)
    client = s3_env.client()
    body = bytearray(client.get_object(Bucket=s3_env.bucket, Key=name)["Body"].read())
    at = body.index(b"square") if b"square" in body else len(body) // 2
    body[at] ^= 0x01
    client.put_object(Bucket=s3_env.bucket, Key=name, Body=bytes(body))
    run = b.run("square", 20)
    assert run.results[0]["by"] == "b", "B computed instead of loading the altered object"
    assert any(name in w and "not loaded" in w for w in run.warnings), run.warnings


def test_an_object_copied_under_another_calls_name_is_never_loaded(machines, s3_env):
    a, b = machines("a"), machines("b")
    a.run("square", 21)
    (source,) = objects_under(s3_env)
    a.run("square", 22)
    (target,) = [n for n in objects_under(s3_env) if n != source]
    client = s3_env.client()
    client.copy_object(Bucket=s3_env.bucket, Key=target,
                       CopySource={"Bucket": s3_env.bucket, "Key": source})
    run = b.run("square", 22)
    assert run.results[0]["square"] == 22 * 22, "never the result of another call"
    assert run.results[0]["by"] == "b"


def test_unsigned_objects_and_other_teams_secrets_are_refused(machines):
    unsigned = machines("u", remote_unsigned="yes", remote_secret=None)
    assert unsigned.run("square", 30).results[0]["by"] == "u"
    signed = machines("s")
    run = signed.run("square", 30)
    assert run.results[0]["by"] == "s"
    assert any("not loaded" in w for w in run.warnings), run.warnings
    other_team = machines("o", remote_secret="another-secret-0123456789abcdef")
    machines("s2").run("square", 31)
    run = other_team.run("square", 31)
    assert run.results[0]["by"] == "o"
    assert any("not loaded" in w for w in run.warnings), run.warnings


def test_without_a_secret_the_remote_tier_refuses_to_start_and_says_how_to_make_one(
        machines):
    lone = machines("a", remote_secret=None)
    run = lone.run("square", 40)
    assert run.code != 0
    assert "secrets.token_hex" in run.stderr and "remote_unsigned = yes" in run.stderr
    assert computations(machines.log) == [], "refused before computing anything"


def test_a_secret_file_others_can_read_is_refused(machines, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o644)
    a = machines("a", remote_secret=None, remote_secret_file=str(secret))
    run = a.run("square", 41)
    assert run.code != 0 and "chmod 600" in run.stderr
    secret.chmod(0o600)
    assert a.run("square", 41).results[0]["square"] == 41 * 41


def test_a_function_decorated_remote_false_stays_on_its_machine(machines, s3_env):
    a, b = machines("a"), machines("b")
    a.run("private", 1)
    assert objects_under(s3_env) == []
    assert b.run("private", 1).results[0]["by"] == "b"


def test_recache_replaces_the_shared_result_instead_of_yielding_to_it(machines):
    a, b = machines("a"), machines("b")
    a.run("square", 50)
    assert b.run("square", 50, cache_switch=2).results[0]["by"] == "b"  # RECACHE on B
    c = machines("c")
    assert c.run("square", 50).results[0]["by"] == "b"


def test_forget_and_clear_reach_the_remote_too(machines, s3_env):
    a = machines("a")
    a.run("square", 60, 61)
    assert len(objects_under(s3_env)) == 2
    code = ("import work, sys; work.square.forget(60); print(work.square.is_cached(60)); "
            "work.square.clear(); print(work.square.is_cached(61))")
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", code], cwd=str(a.project), env=a.env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
    assert objects_under(s3_env) == []


@pytest.mark.slow
def test_a_large_result_round_trips_through_a_multipart_upload(machines, s3_env):
    a, b = machines("a"), machines("b")
    size = 40 * 1024 * 1024  # above the 16 MiB part size
    assert a.run("blob", size, timeout=300).results == [size]
    (name,) = objects_under(s3_env)
    head = s3_env.client().head_object(Bucket=s3_env.bucket, Key=name)
    assert "-" in head["ETag"], "uploaded in parts"
    assert b.run("blob", size, timeout=300).results == [size]
    assert computations(machines.log) == [f"blob:{size}"]


@pytest.mark.slow
def test_leases_through_valkey_compute_each_call_once(machines, valkey_server):
    a = machines("a", remote_lock=valkey_server.url)
    b = machines("b", remote_lock=valkey_server.url)
    processes = [m.start("square", *range(4), delay=0.3) for m in (a, b) for _ in range(2)]
    for process in processes:
        assert finish(process, timeout=240).code == 0
    assert Counter(computations(machines.log)) == Counter({f"square:{x}": 1 for x in range(4)})


@pytest.mark.slow
def test_leases_through_a_valkey_cluster_compute_each_call_once(machines, valkey_cluster):
    a = machines("a", remote_lock=valkey_cluster.url)
    b = machines("b", remote_lock=valkey_cluster.url)
    processes = [m.start("square", *range(4), delay=0.3) for m in (a, b) for _ in range(2)]
    for process in processes:
        assert finish(process, timeout=240).code == 0
    assert Counter(computations(machines.log)) == Counter({f"square:{x}": 1 for x in range(4)})
