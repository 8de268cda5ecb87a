"""The run pipeline on a real Redis with an in-process Celery worker."""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from dify_runner.producer.embedded import InProcessWorker
from dify_runner.worker.models import TaskStatus, TestStatus
from dify_runner.worker.store import RunStore

from .conftest import manifest_for, run_manifest, stub_plan

FAST_RETRY = {"max_attempts": 3, "backoff_seconds": 0.05, "backoff_multiplier": 2.0}


def results_by_case(store: RunStore, run_id: str, batch_count: int) -> dict:
    return {r.case_id: r for r in store.iter_task_results(run_id, batch_count)}


def test_every_case_gets_exactly_one_result_with_the_right_status(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker
) -> None:
    behaviors = {"c1": "failure", "c2": "timeout", "c3": "error"}
    plan = stub_plan([{"id": f"c{i}", "inputs": {"n": i}} for i in range(40)],
                     stub={"task_behaviors": behaviors},
                     execution={"batch_size": 7, "retry_policy": {**FAST_RETRY, "max_attempts": 2}})
    manifest = manifest_for(tmp_path, plan)
    info = run_manifest(app, store, manifest)

    stats = info.statistics
    assert stats is not None
    assert (stats.total_tasks, stats.succeeded_tasks, stats.failed_tasks, stats.timeout_tasks,
            stats.error_tasks, stats.cancelled_tasks) == (40, 37, 1, 1, 1, 0)
    assert stats.success_rate == 37 / 40
    tests = list(store.iter_test_results(manifest.run_id, info.batch_count))
    assert sorted(t.execution_id for t in tests) == sorted(t.task_id for t in manifest.cases)
    by_case = results_by_case(store, manifest.run_id, info.batch_count)
    assert by_case["c1"].task_status is TaskStatus.FAILED and by_case["c1"].attempt_count == 2
    assert by_case["c3"].error_message == "RuntimeError: stub error (attempt 2)"
    assert by_case["c0"].attempt_count == 1
    assert stats.latency_p50 is not None and stats.total_tokens > 0


def test_retry_fails_twice_then_succeeds_with_backoff_from_the_formula(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker
) -> None:
    plan = stub_plan([{"id": "flaky"}], stub={"task_behaviors": {"flaky": "flaky:2"}},
                     execution={"retry_policy": {"max_attempts": 3, "backoff_seconds": 0.05, "backoff_multiplier": 3}})
    manifest = manifest_for(tmp_path, plan)
    info = run_manifest(app, store, manifest)
    result = results_by_case(store, manifest.run_id, info.batch_count)["flaky"]
    assert result.task_status is TaskStatus.SUCCEEDED
    assert result.attempt_count == 3
    assert [a.status for a in result.attempts] == [TaskStatus.FAILED, TaskStatus.FAILED, TaskStatus.SUCCEEDED]
    # backoff_seconds * backoff_multiplier ** (attempt - 1)
    assert [a.retry_countdown for a in result.attempts] == [0.05, 0.05 * 3, None]
    test = next(store.iter_test_results(manifest.run_id, info.batch_count))
    assert test.status is TestStatus.SUCCESS and test.metadata["attempt_count"] == 3


def test_a_case_that_outlives_its_timeout_ends_timeout_and_the_worker_survives(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker
) -> None:
    plan = stub_plan([{"id": "slow"}], stub={"simulated_delay": 5},
                     execution={"retry_policy": {**FAST_RETRY, "max_attempts": 2},
                                "stop_conditions": {"timeout_per_task": 0.3}})
    manifest = manifest_for(tmp_path, plan)
    info = run_manifest(app, store, manifest)
    result = results_by_case(store, manifest.run_id, info.batch_count)["slow"]
    assert result.task_status is TaskStatus.TIMEOUT
    assert result.attempt_count == 2
    assert "exceeds timeout_per_task" in (result.error_message or "")
    # The same worker goes on to run the next plan.
    after = manifest_for(tmp_path, stub_plan([{"id": "next"}]))
    assert run_manifest(app, store, after).statistics.succeeded_tasks == 1  # type: ignore[union-attr]


def test_max_failures_stops_the_run_and_the_rest_end_cancelled(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker
) -> None:
    plan = stub_plan([{"id": f"c{i:03d}"} for i in range(60)], stub={"failure_rate": 1.0},
                     execution={"concurrency": 1, "batch_size": 10, "retry_policy": {"max_attempts": 1},
                                "stop_conditions": {"max_failures": 5}})
    manifest = manifest_for(tmp_path, plan)
    info = run_manifest(app, store, manifest)
    stats = info.statistics
    assert stats is not None
    assert stats.total_tasks == 60
    assert stats.failed_tasks >= 5
    assert stats.cancelled_tasks == 60 - stats.failed_tasks
    assert stats.cancelled_tasks > 0
    assert info.stop_reason == "stopped: max_failures (5) reached"


def test_a_missing_api_key_variable_is_an_error_naming_it_and_is_not_retried(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker
) -> None:
    plan = stub_plan([{"id": "a"}], execution={"retry_policy": FAST_RETRY})
    plan["workflows"] = [{"id": "wf", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "UNSET_TEST_DIFY_KEY"}]
    manifest = manifest_for(tmp_path, plan)
    info = run_manifest(app, store, manifest)
    result = results_by_case(store, manifest.run_id, info.batch_count)["a"]
    assert result.task_status is TaskStatus.ERROR
    assert result.attempt_count == 1
    assert "UNSET_TEST_DIFY_KEY" in (result.error_message or "")


def test_cancelling_before_start_ends_every_case_cancelled(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker
) -> None:
    manifest = manifest_for(tmp_path, stub_plan([{"id": f"c{i}"} for i in range(12)]))
    store.create_run(manifest.run_id, "test", 12, manifest.batch_count, manifest.created_at)
    store.cancel(manifest.run_id, "cancelled by test")
    info = run_manifest(app, store, manifest)
    assert info.statistics is not None and info.statistics.cancelled_tasks == 12
    assert info.stop_reason == "cancelled by test"
    for result in store.iter_test_results(manifest.run_id, info.batch_count):
        assert result.status is TestStatus.ERROR
        assert result.metadata["task_status"] == "cancelled"
