"""The results page: Markdown tables of medians with ratios to our figures, the targets (one
table per issue that set them), the fsync floor, the machine, and links to the plots; plus the
raw records as JSON."""

import json
import os
from typing import Dict, List

from . import floor
from .adapters import LIBRARIES, OURS, adapter_class
from .measurements import Column, Failure, Results, Skip, Summary
from .scenarios import scenario_module
from .settings import Settings
from .targets import Target, floor_summary

NOTES = [
    "Durability differs: persist_to_disk `standard` fsyncs each commit (one fsync per miss); "
    "`fast`, diskcache (SQLite WAL, `synchronous=NORMAL`), joblib, cachier, persist-to-disk "
    "0.0.7 and the raw LMDB floor do not fsync per call. Compare misses with that in mind.",
    "The floors are not caches one would deploy: `lru_cache` + `pickle.loads` is the least a "
    "hit can cost (unpickling the stored value); raw LMDB is one get or put with a blake2b key "
    "and nothing else.",
    "A library is skipped from the size (or step) whose estimated time exceeds the budget "
    "per step; the cell gives the estimate. `error:` cells are exceptions the library raised "
    "(for example an argument it cannot key).",
    "Workers run with Python's bytecode cache on: the suite removes PYTHONDONTWRITEBYTECODE "
    "from their environment (where it is set, every fresh process would recompile every module "
    "it imports, and the import and first-hit figures would time the compiler).",
]


def label(library: str) -> str:
    return adapter_class(library).label


def cell(results: Results, scenario: str, library: str, column: Column) -> str:
    found = results.outcome(scenario, library, column.metric, column.params)
    if isinstance(found, Summary):
        text = column.text(found.median)
        ours = results.median(scenario, OURS, column.metric, column.params)
        if column.better and library != OURS and ours and found.median:
            ratio = found.median / ours if column.better == "lower" else ours / found.median
            text += f" ({ratio:.2g}×)" if ratio < 10 else f" ({ratio:,.0f}×)"
        return text
    if isinstance(found, Skip):
        return found.reason.replace("|", "/")
    if isinstance(found, Failure):
        return "error: " + found.message.replace("|", "/").replace("\n", " ")[:110]
    return "not run"


