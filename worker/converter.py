"""ResultConverter: TaskResult (8 executor states) -> TestResult (4 test states)."""

from __future__ import annotations

from collections.abc import Iterable

from .models import TaskResult, TaskStatus, TestResult, TestStatus

STATUS_MAP: dict[TaskStatus, TestStatus] = {
    TaskStatus.SUCCEEDED: TestStatus.SUCCESS,
    TaskStatus.FAILED: TestStatus.FAILED,
    TaskStatus.TIMEOUT: TestStatus.TIMEOUT,
    TaskStatus.ERROR: TestStatus.ERROR,
    # A case that was cancelled or never reached a final state did not produce a
    # verdict: for the collector that is an error.
    TaskStatus.CANCELLED: TestStatus.ERROR,
    TaskStatus.PENDING: TestStatus.ERROR,
    TaskStatus.QUEUED: TestStatus.ERROR,
    TaskStatus.RUNNING: TestStatus.ERROR,
}


class ResultConverter:
    """Static conversion from the executor's TaskResult to the collector's TestResult."""

    @staticmethod
    def convert(task_result: TaskResult) -> TestResult:
        if task_result is None:
            raise ValueError("task_result cannot be None")
        embedded = task_result.test_result
        return TestResult(
            workflow_id=task_result.workflow_id,
            execution_id=task_result.task_id,
            # When the case's final attempt started; a case that never started: when it ended.
            timestamp=task_result.started_at or task_result.finished_at or task_result.created_at,
            status=STATUS_MAP[task_result.task_status],
            execution_time=task_result.execution_time,
            tokens_used=embedded.tokens_used if embedded else 0,
            cost=embedded.cost if embedded else 0.0,
            inputs=dict(embedded.inputs) if embedded else {},
            outputs=dict(embedded.outputs) if embedded else {},
            error_message=task_result.error_message,
            dataset=task_result.dataset,
            checks=list(embedded.checks) if embedded else [],
            turns=list(embedded.turns) if embedded else [],
            metadata={
                **(embedded.metadata if embedded else {}),
                "dataset": task_result.dataset,
                "scenario": task_result.scenario,
                "attempt_count": task_result.attempt_count,
                # Kept so reports can tell CANCELLED from ERROR after the 8 -> 4 mapping.
                "task_status": task_result.task_status.value,
                "case_id": task_result.case_id,
                "run_id": task_result.run_id,
                **_load_figures(task_result),
            },
        )

    @staticmethod
    def convert_batch(task_results: Iterable[TaskResult]) -> list[TestResult]:
        if task_results is None:
            raise ValueError("task_results cannot be None")
        return [ResultConverter.convert(result) for result in task_results]


def _load_figures(task_result: TaskResult) -> dict[str, int]:
    """Throttled answers and stops in Dify, kept in the TestResult for the run's figures."""
    figures = {}
    if task_result.throttled:
        figures["throttled"] = task_result.throttled
    stops = [a.dify_stop for a in task_result.attempts if a.dify_stop]
    if stops:
        figures["dify_stops"] = len(stops)
        failed = sum(1 for s in stops if s != "stopped")
        if failed:
            figures["dify_stop_failures"] = failed
    return figures
