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

from benchmarks.adapters import LIBRARIES, OURS, OURS_FAST, adapter_class  # noqa: E402
from benchmarks.measurements import Results, Skip, Summary  # noqa: E402
from benchmarks.scenarios import SCENARIOS, scenario_module  # noqa: E402
from benchmarks.scenarios.common import estimate_seconds, fill_estimate  # noqa: E402
from benchmarks.settings import QUICK  # noqa: E402

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
