"""Run statistics, built from per-batch summaries so no value grows with the run's size."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# TaskStatus values, spelled out here so this module has no import cycle with models.
_SUCCEEDED, _FAILED, _TIMEOUT, _CANCELLED = "succeeded", "failed", "timeout", "cancelled"
# The final statuses of a case that Dify answered (it returned, whatever it said).
ANSWERED = frozenset({_SUCCEEDED, _FAILED})


class CheckTally(BaseModel):
    """One kind of check (equals, similarity, judge, ...) over a set of cases."""

    model_config = ConfigDict(extra="forbid")

    total: int = 0
    passed: int = 0
    score_sum: float = 0.0
    scored: int = 0

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def mean_score(self) -> float | None:
        return round(self.score_sum / self.scored, 6) if self.scored else None

    def merge(self, other: CheckTally) -> None:
        self.total += other.total
        self.passed += other.passed
        self.score_sum += other.score_sum
        self.scored += other.scored


class BatchSummary(BaseModel):
    """What one chord callback adds to the run's statistics."""

    model_config = ConfigDict(extra="forbid")

    counts: dict[str, int] = Field(default_factory=dict)
    tokens: int = 0
    cost: float = 0.0
    cost_unknown: int = 0
    # Load figures: answers that refused to start a run (waited out), stops sent to Dify for
    # abandoned runs, and those stops that failed (the run may still go on in Dify).
    throttled: int = 0
    dify_stops: int = 0
    dify_stop_failures: int = 0
    # Latencies of cases that returned (succeeded or failed), for the percentiles.
    latencies: list[float] = Field(default_factory=list)
    # Their time in the worker before the request went out (dify_client._timed).
    local_waits: list[float] = Field(default_factory=list)
    # Time to the first answer chunk of streamed cases Dify answered.
    ttfts: list[float] = Field(default_factory=list)
    # Per kind of check: how many ran, passed, and their scores; the judges' own tokens and cost.
    checks: dict[str, CheckTally] = Field(default_factory=dict)
    judge_tokens: int = 0
    judge_cost: float = 0.0
    judge_cost_unknown: int = 0

    def add(self, status: str, latency: float, tokens: int, cost: float | None,
            metadata: dict[str, object] | None = None, checks: Sequence[Any] = ()) -> None:
        """Count one case; ``metadata``: its TestResult's, which carries the load figures;
        ``checks``: its CheckResults."""
        for check in checks:
            tally = self.checks.setdefault(check.name, CheckTally())
            tally.total += 1
            tally.passed += bool(check.passed)
            if check.score is not None:
                tally.score_sum += check.score
                tally.scored += 1
            self.judge_tokens += check.tokens
            self.judge_cost += check.cost or 0.0
            # A judge on Dify's blocking API reports no price: unknown, which is not free.
            self.judge_cost_unknown += check.name == "judge" and check.cost is None
        if metadata:
            self.throttled += int(metadata.get("throttled") or 0)  # type: ignore[call-overload]
            self.dify_stops += int(metadata.get("dify_stops") or 0)  # type: ignore[call-overload]
            self.dify_stop_failures += int(metadata.get("dify_stop_failures") or 0)  # type: ignore[call-overload]
        self.counts[status] = self.counts.get(status, 0) + 1
        self.tokens += tokens
        if cost is None:
            self.cost_unknown += 1
        else:
            self.cost += cost
        # Only a case Dify answered has a latency worth a percentile: a timeout's is the
        # limit, a cancelled or refused case's is nothing.
        if status in ANSWERED:
            self.latencies.append(latency)
            wait = (metadata or {}).get("local_wait")
            if isinstance(wait, (int, float)):
                self.local_waits.append(float(wait))
            ttft = (metadata or {}).get("ttft")
            if isinstance(ttft, (int, float)):
                self.ttfts.append(float(ttft))

    def merge(self, other: BatchSummary) -> None:
        """Add ``other``'s cases to this summary."""
        for status, n in other.counts.items():
            self.counts[status] = self.counts.get(status, 0) + n
        self.tokens += other.tokens
        self.cost += other.cost
        self.cost_unknown += other.cost_unknown
        self.throttled += other.throttled
        self.dify_stops += other.dify_stops
        self.dify_stop_failures += other.dify_stop_failures
        self.latencies += other.latencies
        self.local_waits += other.local_waits
        self.ttfts += other.ttfts
        for name, tally in other.checks.items():
            self.checks.setdefault(name, CheckTally()).merge(tally)
        self.judge_tokens += other.judge_tokens
        self.judge_cost += other.judge_cost
        self.judge_cost_unknown += other.judge_cost_unknown


