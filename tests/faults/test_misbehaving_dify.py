"""A Dify that misbehaves: every case still ends with one clear status and error message."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery
from dify_runner.producer.embedded import InProcessWorker
from dify_runner.worker.store import RunStore

from dify_runner.mockdify.process import MockDifyProcess

from ..conftest import manifest_for, run_manifest, stub_plan

pytestmark = pytest.mark.faults

FAULTS = {
    # case id: (_mock behaviour, response mode, expected status, words in the error message)
    "garbage-json": ({"garbage": True}, "blocking", "error", "not JSON"),
    "garbage-sse": ({"garbage": True}, "streaming", "error", "not JSON"),
    "truncated-sse": ({"truncate": True}, "streaming", "error", "stream ended before workflow_finished"),
    "connection-reset": ({"reset": True}, "streaming", "error", "RemoteProtocolError"),
    "server-error-storm": ({"error": {"http_status": 500, "code": "internal_server_error"}}, "blocking", "error",
                           "HTTP 500 internal_server_error"),
    "bad-gateway-html": ({"error": {"http_status": 502, "code": "bad_gateway", "message": "<html>502</html>"}},
                         "streaming", "error", "HTTP 502"),
    "slow-loris": ({"trickle": True}, "blocking", "timeout", "timeout_per_task"),
    "hang": ({"hang": True}, "streaming", "timeout", "timeout_per_task"),
    "stream-error": ({"stream_error": {"http_status": 400, "code": "completion_request_error"}}, "streaming",
                     "failed", "completion_request_error"),
}


def test_every_fault_ends_with_a_clear_status(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker, mock_dify: MockDifyProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOCK_DIFY_KEY", "app-mock")
    plan = stub_plan([], execution={"concurrency": 8, "retry_policy": {"max_attempts": 2, "backoff_seconds": 0.05},
                                    "stop_conditions": {"timeout_per_task": 1.0}})
    plan["workflows"] = [{"id": mode, "base_url": mock_dify.base_url, "api_key_env": "MOCK_DIFY_KEY",
                          "response_mode": mode} for mode in ("blocking", "streaming")]
    plan["datasets"] = [{"name": name, "workflows": [mode], "cases": [{"id": name, "inputs": {"_mock": behaviour}}]}
                        for name, (behaviour, mode, _, _) in FAULTS.items()]
    manifest = manifest_for(tmp_path, plan)
    info = run_manifest(app, store, manifest, timeout=60)
    results = {r.case_id: r for r in store.iter_task_results(manifest.run_id, info.batch_count)}
    assert set(results) == set(FAULTS)
    for name, (_, _, status, words) in FAULTS.items():
        result = results[name]
        assert result.task_status.value == status, (name, result.error_message)
        assert words in (result.error_message or ""), (name, result.error_message)
        assert result.attempt_count == 2, name  # each of these faults may heal: retried once
