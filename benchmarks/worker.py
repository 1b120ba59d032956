"""One phase of one scenario for one library, in a process of its own.

    python -m benchmarks.worker '<job as JSON>'

Every library runs in fresh processes: libraries cannot disturb each other (imports, open
files, caches in memory), a "fresh process" figure is simply the first call of a worker, and
persist-to-disk 0.0.7, which has our import name, runs the same code in its own interpreter.
The job says the scenario, the phase, the library, its folder and the parameters.

Measurements go to the original standard output as lines starting with ``MARKER`` and holding
JSON; anything the libraries print goes to standard error.
"""

import json
import os
import sys
import time
import traceback
from typing import Any

MARKER = "@@ptd-bench "
REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Emitter:
    """Writes a phase's records; each holds a value, a skip reason or an error."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def _write(self, record: dict) -> None:
        self.stream.write(MARKER + json.dumps(record) + "\n")
        self.stream.flush()

    def __call__(self, metric: str, value: float, **params: Any) -> None:
        self._write({"metric": metric, "value": float(value), "params": params})

    def skip(self, reason: str, metric: str = None, **params: Any) -> None:
        self._write({"metric": metric, "params": params, "skipped": reason})

    def error(self, message: str, metric: str = None, **params: Any) -> None:
        self._write({"metric": metric, "params": params, "error": message})

    def note(self, **fields: Any) -> None:
        """Information for the runner (versions, fill estimates), not a table value."""
        self._write({"note": fields})


def _hide_repository() -> None:
    """Drop the repository root from the import path, so that ``import persist_to_disk`` finds
    the installed 0.0.7 rather than this project (``benchmarks`` is already imported)."""
    root = os.path.realpath(REPOSITORY_ROOT)
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != root]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(argv[0])
    stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what libraries print (0.0.7 prints when it makes a folder) goes to stderr
    sys.stdout = sys.stderr
    if job.get("hide_repository"):
        _hide_repository()
    emit = Emitter(stream)
    adapter = None
    from benchmarks.adapters import Unsupported, adapter_class
    from benchmarks.scenarios import scenario_module
    try:
        adapter = adapter_class(job["library"])(job["folder"])
        started = time.perf_counter()
        adapter.setup()
        adapter.setup_seconds = time.perf_counter() - started
        emit.note(version=adapter.version())
        phase = getattr(scenario_module(job["scenario"]), "phase_" + job["phase"])
        phase(adapter, job["params"], emit)
    except Unsupported as err:
        emit.skip(str(err))
    except Exception as err:  # reported in the table as this library's error, with its text
        traceback.print_exc()
        emit.error(f"{type(err).__name__}: {err}")
    finally:
        if adapter is not None:
            try:
                adapter.close()
            except Exception:
                traceback.print_exc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
