"""The benchmark suite's smoke test: ``python -m benchmarks --quick`` runs every scenario for
every library and writes its results page, plots and raw records. No timing is asserted (the
quick sizes mean nothing); what is checked is that the suite works end to end, that every
library has a figure or an explicit reason in every cell, and that it leaves nothing behind.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_python

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from benchmarks import floor  # noqa: E402
from benchmarks.adapters import LIBRARIES, OURS, OURS_FAST, adapter_class  # noqa: E402
from benchmarks.measurements import Results, Skip, Summary  # noqa: E402
from benchmarks.scenarios import SCENARIOS, scenario_module  # noqa: E402
from benchmarks.scenarios.common import estimate_seconds, fill_estimate  # noqa: E402
from benchmarks.runner import Runner  # noqa: E402
from benchmarks.settings import QUICK  # noqa: E402
from benchmarks.targets import issue15  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run of the whole suite, shared by the tests below."""
    root = tmp_path_factory.mktemp("bench")
    out, scratch, home = root / "results", root / "scratch", root / "home"
    scratch.mkdir()
    completed = run_python("", REPOSITORY, home, "--quick", "--out", str(out),
                           "--tmp", str(scratch), module="benchmarks", timeout=240)
    data = json.loads((out / "results.json").read_text())
    return {"out": out, "scratch": scratch, "stdout": completed.stdout,
            "markdown": (out / "results.md").read_text(), "data": data,
            "results": Results(data["records"])}


@pytest.mark.slow
def test_quick_run_writes_the_results_page_with_every_scenario_and_the_targets(quick_run):
    markdown = quick_run["markdown"]
    for name in SCENARIOS:
        assert scenario_module(name).TITLE in markdown
    assert "## Targets (issue 4)" in markdown
    assert "## Machine" in markdown and quick_run["data"]["machine"]["cpu"]
    for target in quick_run["data"]["targets"]:
        assert target["status"] in ("met", "NOT met", "not measured", "met where measured")
    assert "results:" in quick_run["stdout"]


#: issue 15's targets, by the start of their text, in the order of the issue
ISSUE15 = ["Import + decorate", "First hit in a fresh process", "Warm hit within 1.5×",
           "Hit at 1k entries within 1.3× of hit at 100", "Miss (standard setting) within the "
           "fsync floor + 60 µs", "Miss (fast setting) within 2×", "Store of 1 MB (fast setting) "
           "within 1.5×", "Distinct calls of a 1 ms function: 2 processes ≥ 1.6×"]


@pytest.mark.slow
def test_quick_run_checks_issue_15s_targets_and_shows_the_fsync_floor(quick_run):
    """Every issue-15 target is evaluated from the run's own figures (met or not: the quick
    sizes mean nothing, but none may be left unmeasured), in its own table beside issue 4's."""
    markdown, data = quick_run["markdown"], quick_run["data"]
    assert "## Targets (issue 4)" in markdown and "## Targets (issue 15)" in markdown
    found = [t for t in data["targets"] if t["issue"] == 15]
    assert [t["text"][:len(start)] for t, start in zip(found, ISSUE15)] == ISSUE15
    assert len(found) == len(ISSUE15)
    for target in found:
        assert target["status"] in ("met", "NOT met"), target
        assert f"| {target['text']} | **{target['status']}** |" in markdown
    assert "Targets (issue 15)" in quick_run["stdout"]
    results = quick_run["results"]
    for mode in floor.MODES:  # one sample before each scenario and one at the end
        samples = results.outcome(floor.FLOOR_SCENARIO, floor.FLOOR_LIBRARY, f"{mode}_us")
        assert isinstance(samples, Summary) and samples.runs == len(SCENARIOS) + 1
        assert samples.low > 0
    for metric in ("paired_miss_us", "paired_floor_us"):
        assert isinstance(results.outcome("small", OURS, metric), Summary), metric
        assert results.outcome("small", OURS_FAST, metric) is None  # no fsync: not paired
    assert "## fsync floor" in markdown
    assert f"Filesystem: {data['machine']['filesystem']}" in markdown
    for workers in (1, 2):  # the pool's baseline is one process
        assert isinstance(results.outcome("concurrency", OURS, "calls_per_s",
                                          {"workers": workers, "mode": "distinct"}), Summary)


@pytest.mark.slow
def test_quick_run_draws_the_growth_plots_as_png_files(quick_run):
    for name in ("growth_hit.png", "growth_miss.png"):
        picture = quick_run["out"] / name
        assert picture.read_bytes()[:8] == PNG_SIGNATURE
        assert picture.stat().st_size > 10_000  # axes, lines and a legend, not an empty canvas
        assert f"({name})" in quick_run["markdown"]


@pytest.mark.slow
def test_every_library_has_a_figure_or_a_stated_reason_in_every_cell(quick_run):
    results = quick_run["results"]
    for name in SCENARIOS:
        module = scenario_module(name)
        for library in LIBRARIES:
            assert f"| {adapter_class(library).label} |" in quick_run["markdown"]
            for column in module.columns(QUICK):
                found = results.outcome(name, library, column.metric, column.params)
                assert found is not None, f"{name}/{library}/{column.header}: no figure, no reason"
                if isinstance(found, Skip):
                    assert found.reason.strip(), f"{name}/{library}: skipped without a reason"


@pytest.mark.slow
def test_our_library_has_a_figure_in_every_cell_of_every_scenario(quick_run):
    results = quick_run["results"]
    for name in SCENARIOS:
        for column in scenario_module(name).columns(QUICK):
            for library in (OURS, OURS_FAST):
                found = results.outcome(name, library, column.metric, column.params)
                assert isinstance(found, Summary), f"{name}/{library}/{column.header}: {found}"


