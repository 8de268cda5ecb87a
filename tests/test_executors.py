"""The seeds' Python API: ExecutorService, ConcurrentExecutor, StubExecutor, CancellationToken.

Each call runs on the embedded default: a private redis-server and an in-process worker.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import pytest
from dify_runner.config.manifest import RunManifest
from dify_runner.producer import CancellationToken, ConcurrentExecutor, ExecutorService, StubExecutor
from dify_runner.worker import ExecutorException, TaskExecutionException, TaskStatus, TestResult, TestStatus

from .conftest import manifest_for, stub_plan

MOCK_NOW = datetime(2025, 11, 14, 10, 0, 0)


def manifest(tmp_path: Path, n: int = 3, **execution: object) -> RunManifest:
    return manifest_for(tmp_path, stub_plan([{"id": f"task-{i}", "inputs": {"q": i}} for i in range(n)],
                                            execution=execution))


def test_execute_test_plan_rejects_none_and_empty_manifests(tmp_path: Path) -> None:
    service = ExecutorService()
    with pytest.raises(ValueError, match="manifest cannot be None"):
        service.execute_test_plan(None)  # type: ignore[arg-type]
    empty = manifest(tmp_path).model_copy(update={"cases": []})
    with pytest.raises(ExecutorException, match="RunManifest.cases cannot be empty"):
        service.execute_test_plan(empty)


def test_custom_execution_function_with_injected_clock_and_ids(tmp_path: Path) -> None:
    def my_executor(task):  # the seed's example: returns a TestResult
        return TestResult(workflow_id=task.workflow_id, execution_id=task.task_id, timestamp=MOCK_NOW,
                          status=TestStatus.SUCCESS, execution_time=1.0, tokens_used=100, cost=0.002,
                          inputs=task.parameters, outputs={"result": "success"})

    service = ExecutorService(task_execution_func=my_executor, now_fn=lambda: MOCK_NOW,
                              sleep_fn=lambda s: None, id_fn=lambda: "test_id_001")
    results = service.execute_test_plan(manifest(tmp_path))
    assert [r.status for r in results] == [TestStatus.SUCCESS] * 3
    assert {r.tokens_used for r in results} == {100} and {r.cost for r in results} == {0.002}
    assert {r.metadata["run_id"] for r in results} == {"test_id_001"}
    assert {r.timestamp.replace(tzinfo=None) for r in results} == {MOCK_NOW}
    assert results[0].outputs == {"result": "success"}


def test_retries_wait_through_the_injected_sleep(tmp_path: Path) -> None:
    attempts: list[int] = []
    waits: list[float] = []
    lock = threading.Lock()

    def flaky_execution(task):
        with lock:
            attempts.append(task.attempt_count)
        if task.attempt_count < 3:
            raise TaskExecutionException("Simulated failure")
        return {"status": "succeeded"}

    executor = ConcurrentExecutor(task_execution_func=flaky_execution, sleep_fn=waits.append)
    result = executor.run_manifest(manifest(tmp_path, n=1))  # default policy: 3 attempts, 2.0 s x 1.5
    assert attempts == [1, 2, 3]
    assert waits == [2.0, 3.0]
    assert result.statistics.succeeded_tasks == 1
    assert result.task_results[0].attempt_count == 3


def test_exception_to_status_table(tmp_path: Path) -> None:
    stub = StubExecutor(task_behaviors={"task-0": "success", "task-1": "failure", "task-2": "timeout",
                                        "task-3": "error"}, sleep_fn=lambda s: None)
    result = stub.run_manifest(manifest(tmp_path, n=4))
    by_case = {r.case_id: r for r in result.task_results}
    assert by_case["task-0"].task_status is TaskStatus.SUCCEEDED and by_case["task-0"].attempt_count == 1
    assert by_case["task-1"].task_status is TaskStatus.FAILED and by_case["task-1"].attempt_count == 3
    assert by_case["task-2"].task_status is TaskStatus.TIMEOUT and by_case["task-2"].attempt_count == 3
    assert by_case["task-3"].task_status is TaskStatus.ERROR and by_case["task-3"].attempt_count == 3
    stats = result.statistics
    assert (stats.succeeded_tasks, stats.failed_tasks, stats.timeout_tasks, stats.error_tasks) == (1, 1, 1, 1)


def test_stub_setters(tmp_path: Path) -> None:
    stub = StubExecutor(sleep_fn=lambda s: None)
    stub.set_failure_rate(1.0)
    stub.set_simulated_delay(0.0)
    stub.set_task_behavior("task-0", "success")
    result = stub.run_manifest(manifest(tmp_path, n=2, retry_policy={"max_attempts": 1}))
    assert sorted(r.task_status.value for r in result.task_results) == ["failed", "succeeded"]
    stub.clear_task_behaviors()
    stub.set_failure_rate(0.0)
    assert stub.run_manifest(manifest(tmp_path, n=2)).statistics.success_rate == 1.0


def test_a_cancelled_token_cancels_every_case(tmp_path: Path) -> None:
    token = CancellationToken()
    token.cancel()
    result = StubExecutor(simulated_delay=10.0).run_manifest(manifest(tmp_path, n=5), cancellation_token=token)
    assert result.statistics.cancelled_tasks == 5
    token.reset()
    assert not token.is_cancelled()


def test_cancel_from_another_thread_mid_run(tmp_path: Path) -> None:
    """Another thread cancels once two cases have run (a count, not a timer: under load the
    embedded default may not have started a case within any fixed delay)."""
    token = CancellationToken()
    ran, two_ran = [], threading.Event()

    def execution(task):  # noqa: ANN001, ANN202 - the seed's signature
        ran.append(task.task_id)
        if len(ran) >= 2:
            two_ran.set()
        threading.Event().wait(0.2)
        return {"status": "succeeded", "outputs": {}}

    canceller = threading.Thread(target=lambda: two_ran.wait(60) and token.cancel())
    canceller.start()
    result = ConcurrentExecutor(task_execution_func=execution).run_manifest(
        manifest(tmp_path, n=40, concurrency=2, batch_size=5), cancellation_token=token)
    canceller.join()
    stats = result.statistics
    assert stats.total_tasks == 40
    assert 0 < stats.cancelled_tasks < 40
    assert stats.succeeded_tasks + stats.cancelled_tasks == 40


def test_large_batch(tmp_path: Path) -> None:
    result = StubExecutor().run_manifest(manifest(tmp_path, n=150, concurrency=8, batch_size=20))
    assert result.statistics.total_tasks == 150 and result.statistics.success_rate == 1.0
    assert len({r.execution_id for r in result.test_results}) == 150


def test_a_python_function_cannot_go_to_a_fleet() -> None:
    with pytest.raises(ValueError, match="cannot be used with broker_url"):
        ConcurrentExecutor(task_execution_func=lambda t: {}, broker_url="redis://127.0.0.1:6379/0")