def table(results: Results, scenario: str, columns: List[Column], libraries: List[str]) -> str:
    lines = ["| library | " + " | ".join(c.header for c in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for library in libraries:
        lines.append(f"| {label(library)} | "
                     + " | ".join(cell(results, scenario, library, c) for c in columns) + " |")
    return "\n".join(lines)


def targets_block(targets: List[Target]) -> str:
    lines = ["| target | status | figures |", "| --- | --- | --- |"]
    for target in targets:
        lines.append(f"| {target.text} | **{target.status}** | {target.detail} |")
    return "\n".join(lines)


def targets_of(targets: List[Target], issue: int) -> List[Target]:
    return [t for t in targets if t.issue == issue]


def floor_block(results: Results, settings: Settings, filesystem: str) -> str:
    """The fsync floor's table: the runner's samples of both modes, and the floor paired with
    our ``standard`` misses (see ``floor.py`` and ``scenarios/small.py``)."""
    lines = ["| measure | median µs | range over the samples | samples |",
             "| --- | ---: | ---: | ---: |"]
    what = {"overwrite": "overwrite one 4 KiB block + {sync} (what ~9 in 10 LMDB commits do: "
                         "the floor of the target)",
            "append": "append 4 KiB + {sync} (a commit that grows the file)"}
    for mode in floor.MODES:
        found = floor_summary(results, mode)
        name = what[mode].format(sync=floor.SYNC_CALL)
        if found is None:
            lines.append(f"| {name} | not measured | | |")
        else:
            lines.append(f"| {name} | {found.median:,.1f} | {found.low:,.1f} to "
                         f"{found.high:,.1f} | {found.runs} |")
    for metric, name in (("paired_floor_us", f"overwrite + {floor.SYNC_CALL}, alternating with "
                                             f"{label(OURS)}'s misses in its process"),
                         ("paired_miss_us", f"{label(OURS)} miss, timed one by one between "
                                            "those")):
        found = results.outcome("small", OURS, metric)
        if isinstance(found, Summary):
            lines.append(f"| {name} | {found.median:,.1f} | {found.low:,.1f} to "
                         f"{found.high:,.1f} | {found.runs} |")
        else:
            lines.append(f"| {name} | not measured | | |")
    intro = (f"Filesystem: {filesystem}. Each sample is the median of "
             f"{settings.fsync_iterations} iterations (a 4 KiB `pwrite` and `{floor.SYNC_CALL}`, "
             "the two modes alternating), taken in a new folder under the libraries' temporary "
             "folder before each scenario and at the end; the paired rows are medians of "
             f"{settings.paired_misses} misses and as many floor iterations per repetition "
             "of the small-result scenario, one after the other in the same process. Other "
             "processes' I/O makes this floor vary by an order of magnitude on a shared machine: "
             "the `standard` miss target uses the paired figures.")
    return intro + "\n\n" + "\n".join(lines)


def tables_text(results: Results, settings: Settings, scenarios: List[str],
                libraries: List[str]) -> str:
    """Every scenario's table, for a terminal."""
    parts = []
    for name in scenarios:
        module = scenario_module(name)
        parts += [module.TITLE, table(results, name, module.columns(settings), libraries), ""]
    return "\n".join(parts)


def targets_text(targets: List[Target]) -> str:
    """The targets for a terminal, issue by issue."""
    parts = []
    for issue in sorted({t.issue for t in targets}):
        parts += ([""] if parts else []) + [f"Targets (issue {issue})"]
        parts += [f"[{t.status}] {t.text}: {t.detail}" for t in targets_of(targets, issue)]
    return "\n".join(parts)


def markdown(results: Results, settings: Settings, machine: dict, targets: List[Target],
             scenarios: List[str], libraries: List[str], command: str,
             plots: Dict[str, str]) -> str:
    profile = ("quick (a smoke test: tiny sizes, one repetition; the figures mean nothing)"
               if settings.quick else "full")
    if settings.jobs > 1:
        profile += f"; {settings.jobs} libraries ran side by side, disturbing each other"
    parts = [
        "# persist_to_disk benchmarks",
        "",
        f"{machine['date']}. Command: `{command}`. Profile: {profile}; repetitions: "
        f"{settings.repeat}; budget per library and step: {settings.budget_seconds:.0f} s.",
        "",
        "Each library runs in its own fresh processes and temporary folders, caching the same "
        "functions called with the same arguments. Cells are medians over the repetitions; "
        "`(n×)` after a figure says how many times better our figure (persist_to_disk, default "
        "`standard` setting) is than that library's: above 1× ours is faster (or, for MB/s "
        "and calls/s, has the higher throughput), below 1× it is slower.",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
    ]
    for key, value in machine.items():
        if key != "versions":
            parts.append(f"| {key} | {value} |")
    versions = ", ".join(f"{label(lib)}: {machine['versions'][lib]}"
                         for lib in LIBRARIES if lib in machine["versions"])
    parts += [f"| versions | {versions} |", "", "## Targets (issue 4)", "",
              targets_block(targets_of(targets, 4)), "", "## Targets (issue 15)", "",
              "Each a ratio of two figures of this run (see `benchmarks/targets.py`).", "",
              targets_block(targets_of(targets, 15)), "", "## fsync floor", "",
              floor_block(results, settings, machine.get("filesystem", "unknown")), ""]
    for number, name in enumerate(scenarios, 1):
        module = scenario_module(name)
        parts += [f"## {number}. {module.TITLE}", "", module.summary(settings), "",
                  table(results, name, module.columns(settings), libraries), ""]
        for title, path in plots.items():
            if title.startswith(name):
                parts += [f"![{title}]({os.path.basename(path)})", ""]
    parts += ["## Notes", ""] + [f"- {note}" for note in NOTES] + [""]
    return "\n".join(parts)


def write(out: str, results: Results, settings: Settings, machine: dict,
          targets: List[Target], scenarios: List[str], libraries: List[str], command: str,
          plots: Dict[str, str]) -> str:
    """Write ``results.md`` and ``results.json`` into ``out``; return the Markdown's path."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump({"command": command, "machine": machine, "settings": vars(settings),
                   "targets": [vars(t) for t in targets], "records": results.records},
                  handle, indent=1, default=str)
    path = os.path.join(out, "results.md")
    with open(path, "w") as handle:
        handle.write(markdown(results, settings, machine, targets, scenarios, libraries,
                              command, plots))
    return path
