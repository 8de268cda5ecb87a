"""Whole runs against the mock Dify server: statuses, tokens, cost and retries per case."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery
from dify_runner.producer.embedded import InProcessWorker
from dify_runner.worker.models import TaskStatus
from dify_runner.worker.store import RunStore

from dify_runner.mockdify.process import MockDifyProcess

from .conftest import manifest_for, run_manifest, stub_plan


def test_a_run_against_the_mock(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker, mock_dify: MockDifyProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOCK_DIFY_KEY", "app-mock")
    monkeypatch.setenv("WRONG_DIFY_KEY", "app-wrong")
    cases = [
        {"id": "ok", "inputs": {"query": "hi", "_mock": {"llm_nodes": 2, "price_format": "string"}}},
        {"id": "failed-run", "inputs": {"_mock": {"status": "failed"}}},
        {"id": "bad-param", "inputs": {"_mock": {"error": {"http_status": 400, "code": "invalid_param"}}}},
        {"id": "throttled", "inputs": {"_mock": {"error": {"http_status": 429, "code": "too_many_requests"},
                                                 "retry_after": 0.2}}},
        {"id": "server-error", "inputs": {"_mock": {"error": {"http_status": 502, "code": "bad_gateway"}}}},
    ]
    plan = stub_plan(cases, execution={"retry_policy": {"max_attempts": 2, "backoff_seconds": 0.05,
                                                        "max_throttled": 3}})
    plan["workflows"] = [
        {"id": "stream", "base_url": mock_dify.base_url, "api_key_env": "MOCK_DIFY_KEY"},
        {"id": "block", "base_url": mock_dify.base_url, "api_key_env": "MOCK_DIFY_KEY", "response_mode": "blocking"},
        {"id": "wrong", "base_url": mock_dify.base_url, "api_key_env": "WRONG_DIFY_KEY", "response_mode": "blocking"},
    ]
    plan["datasets"][0]["workflows"] = ["stream", "block"]
    plan["datasets"].append({"name": "auth", "workflows": ["wrong"], "cases": [{"id": "wrong-key"}]})
    manifest = manifest_for(tmp_path, plan)
    info = run_manifest(app, store, manifest)
    assert info.statistics is not None and info.statistics.total_tasks == 11
    results = {r.task_id: r for r in store.iter_task_results(manifest.run_id, info.batch_count)}
    tests = {t.execution_id: t for t in store.iter_test_results(manifest.run_id, info.batch_count)}

    ok = tests["stream/ds/ok"]
    assert ok.status.value == "success" and ok.tokens_used == 240 and ok.cost == pytest.approx(0.000652)
    assert ok.outputs == {"answer": "mock answer: hi"} and ok.metadata["workflow_run_id"]
    assert ok.metadata["ttft"] >= ok.metadata["time_to_first_event"] >= 0
    assert tests["block/ds/ok"].cost is None  # blocking: no price, unknown cost

    failed = results["stream/ds/failed-run"]
    assert failed.task_status is TaskStatus.FAILED and failed.attempt_count == 2
    assert "mock node failed" in (failed.error_message or "")
    bad = results["block/ds/bad-param"]
    assert bad.task_status is TaskStatus.FAILED and bad.attempt_count == 1  # permanent: not retried
    assert "invalid_param" in (bad.error_message or "")
    # A throttle is waited out (at least Retry-After) and spends no attempt; this one never
    # clears, so the case ends ERROR after max_throttled refusals, never FAILED.
    throttled = results["stream/ds/throttled"]
    assert throttled.task_status is TaskStatus.ERROR and throttled.attempt_count == 0 and throttled.throttled == 3
    assert "refused to start it 3 times" in (throttled.error_message or "")
    assert info.statistics.throttled_answers == 6  # 3 each for the streaming and the blocking case
    server_error = results["block/ds/server-error"]
    assert server_error.task_status is TaskStatus.ERROR and server_error.attempt_count == 2
    wrong = results["wrong/auth/wrong-key"]
    assert wrong.task_status is TaskStatus.FAILED and wrong.attempt_count == 1
    assert "401 unauthorized" in (wrong.error_message or "") and "app-wrong" not in (wrong.error_message or "")
    assert mock_dify.stats()["requests"] > 0


def test_cancelling_a_run_stops_its_streaming_calls_in_dify(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker, mock_dify: MockDifyProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    monkeypatch.setenv("MOCK_DIFY_KEY", "app-mock")
    plan = stub_plan([{"id": f"slow{i}", "inputs": {"_mock": {"latency_ms": 5000}}} for i in range(3)])
    plan["workflows"] = [{"id": "stream", "base_url": mock_dify.base_url, "api_key_env": "MOCK_DIFY_KEY"}]
    manifest = manifest_for(tmp_path, plan)
    timer = threading.Timer(0.7, lambda: store.cancel(manifest.run_id, "cancelled by test"))
    timer.start()
    info = run_manifest(app, store, manifest, timeout=30)
    timer.join()
    results = list(store.iter_task_results(manifest.run_id, info.batch_count))
    assert [r.task_status for r in results] == [TaskStatus.CANCELLED] * 3
    assert all(r.attempt_count == 1 and "the call to Dify was stopped" in (r.error_message or "") for r in results)
    assert all(r.execution_time < 3 for r in results)  # stopped, not run to the end
    assert mock_dify.stats()["stops"] == 3
