"""Measurements as the workers report them, and their medians as the report shows them.

A worker reports one record per timed pass (or per process), so that the median is always taken
over repetitions here, in one place, whatever the scenario. A record is a value, a skip (the
library cannot or should not run it, with the reason) or an error (it ran and failed).
"""

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union


@dataclass(frozen=True)
class Summary:
    median: float
    runs: int
    low: float
    high: float


@dataclass(frozen=True)
class Skip:
    reason: str


@dataclass(frozen=True)
class Failure:
    message: str


Outcome = Union[Summary, Skip, Failure, None]


@dataclass
class Column:
    """One column of a scenario's table: a metric at given parameters."""
    header: str
    metric: str
    params: Dict[str, Any] = field(default_factory=dict)
    #: "lower" (a cost) or "higher" (a throughput) is better; None: no ratio to our figure
    better: Optional[str] = "lower"
    digits: int = 1
    #: turns the median into the cell's text (default: the number with ``digits`` decimals)
    format: Optional[Callable[[float], str]] = None

    def text(self, value: float) -> str:
        if self.format is not None:
            return self.format(value)
        return f"{value:,.{self.digits}f}"


def _matches(record_params: Dict[str, Any], params: Dict[str, Any]) -> bool:
    """A record's params match if they are a subset of the column's (a skip of a whole size
    covers every metric at that size)."""
    return all(params.get(key) == value for key, value in record_params.items())


class Results:
    """Every record of a run, with lookups by scenario, library, metric and parameters."""

    def __init__(self, records: Optional[List[dict]] = None) -> None:
        self.records: List[dict] = list(records or [])

    def add(self, record: dict) -> None:
        self.records.append(record)

    def _select(self, scenario: str, library: str) -> List[dict]:
        return [r for r in self.records
                if r["scenario"] == scenario and r["library"] == library]

    def outcome(self, scenario: str, library: str, metric: str,
                params: Optional[Dict[str, Any]] = None) -> Outcome:
        """The median of the values of this metric, or else why there is none."""
        params = params or {}
        records = self._select(scenario, library)
        for r in records:  # an error about this very figure (calls that failed) overrides it
            if "error" in r and r.get("metric") == metric and r.get("params", {}) == params:
                return Failure(r["error"])
        values = [r["value"] for r in records
                  if "value" in r and r["metric"] == metric and r.get("params", {}) == params]
        if values:
            return Summary(statistics.median(values), len(values), min(values), max(values))
        for r in records:
            if r.get("metric") not in (None, metric) or not _matches(r.get("params", {}), params):
                continue
            if "error" in r:
                return Failure(r["error"])
            if "skipped" in r:
                return Skip(r["skipped"])
        return None

    def median(self, scenario: str, library: str, metric: str,
               params: Optional[Dict[str, Any]] = None) -> Optional[float]:
        found = self.outcome(scenario, library, metric, params)
        return found.median if isinstance(found, Summary) else None

    def libraries(self, scenario: str) -> List[str]:
        seen: List[str] = []
        for r in self.records:
            if r["scenario"] == scenario and r["library"] not in seen:
                seen.append(r["library"])
        return seen
