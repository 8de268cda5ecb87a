"""The seeds' result model: TaskStatus (8 states), TestStatus (4), TaskResult, TestResult.

A TaskResult is what a worker produces for one case (its final attempt); the chord
callback turns TaskResults into TestResults with ResultConverter.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .statistics import RunStatistics


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TaskStatus(str, Enum):
    """Where a task is in its life (executor side)."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    ERROR = "error"

    @property
    def is_final(self) -> bool:
        return self in FINAL_TASK_STATUSES

    @property
    def is_retryable(self) -> bool:
        """FAILED, TIMEOUT and ERROR are retried; SUCCEEDED and CANCELLED are not."""
        return self in (TaskStatus.FAILED, TaskStatus.TIMEOUT, TaskStatus.ERROR)


# Ends that count toward stop_conditions.max_failures.
FAILURE_STATUSES = frozenset({TaskStatus.FAILED, TaskStatus.TIMEOUT, TaskStatus.ERROR})
FINAL_TASK_STATUSES = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.TIMEOUT, TaskStatus.CANCELLED, TaskStatus.ERROR}
)


class TestStatus(str, Enum):
    """The outcome of a test case (collector side)."""

    __test__ = False  # not a pytest test class

    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"


class CheckResult(BaseModel):
    """One check of a case's ``expect:`` (equals, similarity, judge, ...): verdict, score, reason."""

    model_config = ConfigDict(extra="forbid")

    name: str
    passed: bool
    # 0..1: 1 or 0 for a yes/no check, the cosine for similarity, the judge's grade.
    score: float | None = None
    reason: str | None = None
    # A judge's own call (counted apart from the app under test).
    tokens: int = 0
    cost: float | None = None
    # The conversation turn (1-based) whose answer was checked; None: the whole case.
    turn: int | None = None


class TurnResult(BaseModel):
    """One turn of a conversation case: the message sent, the answer, its figures and checks."""

    model_config = ConfigDict(extra="forbid")

    index: int  # 1-based
    query: str
    answer: str | None = None
    latency: float = 0.0
    ttft: float | None = None
    tokens_used: int = 0
    cost: float | None = None
    conversation_id: str | None = None
    message_id: str | None = None
    passed: bool = True
    checks: list[CheckResult] = Field(default_factory=list)
    # The attempt of the case that ran this turn (a retried turn keeps the earlier turns').
    attempt: int = 1
    metadata: dict[str, Any] = Field(default_factory=dict)


class TestResult(BaseModel):
    """One case's result as reports and statistics see it."""

    __test__ = False
    model_config = ConfigDict(extra="forbid")

    workflow_id: str
    execution_id: str
    timestamp: datetime
    status: TestStatus
    execution_time: float = 0.0
    tokens_used: int = 0
    # None means "unknown": Dify's blocking API reports no price, which is not a cost of 0.
    cost: float | None = 0.0
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    error_message: str | None = None
    dataset: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    # The case's checks, in the order expect: lists them (empty without expectations).
    checks: list[CheckResult] = Field(default_factory=list)
    # A conversation's turns, in order (empty for a single call).
    turns: list[TurnResult] = Field(default_factory=list)


class AttemptRecord(BaseModel):
    """One attempt of a case: how it ended, and how long the worker waited before the next."""

    model_config = ConfigDict(extra="forbid")

    attempt: int
    status: TaskStatus
    error_message: str | None = None
    execution_time: float = 0.0
    retry_countdown: float | None = None
    # A streaming run abandoned after it started (timeout, broken stream, cancel) is stopped in
    # Dify: "stopped", or "stop failed: ..." (Dify may then still run and bill it).
    dify_stop: str | None = None


class TaskResult(BaseModel):
    """A task's final state, produced by the worker after its last attempt."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    workflow_id: str
    task_status: TaskStatus
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Seconds spent in the final attempt: the case's latency.
    execution_time: float = 0.0
    attempt_count: int = 0
    error_message: str | None = None
    dataset: str | None = None
    scenario: str | None = None
    case_id: str | None = None
    run_id: str | None = None
    attempts: list[AttemptRecord] = Field(default_factory=list)
    # Answers that refused to start the run for load (the app's concurrency limit, a quota):
    # the case waited and tried again; none of them is an attempt.
    throttled: int = 0
    # What the case returned (tokens, cost, inputs, outputs), when it returned anything.
    test_result: TestResult | None = None


class RunExecutionResult(BaseModel):
    """A finished run: its results and statistics."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    task_results: list[TaskResult] = Field(default_factory=list)
    test_results: list[TestResult] = Field(default_factory=list)
    statistics: RunStatistics
    started_at: datetime | None = None
    finished_at: datetime | None = None
    stop_reason: str | None = None

    @property
    def total_duration(self) -> float:
        return self.statistics.total_duration