class CheckStats(BaseModel):
    """One kind of check in a run's (or a group's) statistics."""

    model_config = ConfigDict(extra="forbid")

    total: int
    passed: int
    pass_rate: float
    mean_score: float | None = None


class RunStatistics(BaseModel):
    """Counts by status, success rate, duration, tokens, cost and latency percentiles."""

    model_config = ConfigDict(extra="forbid")

    total_tasks: int = 0
    succeeded_tasks: int = 0
    failed_tasks: int = 0
    timeout_tasks: int = 0
    cancelled_tasks: int = 0
    error_tasks: int = 0
    success_rate: float = 0.0
    total_duration: float = 0.0
    total_tokens: int = 0
    total_cost: float = 0.0
    # Cases whose cost is unknown (blocking responses carry no price).
    cost_unknown_tasks: int = 0
    # See BatchSummary: answers waited out, stops sent to Dify, stops that failed.
    throttled_answers: int = 0
    dify_stops: int = 0
    dify_stop_failures: int = 0
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None
    # Time answered cases spent in the worker before their request went out: high means
    # the workers were overloaded (it is not in the latencies, which are Dify's).
    local_wait_p95: float | None = None
    # Time to the first answer chunk (streamed cases).
    ttft_p50: float | None = None
    ttft_p95: float | None = None
    # Per kind of check (equals, similarity, judge, ...): cases checked, passed, mean score.
    checks: dict[str, CheckStats] = Field(default_factory=dict)
    # What the judges' own calls used, apart from the app under test's tokens and cost.
    judge_tokens: int = 0
    judge_cost: float = 0.0
    # Judge calls whose cost is unknown (a Dify judge on the blocking API).
    judge_cost_unknown: int = 0

    def counts_by_status(self) -> dict[str, int]:
        """The final statuses and how many cases ended in each, in the order reports show them."""
        return {_SUCCEEDED: self.succeeded_tasks, _FAILED: self.failed_tasks, _TIMEOUT: self.timeout_tasks,
                "error": self.error_tasks, _CANCELLED: self.cancelled_tasks}

    @classmethod
    def from_summaries(cls, summaries: Iterable[BatchSummary], total_duration: float = 0.0) -> RunStatistics:
        merged = BatchSummary()
        for summary in summaries:
            merged.merge(summary)
        counts, latencies = merged.counts, merged.latencies
        total = sum(counts.values())
        succeeded = counts.get(_SUCCEEDED, 0)
        known = (_SUCCEEDED, _FAILED, _TIMEOUT, _CANCELLED)
        latencies.sort()
        return cls(
            total_tasks=total,
            succeeded_tasks=succeeded,
            failed_tasks=counts.get(_FAILED, 0),
            timeout_tasks=counts.get(_TIMEOUT, 0),
            cancelled_tasks=counts.get(_CANCELLED, 0),
            # ERROR, plus anything that never reached a final state.
            error_tasks=sum(n for s, n in counts.items() if s not in known),
            success_rate=succeeded / total if total else 0.0,
            total_duration=total_duration,
            total_tokens=merged.tokens,
            total_cost=round(merged.cost, 10),
            cost_unknown_tasks=merged.cost_unknown,
            throttled_answers=merged.throttled,
            dify_stops=merged.dify_stops,
            dify_stop_failures=merged.dify_stop_failures,
            latency_p50=percentile(latencies, 50),
            latency_p95=percentile(latencies, 95),
            latency_p99=percentile(latencies, 99),
            local_wait_p95=percentile(sorted(merged.local_waits), 95),
            ttft_p50=percentile(sorted(merged.ttfts), 50),
            ttft_p95=percentile(sorted(merged.ttfts), 95),
            checks={name: CheckStats(total=t.total, passed=t.passed, pass_rate=round(t.pass_rate, 6),
                                     mean_score=t.mean_score) for name, t in sorted(merged.checks.items())},
            judge_tokens=merged.judge_tokens,
            judge_cost=round(merged.judge_cost, 10),
            judge_cost_unknown=merged.judge_cost_unknown,
        )


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-th percentile of already sorted values, interpolating linearly."""
    if not sorted_values:
        return None
    rank = (len(sorted_values) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    value = sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)
    return round(value, 6)
