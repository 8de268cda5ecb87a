"""ResultConverter, row by row of the seed's table."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from dify_runner.worker import ResultConverter, TaskResult, TaskStatus, TestResult, TestStatus

CREATED = datetime(2025, 11, 14, 10, 0, 0, tzinfo=timezone.utc)


def task_result(status: TaskStatus, **fields: object) -> TaskResult:
    values: dict = dict(
        task_id="wf/ds/case-1", workflow_id="wf", task_status=status, created_at=CREATED,
        execution_time=1.5, attempt_count=2, dataset="ds", scenario="smoke", error_message=None,
    )
    values.update(fields)
    return TaskResult(**values)


@pytest.mark.parametrize(
    ("task_status", "test_status"),
    [
        (TaskStatus.SUCCEEDED, TestStatus.SUCCESS),
        (TaskStatus.FAILED, TestStatus.FAILED),
        (TaskStatus.TIMEOUT, TestStatus.TIMEOUT),
        (TaskStatus.ERROR, TestStatus.ERROR),
        (TaskStatus.CANCELLED, TestStatus.ERROR),
        (TaskStatus.PENDING, TestStatus.ERROR),
        (TaskStatus.QUEUED, TestStatus.ERROR),
        (TaskStatus.RUNNING, TestStatus.ERROR),
    ],
)
def test_status_mapping(task_status: TaskStatus, test_status: TestStatus) -> None:
    assert ResultConverter.convert(task_result(task_status)).status is test_status


def test_there_are_eight_task_states_and_four_test_states() -> None:
    assert len(TaskStatus) == 8
    assert len(TestStatus) == 4


def test_fields_come_from_the_task_result_and_its_embedded_test_result() -> None:
    embedded = TestResult(
        workflow_id="wf", execution_id="x", timestamp=CREATED, status=TestStatus.SUCCESS,
        tokens_used=326, cost=0.000326, inputs={"query": "hi"}, outputs={"answer": "Hello"},
    )
    result = ResultConverter.convert(task_result(TaskStatus.FAILED, error_message="boom", test_result=embedded))
    assert result.workflow_id == "wf"
    assert result.execution_id == "wf/ds/case-1"
    assert result.timestamp == CREATED
    assert result.execution_time == 1.5
    assert result.tokens_used == 326
    assert result.cost == 0.000326
    assert result.inputs == {"query": "hi"}
    assert result.outputs == {"answer": "Hello"}
    assert result.error_message == "boom"
    assert result.dataset == "ds"


def test_defaults_without_an_embedded_test_result() -> None:
    result = ResultConverter.convert(task_result(TaskStatus.TIMEOUT, error_message="too slow"))
    assert (result.tokens_used, result.cost, result.inputs, result.outputs) == (0, 0.0, {}, {})
    assert result.error_message == "too slow"


def test_metadata_keeps_dataset_scenario_attempt_count_and_the_task_status() -> None:
    metadata = ResultConverter.convert(task_result(TaskStatus.CANCELLED)).metadata
    assert metadata["dataset"] == "ds"
    assert metadata["scenario"] == "smoke"
    assert metadata["attempt_count"] == 2
    assert metadata["task_status"] == "cancelled"


def test_convert_batch_keeps_order_and_length() -> None:
    batch = [task_result(s, task_id=f"t{i}") for i, s in enumerate(TaskStatus)]
    results = ResultConverter.convert_batch(batch)
    assert [r.execution_id for r in results] == [f"t{i}" for i in range(8)]
    assert ResultConverter.convert_batch([]) == []


def test_none_is_rejected() -> None:
    with pytest.raises(ValueError, match="task_result cannot be None"):
        ResultConverter.convert(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task_results cannot be None"):
        ResultConverter.convert_batch(None)  # type: ignore[arg-type]