@pytest.mark.slow
def test_every_peer_really_hits_in_the_small_result_scenario(quick_run):
    """A library that silently recomputed would make the table meaningless: the suite counts
    the function's executions and reports such a library as an error, which must not happen."""
    results = quick_run["results"]
    for library in LIBRARIES:
        if isinstance(results.outcome("small", library, "miss_us"), Skip):
            continue  # 0.0.7 where its virtual environment cannot be installed
        assert isinstance(results.outcome("small", library, "hit_us"), Summary), library
    failures = [r["error"] for r in results.records if "error" in r]
    assert not [f for f in failures if f.startswith("NotAHit")], failures


@pytest.mark.slow
def test_the_suite_removes_every_temporary_folder_it_made(quick_run):
    assert list(quick_run["scratch"].iterdir()) == []


def test_a_fill_whose_cost_per_entry_grows_is_estimated_longer_than_a_flat_one():
    flat = [(100, 1e-3), (200, 1e-3)]
    growing = [(100, 1e-3), (150, 1.4e-3), (200, 2e-3)]  # one that rewrites a file per call
    assert estimate_seconds(flat, 200, 1_200) == pytest.approx(1.0)
    # the line through the first and last samples: 7 ms per entry at the middle of the
    # range (700 entries), times 1,000 entries
    assert estimate_seconds(growing, 200, 1_200) == pytest.approx(7.0)
    assert fill_estimate(growing, 0, 1_200) > estimate_seconds(growing, 200, 1_200)


def test_the_async_hit_benchmark_runs_and_reports_both_paths(tmp_path):
    """``benchmarks/async_hit.py`` (issue 14's figure), with tiny sizes."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "async_hit.py"
    result = subprocess.run([sys.executable, str(script), "--entries", "20", "--hits", "50",
                             "--rounds", "1"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "sync hit" in result.stdout and "async hit" in result.stdout


def test_the_fsync_floor_is_measured_in_both_modes_and_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "floor"
    folder.mkdir()
    medians = floor.measure(str(folder), iterations=3)
    assert set(medians) == {"overwrite", "append"}
    assert all(0 < value < 10_000_000 for value in medians.values()), medians
    assert list(folder.iterdir()) == []


def test_an_appended_floor_file_grows_and_an_overwritten_one_does_not(tmp_path):
    sizes = {}
    for mode in floor.MODES:
        handle = floor.FloorFile(str(tmp_path), mode)
        for _ in range(4):
            handle.iteration()
        sizes[mode] = os.path.getsize(handle.path)
        handle.close()
    assert sizes == {"overwrite": floor.BLOCK_BYTES, "append": 5 * floor.BLOCK_BYTES}


def test_workers_run_with_the_bytecode_cache_on(tmp_path, monkeypatch):
    """Where the machine sets PYTHONDONTWRITEBYTECODE, fresh processes would recompile every
    module they import, and the cold-start figures would time the compiler."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    runner = Runner(QUICK, [OURS], str(tmp_path), log=lambda text: None)
    with runner.job("small", OURS) as job:
        environment = job.environment()
    assert "PYTHONDONTWRITEBYTECODE" not in environment
    assert environment["HOME"] == job.home


def _record(scenario, library, metric, value, **params):
    return {"scenario": scenario, "library": library, "metric": metric, "value": value,
            "params": params}


def _issue15(records):
    """Issue 15's targets evaluated on ``records``: their statuses, in the issue's order."""
    found = issue15(Results(records), QUICK)
    assert [t.text[:len(start)] for t, start in zip(found, ISSUE15)] == ISSUE15
    assert len(found) == len(ISSUE15) and all(t.issue == 15 for t in found)
    return [t.status for t in found]


def test_issue_15s_targets_are_ratios_of_the_runs_figures():
    raw, dc = "raw-lmdb", "diskcache"
    records = [
        _record("small", OURS, "import_ms", 10), _record("small", dc, "import_ms", 12),
        _record("small", OURS, "first_hit_us", 500), _record("small", dc, "first_hit_us", 400),
        _record("small", OURS, "hit_us", 4.4), _record("small", raw, "hit_us", 3.0),
        _record("growth", OURS, "hit_us", 5.0, size=100),
        _record("growth", OURS, "hit_us", 7.0, size=1000),
        _record("small", OURS, "paired_miss_us", 250),
        _record("small", OURS, "paired_floor_us", 200),
        _record("small", OURS_FAST, "miss_us", 30), _record("small", raw, "miss_us", 10),
        _record("large", OURS_FAST, "store_MBps", 700, megabytes=1),
        _record("large", raw, "store_MBps", 1000, megabytes=1),
        _record("concurrency", OURS, "calls_per_s", 1000, workers=2, mode="distinct"),
        _record("concurrency", OURS, "calls_per_s", 600, workers=1, mode="distinct"),
    ]
    assert _issue15(records) == [
        "met",  # import + decorate: 10 ms vs 12 ms
        "NOT met",  # first hit: 1.25× diskcache's
        "met",  # warm hit: 1.47× raw LMDB's
        "NOT met",  # growth: 1.4×
        "met",  # standard miss: floor + 50 µs
        "NOT met",  # fast miss: 3× raw LMDB's
        "met",  # 1 MB store: 1000 / 700 = 1.43×
        "met",  # 2 processes: 1.67× the throughput of 1
    ]
    records[8]["value"] = 261  # 61 µs over the floor
    records[-1]["value"] = 700  # 2 processes: 1.43×
    statuses = _issue15(records)
    assert statuses[4] == "NOT met" and statuses[7] == "NOT met"
    assert _issue15([r for r in records if r["scenario"] != "concurrency"])[7] == "not measured"
