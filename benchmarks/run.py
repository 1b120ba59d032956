"""The benchmark suite's command line.

    python -m benchmarks --out benchmarks/results   # everything, full sizes: the results page
    python -m benchmarks --quick                    # smoke test: tiny sizes, under a minute
    python -m benchmarks --scenarios small,growth --libraries persist_to_disk,diskcache
    python -m benchmarks --scenarios growth --libraries persist_to_disk --sizes 10,1000,10000

Prints every table, the fsync floor and the targets (issue 4's and issue 15's), and writes
``results.md`` (tables, targets, fsync floor, machine),
``results.json`` (every record) and the growth plots (``growth_hit.png``, ``growth_miss.png``)
into ``--out`` (default: a new temporary folder, so that a partial run never overwrites the
results page).
"""

import argparse
import os
import shlex
import signal
import sys
import tempfile
import time
from typing import List, Optional

from . import machine, plots, report, targets, venv007
from .adapters import LIBRARIES, adapter_class
from .runner import Runner
from .scenarios import SCENARIOS
from .settings import profile
from .worker import REPOSITORY_ROOT

RESULTS_PAGE = os.path.relpath(os.path.join(REPOSITORY_ROOT, "benchmarks", "results"))


def _names(text: Optional[str], known: List[str], what: str) -> List[str]:
    if not text:
        return list(known)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--{what}: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(known)}")
    return names


def _ints(text: Optional[str]) -> Optional[List[int]]:
    return [int(n.replace("_", "")) for n in text.split(",")] if text else None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and one repetition: a smoke test (no meaningful figures)")
    p.add_argument("--scenarios", help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    p.add_argument("--libraries", help=f"comma-separated, from: {', '.join(LIBRARIES)}")
    p.add_argument("--repeat", type=int, help="repetitions (medians are taken over them)")
    p.add_argument("--jobs", type=int,
                   help="libraries run side by side (default 1; --quick: 2). Above 1 the "
                        "libraries disturb each other's figures: for smoke tests only")
    p.add_argument("--budget", type=float, dest="budget_seconds",
                   help="seconds a library may take per step before it is skipped from there "
                        "on (full: 300, quick: 5)")
    p.add_argument("--entries", type=int, dest="small_entries",
                   help="distinct calls of the small-result scenario (full: 10000)")
    p.add_argument("--sizes", help="growth sizes, e.g. 1000,10000,100000,1000000")
    p.add_argument("--large-mb", help="large-value sizes in MB, e.g. 1,100")
    p.add_argument("--workers", help="pool sizes of the concurrency scenario, e.g. 2,4")
    p.add_argument("--disk-entries", type=int, help="entries of the disk scenario (full: 100000)")
    p.add_argument("--out", help="results folder (default: a new temporary folder; the "
                                 f"results page of the repository is {RESULTS_PAGE})")
    p.add_argument("--tmp", help="where the libraries' temporary folders go (default: the "
                                 "system's temporary folder)")
    p.add_argument("--venv", help="virtual environment for persist-to-disk 0.0.7 (default: "
                                  f"{venv007.default_folder()})")
    return p


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so that workers and folders are cleaned up


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    scenarios = _names(args.scenarios, SCENARIOS, "scenarios")
    libraries = _names(args.libraries, LIBRARIES, "libraries")
    settings = profile(args.quick, repeat=args.repeat, jobs=args.jobs,
                       budget_seconds=args.budget_seconds,
                       small_entries=args.small_entries, growth_sizes=_ints(args.sizes),
                       large_megabytes=_ints(args.large_mb),
                       concurrency_workers=_ints(args.workers), disk_entries=args.disk_entries)
    out = args.out or tempfile.mkdtemp(prefix="ptd-bench-results-")
    tmp = os.path.abspath(args.tmp or tempfile.gettempdir())
    log = lambda text: print(text, file=sys.stderr, flush=True)
    began, load_at_start = time.perf_counter(), machine.load()

    venv_python = venv_problem = None
    if any(adapter_class(lib).interpreter == "ptd-0.0.7" for lib in libraries):
        venv_python, venv_problem = venv007.ensure(args.venv, log=log)
        if venv_problem:
            log(f"persist-to-disk 0.0.7 will be skipped: {venv_problem}")

    runner = Runner(settings, libraries, tmp, venv_python, venv_problem, log)
    results = runner.run(scenarios)

    description = machine.describe(tmp, runner.versions, load_at_start)
    description["duration"] = f"{(time.perf_counter() - began) / 60:.1f} min"
    checked = targets.evaluate(results, settings)
    os.makedirs(out, exist_ok=True)
    pictures = (plots.growth_plots(results, settings, runner.libraries, out)
                if "growth" in scenarios else {})
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in
                                                 (sys.argv[1:] if argv is None else argv))
    path = report.write(out, results, settings, description, checked, scenarios,
                        runner.libraries, command.strip(), pictures)
    print(report.tables_text(results, settings, scenarios, runner.libraries))
    print("\nfsync floor\n" + report.floor_block(results, settings, description["filesystem"]))
    print("\n" + report.targets_text(checked))
    print(f"results: {path} ({description['duration']})")
    return 0
