"""Runs the scenarios: each library in its own fresh folder, each phase in its own process.

A scenario's ``drive`` (runner side) decides which phases to run and with what parameters, and
may skip a library past its time budget; its ``phase_*`` functions (worker side) do the timed
work. The runner starts the workers, collects their records into ``Results`` and deletes every
job's folder when the job ends.

Before each scenario and after the last, the runner measures the fsync floor (``floor.py``)
in a new folder under ``tmp``, the tree the libraries' folders are made in: the results
hold one sample per moment, as scenario ``floor``, library ``fsync``.

Workers run with Python's bytecode cache on: ``PYTHONDONTWRITEBYTECODE`` is removed from
their environment, otherwise (where it is set, as on the machine of issue 15) every fresh
process recompiles every module it imports, and the import and first-hit figures measure the
compiler.
"""

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional

from . import floor
from .floor import FLOOR_LIBRARY, FLOOR_SCENARIO
from .adapters import LIBRARIES, adapter_class
from .measurements import Results
from .scenarios import scenario_module
from .settings import Settings
from .worker import MARKER, REPOSITORY_ROOT


#: removed from the workers' environment (see the module's docstring)
UNSET_FOR_WORKERS = ("PYTHONDONTWRITEBYTECODE",)


class Job:
    """One library in one scenario: a fresh temporary folder and the phases run in it.

    Layout: ``cache/`` is the library's folder (the only thing measured on disk), ``home/`` is
    ``HOME`` and this project's settings folder, ``work/`` the working directory and scratch
    (the computations file of the multi-process scenario)."""

    def __init__(self, runner: "Runner", scenario: str, library: str) -> None:
        self.runner, self.scenario, self.library = runner, scenario, library
        self.root = tempfile.mkdtemp(prefix=f"ptd-bench-{scenario}-", dir=runner.tmp)
        self.cache = os.path.join(self.root, "cache")
        self.home = os.path.join(self.root, "home")
        self.work = os.path.join(self.root, "work")
        for folder in (self.cache, self.home, self.work):
            os.makedirs(folder)

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def environment(self) -> Dict[str, str]:
        """The workers' environment: this process's, without this project's settings and
        ``UNSET_FOR_WORKERS``, with the job's home and the repository importable."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_TO_DISK_")
               and k not in UNSET_FOR_WORKERS}
        # HOME is the job's (0.0.7 keeps its settings under ~/.cache); packages installed with
        # pip --user stay importable through PYTHONUSERBASE
        env.setdefault("PYTHONUSERBASE", site.getuserbase())
        env.update(HOME=self.home, PERSIST_TO_DISK_HOME=os.path.join(self.home, ".ptd"),
                   PYTHONPATH=os.pathsep.join(
                       [REPOSITORY_ROOT] + [p for p in [env.get("PYTHONPATH")] if p]))
        return env

    def phase(self, phase: str, params: dict, library: Optional[str] = None) -> List[dict]:
        """Run ``phase`` in a new worker process (as ``library``, default the job's) and
        return its records; all but notes are also added to the results under the job's
        library."""
        library = library or self.library
        python, hide = self.runner.interpreter(library)
        job = {"scenario": self.scenario, "phase": phase, "library": library,
               "folder": self.cache, "params": params, "hide_repository": hide}
        env = self.environment()
        started = time.perf_counter()
        process = subprocess.Popen([python, "-m", "benchmarks.worker", json.dumps(job)],
                                   cwd=self.work, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        timeout = self.runner.phase_timeout
        try:
            out, err = process.communicate(timeout=timeout)
            problem = None if process.returncode == 0 else f"worker exited {process.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            problem = f"timed out after {timeout:.0f} s"
        except BaseException:  # interrupted: the worker (its own session) must not outlive us
            os.killpg(process.pid, signal.SIGKILL)
            raise
        records = []
        for line in out.splitlines():
            if line.startswith(MARKER):
                records.append(json.loads(line[len(MARKER):]))
        if problem:
            records.append({"metric": None, "params": {}, "error": problem})
        kept = []
        for record in records:
            if "note" in record:  # for the runner (versions, fill samples): not a table value
                if "version" in record["note"]:
                    self.runner.versions.setdefault(library, record["note"]["version"])
                kept.append(record)
                continue
            record.update(scenario=self.scenario, library=self.library, phase=phase)
            self.runner.results.add(record)
            kept.append(record)
        failed = [r for r in kept if "error" in r]
        self.runner.log(f"  {self.library}: {phase} {_brief(params)}"
                        f"{' (as ' + library + ')' if library != self.library else ''}: "
                        f"{time.perf_counter() - started:.1f} s"
                        + (f"; ERROR {failed[0]['error']}" if failed else ""))
        if failed and "Traceback" in (err or ""):  # an unexpected failure: show where
            self.runner.log("    " + "\n    ".join(err.strip().splitlines()[-8:]))
        return kept

    def skip(self, reason: str, metric: Optional[str] = None, **params) -> None:
        self.runner.results.add({"scenario": self.scenario, "library": self.library,
                                 "metric": metric, "params": params, "skipped": reason})
        where = _brief(params)
        self.runner.log(f"  {self.library}: {metric or 'all'}{' ' + where if where else ''}: "
                        f"{reason}")


def _brief(params: dict) -> str:
    shown = {k: v for k, v in params.items() if not isinstance(v, (list, dict))
             and k != "budget_seconds"}
    return " ".join(f"{k}={v}" for k, v in shown.items())


class Runner:
    def __init__(self, settings: Settings, libraries: List[str], tmp: Optional[str] = None,
                 venv_python: Optional[str] = None, venv_problem: Optional[str] = None,
                 log: Callable[[str], None] = None) -> None:
        self.settings = settings
        self.libraries = [name for name in LIBRARIES if name in libraries]
        self.tmp = tmp or tempfile.gettempdir()
        self.venv_python, self.venv_problem = venv_python, venv_problem
        self.results = Results()
        self.versions: Dict[str, str] = {}
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        # in-phase budget guards stop long work; this only catches a worker that hangs
        self.phase_timeout = max(60.0, 4 * settings.budget_seconds)

    def interpreter(self, library: str):
        """``(python, hide the repository from its imports)`` for ``library``'s workers."""
        if adapter_class(library).interpreter == "ptd-0.0.7":
            return self.venv_python, True
        return sys.executable, False

    def unavailable(self, library: str) -> Optional[str]:
        if adapter_class(library).interpreter == "ptd-0.0.7" and self.venv_python is None:
            return self.venv_problem or "its virtual environment was not created"
        return None

    def job(self, scenario: str, library: str) -> Job:
        return Job(self, scenario, library)

    def measure_floor(self, moment: str) -> None:
        """One sample of the fsync floor under ``tmp`` (see ``floor.py``), into the results."""
        try:
            medians = floor.measure(self.tmp, self.settings.fsync_iterations)
        except OSError as err:
            self.results.add({"scenario": FLOOR_SCENARIO, "library": FLOOR_LIBRARY,
                              "metric": None, "params": {}, "error": f"{moment}: {err}"})
            return
        for mode, value in medians.items():
            self.results.add({"scenario": FLOOR_SCENARIO, "library": FLOOR_LIBRARY,
                              "metric": f"{mode}_us", "value": value, "params": {},
                              "moment": moment})
        self.log(f"[fsync floor, {moment}] " + ", ".join(
            f"{mode} {value:.0f} µs" for mode, value in medians.items()))

    def run(self, scenarios: List[str]) -> Results:
        for name in scenarios:
            self.measure_floor(f"before {name}")
            module = scenario_module(name)
            self.log(f"[{name}] {module.TITLE}")
            began = time.perf_counter()

            def drive(library: str) -> None:
                reason = self.unavailable(library)
                if reason:
                    self.results.add({"scenario": name, "library": library, "metric": None,
                                      "params": {}, "skipped": reason})
                else:
                    module.drive(self, library, adapter_class(library))

            if self.settings.jobs > 1:  # libraries side by side: a smoke test, not figures
                with ThreadPoolExecutor(self.settings.jobs) as pool:
                    list(pool.map(drive, self.libraries))
            else:
                for library in self.libraries:
                    drive(library)
            self.log(f"[{name}] done in {time.perf_counter() - began:.0f} s")
        self.measure_floor("at the end")
        return self.results
