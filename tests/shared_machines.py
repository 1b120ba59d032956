"""Machines that share a cache, simulated on one host for tests/test_shared_cache.py.

A :class:`Machine` is what differs between two real machines of a team: its own settings
folder (``PERSIST_TO_DISK_HOME``, so its own project ids and machine id), its own local cache
(``PERSIST_TO_DISK_PERSIST_PATH``), and its own checkout of the same project at another
absolute path. What they share is the remote (the real SeaweedFS of ``s3_env``), the team
secret, and a log file in which every computation writes one line, so that a test counts how
often each call was computed across all machines and processes.

Every run is a fresh ``python run.py ...`` in the checkout (the project path is the working
folder, as for a user's script), with a timeout.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List

SECRET = "team-secret-for-tests-0123456789abcdef"

WORK = textwrap.dedent('''
    """The project's cached functions: each computation notes itself in PTD_TEST_LOG."""
    import os
    import time

    import persist_to_disk as ptd

    MACHINE = os.environ.get("PTD_TEST_MACHINE", "?")


    def note(what):
        with open(os.environ["PTD_TEST_LOG"], "a") as log:  # one short O_APPEND write
            log.write(f"{what} {MACHINE} {os.getpid()}\\n")


    @ptd.persistf()
    def square(x, delay=0.0):
        note(f"square:{x}")
        time.sleep(delay)
        return {"x": x, "square": x * x, "by": MACHINE}


    @ptd.persistf()
    def blob(n):
        note(f"blob:{n}")
        return bytes(range(256)) * (n // 256)


    @ptd.persistf(remote=False)
    def private(x):
        note(f"private:{x}")
        return {"x": x, "by": MACHINE}


    @ptd.persistf()
    def slow(x, seconds):
        note(f"slow-start:{x}")
        time.sleep(seconds)
        note(f"slow:{x}")
        return {"x": x, "by": MACHINE}
''')

RUN = textwrap.dedent('''
    """python run.py FUNCTION ARG... [--mode N] [--kw name=value]: print the results as JSON,
    and every warning on stderr (one line each, prefixed WARNING:)."""
    import json
    import sys
    import warnings

    import work

    warnings.simplefilter("always")
    args = sys.argv[1:]
    name, rest = args[0], args[1:]
    kwargs = {}
    positional = []
    for item in rest:
        if item.startswith("--kw="):
            key, _, value = item[5:].partition("=")
            kwargs[key] = json.loads(value)
        else:
            positional.append(json.loads(item))
    function = getattr(work, name)
    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if name in ("square", "private", "blob"):
            for x in positional:
                value = function(x, **kwargs)
                results.append(value if not isinstance(value, bytes) else len(value))
        else:
            results.append(function(*positional, **kwargs))
    for warning in caught:
        print("WARNING:", str(warning.message).replace("\\n", " "), file=sys.stderr)
    print(json.dumps(results))
''')


class Machine:
    """One simulated machine (see the module docstring)."""

    def __init__(self, root: Path, name: str, s3_env, log: Path, **settings: str) -> None:
        self.name = name
        self.root = root / name
        # the same project name, at a different absolute path on each machine
        self.project = self.root / "checkouts" / f"deep-{name}" / "proj"
        self.project.mkdir(parents=True)
        (self.project / "work.py").write_text(WORK)
        (self.project / "run.py").write_text(RUN)
        self.home = self.root / "home"
        self.cache = self.root / "cache"
        self.log = log
        self.env: Dict[str, str] = {
            **{k: v for k, v in os.environ.items()
               if not k.startswith(("PERSIST_TO_DISK_", "AWS_"))},
            **s3_env.environ(),
            "PERSIST_TO_DISK_HOME": str(self.home),
            "PERSIST_TO_DISK_PERSIST_PATH": str(self.cache),
            "PERSIST_TO_DISK_REMOTE": s3_env.url,
            "PERSIST_TO_DISK_REMOTE_SECRET": SECRET,
            "PTD_TEST_LOG": str(log),
            "PTD_TEST_MACHINE": name,
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }
        for key, value in settings.items():
            if value is None:
                self.env.pop(f"PERSIST_TO_DISK_{key.upper()}", None)
            else:
                self.env[f"PERSIST_TO_DISK_{key.upper()}"] = value

    def command(self, function: str, *args, **kwargs) -> List[str]:
        return ([sys.executable, "run.py", function] + [json.dumps(a) for a in args]
                + [f"--kw={k}={json.dumps(v)}" for k, v in kwargs.items()])

    def run(self, function: str, *args, timeout: float = 120, **kwargs) -> "Run":
        started = time.monotonic()
        done = subprocess.run(self.command(function, *args, **kwargs), cwd=str(self.project),
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)

    def start(self, function: str, *args, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(function, *args, **kwargs), cwd=str(self.project),
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)

    def ptd(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "persist_to_disk.cli", *argv],
                              cwd=str(self.project), env=self.env, capture_output=True,
                              text=True, timeout=timeout)


class Run:
    def __init__(self, code: int, stdout: str, stderr: str, seconds: float) -> None:
        self.code, self.stdout, self.stderr, self.seconds = code, stdout, stderr, seconds

    @property
    def results(self) -> list:
        assert self.code == 0, self.stderr
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def warnings(self) -> List[str]:
        return [line[len("WARNING: "):] for line in self.stderr.splitlines()
                if line.startswith("WARNING:")]


def computations(log: Path) -> List[str]:
    """``what`` of every computation noted so far (``square:3``...)."""
    if not log.exists():
        return []
    return [line.split()[0] for line in log.read_text().splitlines() if line.strip()]


def finish(process: subprocess.Popen, timeout: float = 120) -> Run:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"a machine's run hung: {err[-2000:]}")
    return Run(process.returncode, out, err, 0.0)


def wait_for(condition, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)

