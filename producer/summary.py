"""What a finished run comes to, read at a glance: per-group figures, failure classes,
the slowest and the failing cases, pass counts of repeated cases, a latency histogram.

A ``SummaryBuilder`` is fed every TestResult once, in any order, and keeps only what
the summary shows: counts, latencies (one float per case), a bounded list of slow and
failing cases, and one counter per repeated case.
"""

from __future__ import annotations

import heapq
import re
from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..worker.models import TestResult
from ..worker.statistics import ANSWERED, BatchSummary, RunStatistics

SLOWEST_SHOWN = 10
FAILING_SHOWN = 20
HISTOGRAM_BINS = 20

_HTTP = re.compile(r"HTTP (\d{3})(?: ([a-z_]+))?")
_EXCEPTION = re.compile(r"^([A-Z]\w*(?:Error|Exception|Timeout)):")


def number_text(value: float | None, digits: int = 3) -> str:
    """A figure for a table: ``digits`` decimals, or ``-`` when there is none."""
    return "-" if value is None else f"{value:.{digits}f}"


def judge_cost_text(stats: RunStatistics) -> str:
    """The judges' cost; ``?`` and a count when some of their calls reported no price."""
    if not stats.judge_cost_unknown:
        return f"{stats.judge_cost:.4f}"
    return (f"{stats.judge_cost:.4f}? ({stats.judge_cost_unknown} judge calls reported no price: a Dify judge "
            "on the blocking API)")


def task_status_of(result: TestResult) -> str:
    """The 8-state status kept in metadata (CANCELLED and ERROR both map to ERROR)."""
    return task_status_in(result.metadata, result.status.value)


def task_status_in(metadata: Mapping[str, Any], status: str) -> str:
    """``task_status_of`` for a result still in JSON form (as ``compare`` reads it)."""
    return str(metadata.get("task_status") or status)


def failure_class(result: TestResult) -> str | None:
    """A short name for why a case did not pass (None when it did), to count failures by kind."""
    status = task_status_of(result)
    if status == "succeeded":
        return None
    if status in ("timeout", "cancelled"):
        return status
    message = result.error_message or ""
    if message.startswith("expectation failed"):
        return "expectation"
    if message.startswith("workflow "):  # the Dify run itself ended failed or stopped
        return " ".join(message.split(":")[0].split()[:2])
    http = _HTTP.search(message)
    if http:
        return " ".join(part for part in ("HTTP", http.group(1), http.group(2)) if part)
    if "is not set in this worker" in message:
        return "API key not set"
    exception = _EXCEPTION.match(message)
    return exception.group(1) if exception else status


class CaseLine(BaseModel):
    """One case, as the summary's lists show it."""

    model_config = ConfigDict(extra="forbid")

    execution_id: str
    status: str
    latency: float
    error_message: str | None = None


class GroupSummary(BaseModel):
    """One workflow x dataset."""

    model_config = ConfigDict(extra="forbid")

    workflow_id: str
    dataset: str
    statistics: RunStatistics  # its total_tokens and total_cost are the group's
    failures_by_class: dict[str, int] = Field(default_factory=dict)


class CaseRepeats(BaseModel):
    """How often a repeated case passed (``repeat: N`` in the plan)."""

    model_config = ConfigDict(extra="forbid")

    case: str
    passed: int
    runs: int

    @property
    def flaky(self) -> bool:
        return 0 < self.passed < self.runs


class HistogramBin(BaseModel):
    model_config = ConfigDict(extra="forbid")

    low: float
    high: float
    count: int


class ReportSummary(BaseModel):
    """The ``summary`` part of report.json, and what the console and HTML summaries show."""

    model_config = ConfigDict(extra="forbid")

    groups: list[GroupSummary]
    failures_by_class: dict[str, int]
    slowest: list[CaseLine]
    failing: list[CaseLine]
    failing_total: int
    # Every repeated case with its pass count, flaky ones (0 < passed < runs) first.
    repeats: list[CaseRepeats]
    latency_histogram: list[HistogramBin]
    first_started: datetime | None = None

    @property
    def flaky(self) -> list[CaseRepeats]:
        return [r for r in self.repeats if r.flaky]


class SummaryBuilder:
    """Accumulates a ReportSummary from TestResults fed one at a time."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], BatchSummary] = defaultdict(BatchSummary)
        self._group_failures: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._failures: dict[str, int] = defaultdict(int)
        self._slowest: list[tuple[float, str, str]] = []  # a min-heap of the slowest so far
        self._failing: list[CaseLine] = []
        self._failing_total = 0
        self._repeats: dict[str, list[int]] = {}
        self._first_started: datetime | None = None

    def add(self, result: TestResult) -> None:
        status = task_status_of(result)
        key = (result.workflow_id, result.dataset or "-")
        self._groups[key].add(status, result.execution_time, result.tokens_used, result.cost, result.metadata,
                              result.checks)
        if self._first_started is None or result.timestamp < self._first_started:
            self._first_started = result.timestamp
        if status in ANSWERED:
            entry = (result.execution_time, result.execution_id, status)
            if len(self._slowest) < SLOWEST_SHOWN:
                heapq.heappush(self._slowest, entry)
            else:
                heapq.heappushpop(self._slowest, entry)
        kind = failure_class(result)
        if kind is not None:
            self._failures[kind] += 1
            self._group_failures[key][kind] += 1
            self._failing_total += 1
            if len(self._failing) < FAILING_SHOWN:
                self._failing.append(CaseLine(execution_id=result.execution_id, status=status,
                                              latency=result.execution_time, error_message=result.error_message))
        if "#" in result.execution_id and status != "cancelled":  # a repeat: workflow/dataset/case#n
            # A cancelled repeat never ran: it says nothing of the case's stability.
            counts = self._repeats.setdefault(result.execution_id.rsplit("#", 1)[0], [0, 0])
            counts[0] += status == "succeeded"
            counts[1] += 1

    def build(self) -> ReportSummary:
        groups = []
        for (workflow, dataset), batch in sorted(self._groups.items()):
            stats = RunStatistics.from_summaries([batch])
            groups.append(GroupSummary(workflow_id=workflow, dataset=dataset, statistics=stats,
                                       failures_by_class=dict(self._group_failures[(workflow, dataset)])))
        repeats = [CaseRepeats(case=case, passed=p, runs=n) for case, (p, n) in self._repeats.items()]
        repeats.sort(key=lambda r: (not r.flaky, r.passed / r.runs, r.case))
        slowest = sorted(self._slowest, reverse=True)
        return ReportSummary(
            groups=groups,
            failures_by_class=dict(sorted(self._failures.items(), key=lambda kv: -kv[1])),
            slowest=[CaseLine(execution_id=i, status=s, latency=t) for t, i, s in slowest],
            failing=self._failing,
            failing_total=self._failing_total,
            repeats=repeats,
            latency_histogram=histogram([t for batch in self._groups.values() for t in batch.latencies]),
            first_started=self._first_started,
        )


def histogram(values: list[float], bins: int = HISTOGRAM_BINS) -> list[HistogramBin]:
    """Equal-width bins from the smallest to the largest value."""
    if not values:
        return []
    low, high = min(values), max(values)
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for value in values:
        counts[min(int((value - low) / width), bins - 1)] += 1
    return [HistogramBin(low=round(low + i * width, 6), high=round(low + (i + 1) * width, 6), count=n)
            for i, n in enumerate(counts)]
