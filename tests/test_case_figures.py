"""Per-case figures that say what they measure: when the final attempt started, how long the
call to the target took (nothing of the worker's own setup), and repeats that ran."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from celery import Celery
from dify_runner.config.manifest import Task
from dify_runner.config.plan import WorkflowConfig
from dify_runner.producer.embedded import InProcessWorker
from dify_runner.producer.summary import SummaryBuilder
from dify_runner.worker.dify_client import DifyClient
from dify_runner.worker.execution import run_attempt
from dify_runner.worker.messages import AttemptPolicy, CaseMessage
from dify_runner.worker.models import TaskStatus, TestResult, TestStatus
from dify_runner.worker.store import RunStore

from dify_runner.mockdify.process import MockDifyProcess

from .conftest import manifest_for, run_manifest, stub_plan


def test_timestamp_is_when_the_final_attempt_started(tmp_path: Path, app: Celery, store: RunStore,
                                                      worker: InProcessWorker) -> None:
    plan = stub_plan([{"id": "steady"}, {"id": "flaky"}], stub={"task_behaviors": {"flaky": "flaky:1"}},
                     execution={"retry_policy": {"max_attempts": 2, "backoff_seconds": 0.2}})
    manifest = manifest_for(tmp_path, plan)
    info = run_manifest(app, store, manifest)
    tasks = {t.case_id: t for t in store.iter_task_results(info.run_id, info.batch_count)}
    tests = {t.metadata["case_id"]: t for t in store.iter_test_results(info.run_id, info.batch_count)}
    for case in ("steady", "flaky"):
        assert tests[case].timestamp == tasks[case].started_at  # not the manifest's creation time
        assert tests[case].timestamp > manifest.created_at
    assert tasks["flaky"].attempt_count == 2  # the timestamp is the second attempt's start


def test_building_the_http_client_is_not_the_targets_latency(mock_dify: MockDifyProcess,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCK_DIFY_KEY", "app-mock")
    built: list[datetime] = []

    def fresh_client() -> DifyClient:  # a worker's first case: the pool does not exist yet
        client = DifyClient.create(4)
        built.append(datetime.now(timezone.utc))
        return client

    message = CaseMessage(
        run_id="r", batch=0, policy=AttemptPolicy(),
        task=Task(task_id="wf/ds/a", workflow_id="wf", dataset="ds", case_id="a", parameters={"q": "hi"}),
        workflow=WorkflowConfig(id="wf", base_url=mock_dify.base_url, api_key_env="MOCK_DIFY_KEY",
                                response_mode="blocking"),
    )
    outcome = run_attempt(message, 1, fresh_client)
    assert outcome.status is TaskStatus.SUCCEEDED, outcome.error_message
    assert len(built) == 1 and outcome.started_at >= built[0]  # the clock started after the client existed


def result(case: str, repeat: int, status: str) -> TestResult:
    test_status = {"succeeded": TestStatus.SUCCESS, "failed": TestStatus.FAILED}.get(status, TestStatus.ERROR)
    return TestResult(workflow_id="wf", execution_id=f"wf/ds/{case}#{repeat}", timestamp=datetime.now(timezone.utc),
                      status=test_status, metadata={"task_status": status}, dataset="ds")


def test_cancelled_repeats_are_not_flaky() -> None:
    builder = SummaryBuilder()
    for repeat, status in enumerate(["succeeded", "cancelled", "cancelled"]):
        builder.add(result("stopped", repeat, status))
    for repeat, status in enumerate(["succeeded", "failed", "cancelled"]):
        builder.add(result("wobbly", repeat, status))
    summary = builder.build()
    counts = {r.case: (r.passed, r.runs) for r in summary.repeats}
    assert counts == {"wf/ds/stopped": (1, 1), "wf/ds/wobbly": (1, 2)}
    assert [r.case for r in summary.flaky] == ["wf/ds/wobbly"]
