"""Contract tests: Dify's answers as its source gives them (langgenius/dify), met by the client,
the workers and the mock. Each test names the Dify file it follows. Real HTTP to the mock Dify
server (a separate process), real Redis, a real in-process Celery worker; nothing mocked."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from dify_runner.config.plan import WorkflowConfig
from dify_runner.producer.embedded import InProcessWorker
from dify_runner.worker.deadline import Deadline
from dify_runner.worker.dify_answers import AnswerKind
from dify_runner.worker.dify_client import DifyAPIError, DifyClient, DifyPausedError, DifyStoppedError
from dify_runner.worker.exceptions import TaskTimeoutException
from dify_runner.worker.models import TaskStatus
from dify_runner.worker.store import RunStore

from dify_runner.mockdify.process import MockDifyProcess

from .conftest import manifest_for, run_manifest, stub_plan

KEY = "app-mock"


def workflow(mock: MockDifyProcess, mode: str = "streaming") -> WorkflowConfig:
    return WorkflowConfig(id="wf", base_url=mock.base_url, api_key_env="MOCK_DIFY_KEY", response_mode=mode)


def post(mock: MockDifyProcess, inputs: dict[str, Any], mode: str = "blocking") -> httpx.Response:
    return httpx.post(f"{mock.base_url}/workflows/run", json={"inputs": inputs, "user": "u", "response_mode": mode},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=10)


def mock_plan(mock: MockDifyProcess, cases: list[dict], mode: str = "streaming", **execution: Any) -> dict:
    plan = stub_plan(cases, execution=execution)
    plan["workflows"] = [{"id": "wf", "base_url": mock.base_url, "api_key_env": "MOCK_DIFY_KEY",
                          "response_mode": mode}]
    return plan


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MOCK_DIFY_KEY", KEY)
    return KEY


def hold(mock: MockDifyProcess, n: int, latency_ms: int = 3000) -> list[threading.Thread]:
    """``n`` runs in flight on the mock (so its concurrency limit is reached), once they are."""
    threads = [threading.Thread(target=post, args=(mock, {"_mock": {"latency_ms": latency_ms}})) for _ in range(n)]
    for thread in threads:
        thread.start()
    for _ in range(1000):  # counted, not timed: the mock says when they are in flight
        if mock.stats()["in_flight"] >= n:
            return threads
    raise AssertionError(f"{n} runs never got in flight: {mock.stats()}")


# -- 1. the app's concurrency limit is a throttle --------------------------------------------

def test_concurrency_limit_answers_400_invalid_param_as_dify_1x() -> None:
    """api/core/app/features/rate_limiting/rate_limit.py raises AppInvokeQuotaExceededError, a
    ValueError (api/core/errors/error.py); api/libs/external_api.py registers the ValueError
    handler first, so Dify 1.x answers 400 invalid_param "Too many requests. ..."."""
    with MockDifyProcess("--concurrency-limit", "1", "--latency-ms", "50") as mock:
        threads = hold(mock, 1)
        refused = post(mock, {})
        for thread in threads:
            thread.join()
    body = refused.json()
    assert refused.status_code == 400 and body["code"] == "invalid_param" and body["status"] == 400
    assert body["message"].startswith("Too many requests. Please try again later. The current maximum concurrent")
    assert "retry-after" not in refused.headers  # Dify sends none
    assert DifyAPIError(400, body["code"], body["message"]).kind is AnswerKind.THROTTLE
    # A real invalid parameter stays permanent.
    assert DifyAPIError(400, "invalid_param", "query is required in input form").kind is AnswerKind.PERMANENT


def test_older_dify_answers_429_too_many_requests() -> None:
    """Before the ValueError handler shadowed it, api/libs/external_api.py's
    AppInvokeQuotaExceededError handler answered 429 too_many_requests (--limit-style 429)."""
    with MockDifyProcess("--concurrency-limit", "1", "--limit-style", "429", "--retry-after", "1") as mock:
        threads = hold(mock, 1)
        refused = post(mock, {})
        for thread in threads:
            thread.join()
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_requests"
    assert refused.headers["retry-after"] == "1"
    error = DifyAPIError(429, "too_many_requests", refused.json()["message"], retry_after=1.0)
    assert error.kind is AnswerKind.THROTTLE and error.retryable


@pytest.mark.parametrize("style", ["dify1", "429"])
def test_a_plan_above_the_apps_limit_passes_every_case(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker, key: str, style: str,
) -> None:
    """The run meets rate_limit.py's refusal over and over; every case still passes, none is
    FAILED, no attempt is spent on a refusal and max_failures never counts one."""
    with MockDifyProcess("--concurrency-limit", "2", "--limit-style", style, "--latency-ms", "80",
                         "--jitter-ms", "0") as mock:
        plan = mock_plan(mock, [{"id": f"c{i}", "inputs": {"query": f"q{i}"}} for i in range(24)],
                         concurrency=8, retry_policy={"max_attempts": 1, "backoff_seconds": 0.05},
                         stop_conditions={"max_failures": 1})
        manifest = manifest_for(tmp_path, plan)
        info = run_manifest(app, store, manifest)
        stats = mock.stats()
    results = list(store.iter_task_results(manifest.run_id, info.batch_count))
    code = "invalid_param" if style == "dify1" else "too_many_requests"
    assert stats["refused"][code] > 0, stats  # the limit was really hit
    # The run learned the limit (run_control.learn_limit): refusals come in one burst of at
    # most the cases started at once, not one or more per case.
    assert stats["refused"][code] <= 2 * 8, stats
    assert [r.task_status for r in results] == [TaskStatus.SUCCEEDED] * 24
    assert all(r.attempt_count == 1 for r in results)
    assert info.statistics is not None and info.statistics.throttled_answers == stats["refused"][code]
    assert sum(r.throttled for r in results) == stats["refused"][code]
    assert info.stop_reason is None


# -- 2. an abandoned streaming run is stopped in Dify ----------------------------------------

def test_a_timed_out_streaming_attempt_is_stopped_in_dify(mock_dify: MockDifyProcess) -> None:
    """Dify goes on running a workflow whose caller went away (Dify issues #19173, #9346);
    POST /workflows/tasks/{task_id}/stop with {user} (api/controllers/service_api/app/
    workflow.py, WorkflowTaskStopApi) ends it."""
    client = DifyClient.create(pool_size=2)
    with pytest.raises(TaskTimeoutException) as caught:
        client.run_workflow(workflow(mock_dify), KEY, {"_mock": {"latency_ms": 20000}}, Deadline(1.5))
    assert caught.value.dify_stop == "stopped"  # type: ignore[attr-defined]
    stats = mock_dify.stats()
    assert stats["stops"] == 1 and stats["stopped_runs"] == 1 and stats["running"] == 0


def test_a_broken_stream_after_start_is_stopped_in_dify(mock_dify: MockDifyProcess) -> None:
    """A connection that breaks mid-stream (a proxy, a network) leaves the run going in Dify."""
    client = DifyClient.create(pool_size=2)
    behaviour = {"reset": True, "latency_ms": 4000, "llm_nodes": 8}  # breaks after 0.5 s, would run 4 s
    with pytest.raises(Exception) as caught:
        client.run_workflow(workflow(mock_dify), KEY, {"_mock": behaviour}, Deadline(10))
    assert caught.value.dify_stop == "stopped"  # type: ignore[attr-defined]
    assert mock_dify.stats()["stopped_runs"] == 1


def test_a_blocking_call_cannot_be_stopped(mock_dify: MockDifyProcess) -> None:
    """The blocking answer carries the task_id only at its end (api/core/app/entities/
    task_entities.py, WorkflowAppBlockingResponse): a timed-out blocking run goes on in Dify.
    The README recommends streaming for this reason."""
    client = DifyClient.create(pool_size=2)
    with pytest.raises(TaskTimeoutException) as caught:
        client.run_workflow(workflow(mock_dify, "blocking"), KEY, {"_mock": {"latency_ms": 10000}}, Deadline(0.3))
    assert getattr(caught.value, "dify_stop", None) is None
    stats = mock_dify.stats()
    assert stats["stops"] == 0 and stats["running"] == 1  # still going on in "Dify"


def test_timed_out_cases_leave_no_run_going_in_dify(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker, mock_dify: MockDifyProcess, key: str,
) -> None:
    plan = mock_plan(mock_dify, [{"id": f"slow{i}", "inputs": {"_mock": {"latency_ms": 20000}}} for i in range(3)],
                     retry_policy={"max_attempts": 2, "backoff_seconds": 0.05},
                     stop_conditions={"timeout_per_task": 1.5})
    manifest = manifest_for(tmp_path, plan)
    info = run_manifest(app, store, manifest)
    results = list(store.iter_task_results(manifest.run_id, info.batch_count))
    assert [r.task_status for r in results] == [TaskStatus.TIMEOUT] * 3
    assert all([a.dify_stop for a in r.attempts] == ["stopped", "stopped"] for r in results)
    assert info.statistics is not None and info.statistics.dify_stops == 6
    assert info.statistics.dify_stop_failures == 0
    stats = mock_dify.stats()
    assert stats["runs"] == 6 and stats["stopped_runs"] == 6 and stats["running"] == 0


# -- 3. paused: a final outcome --------------------------------------------------------------

@pytest.mark.parametrize("mode", ["streaming", "blocking"])
def test_a_paused_run_is_final(mock_dify: MockDifyProcess, mode: str) -> None:
    """A Human Input node pauses the run: the stream ends with workflow_paused and no
    workflow_finished (api/core/app/apps/streaming_utils.py ends on WORKFLOW_FINISHED or
    WORKFLOW_PAUSED); the blocking answer's data.status is "paused" (api/core/workflow/enums.py,
    WorkflowExecutionStatus.PAUSED)."""
    raw = post(mock_dify, {"_mock": {"status": "paused"}}, mode)
    if mode == "blocking":
        assert raw.json()["data"]["status"] == "paused"
    else:
        events = [json.loads(b[6:]) for b in raw.text.split("\n\n") if b.startswith("data: ")]
        assert events[-1]["event"] == "workflow_paused"
        assert "workflow_finished" not in [e["event"] for e in events]
    client = DifyClient.create(pool_size=2)
    with pytest.raises(DifyPausedError, match="waits for human input") as caught:
        client.run_workflow(workflow(mock_dify, mode), KEY, {"_mock": {"status": "paused"}}, Deadline(10))
    assert not caught.value.retryable
    assert mock_dify.stats()["stops"] == 0  # a paused run is left for a person, not stopped


def test_a_paused_case_is_not_retried(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker, mock_dify: MockDifyProcess, key: str,
) -> None:
    plan = mock_plan(mock_dify, [{"id": "hitl", "inputs": {"_mock": {"status": "paused"}}}],
                     retry_policy={"max_attempts": 3, "backoff_seconds": 0.05})
    manifest = manifest_for(tmp_path, plan)
    info = run_manifest(app, store, manifest)
    [result] = store.iter_task_results(manifest.run_id, info.batch_count)
    assert result.task_status is TaskStatus.FAILED and result.attempt_count == 1
    assert "waits for human input" in (result.error_message or "")
    assert mock_dify.stats()["runs"] == 1  # one paused run in Dify, not three


# -- 4. Dify's own time limit is a TIMEOUT ---------------------------------------------------

def test_difys_own_time_limit_is_a_timeout(tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker,
                                           key: str) -> None:
    """AppQueueManager.listen (api/core/app/apps/base_app_queue_manager.py) publishes
    QueueStopEvent(USER_MANUAL) once APP_MAX_EXECUTION_TIME has passed; its reason is
    "Stopped by user." (api/core/app/entities/queue_entities.py) and the run ends "stopped"."""
    with MockDifyProcess("--max-execution-time", "0.3", "--latency-ms", "30") as mock:
        for mode in ("streaming", "blocking"):
            with pytest.raises(DifyStoppedError, match="Stopped by user") as caught:
                DifyClient.create(2).run_workflow(workflow(mock, mode), KEY, {"_mock": {"latency_ms": 5000}},
                                                  Deadline(10))
            assert not caught.value.retryable
        plan = mock_plan(mock, [{"id": "long", "inputs": {"_mock": {"latency_ms": 5000}}}, {"id": "short"}],
                         retry_policy={"max_attempts": 3, "backoff_seconds": 0.05})
        manifest = manifest_for(tmp_path, plan)
        info = run_manifest(app, store, manifest)
    results = {r.case_id: r for r in store.iter_task_results(manifest.run_id, info.batch_count)}
    assert results["long"].task_status is TaskStatus.TIMEOUT and results["long"].attempt_count == 1
    assert "APP_MAX_EXECUTION_TIME" in (results["long"].error_message or "")
    assert results["short"].task_status is TaskStatus.SUCCEEDED


# -- 5. a spent quota stops the run ----------------------------------------------------------

def test_an_exhausted_quota_stops_the_run(tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker,
                                          key: str) -> None:
    """api/services/app_generate_service.py raises InvokeRateLimitError("Workflow execution
    quota limit reached for tenant ...") once the tenant's quota is spent: 429 rate_limit_error.
    It does not heal in seconds: a few in a row stop the run, the rest are CANCELLED."""
    with MockDifyProcess("--quota", "4", "--latency-ms", "20") as mock:
        plan = mock_plan(mock, [{"id": f"c{i:02}"} for i in range(40)], concurrency=2,
                         retry_policy={"max_attempts": 3, "backoff_seconds": 0.05})
        manifest = manifest_for(tmp_path, plan)
        info = run_manifest(app, store, manifest)
        stats = mock.stats()
    results = list(store.iter_task_results(manifest.run_id, info.batch_count))
    by_status = {s: sum(r.task_status is s for r in results) for s in TaskStatus}
    assert by_status[TaskStatus.SUCCEEDED] == 4 and by_status[TaskStatus.CANCELLED] == 36
    assert by_status[TaskStatus.FAILED] == 0 and by_status[TaskStatus.ERROR] == 0
    assert "Dify quota is exhausted" in (info.stop_reason or "")
    assert "quota limit reached for tenant" in (info.stop_reason or "")
    # Three in a row stop it; the few already in flight may add one each, not 36 x 3 retries.
    assert 3 <= stats["refused"]["rate_limit_error"] <= 3 + 2, stats


# -- 6. a wrong key or URL fails fast --------------------------------------------------------

@pytest.mark.parametrize("what", ["wrong key", "wrong path", "key not set"])
def test_a_workflow_refused_from_its_first_attempts_stops_the_run(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker, mock_dify: MockDifyProcess,
    monkeypatch: pytest.MonkeyPatch, what: str,
) -> None:
    """validate_app_token (api/controllers/service_api/wraps.py) answers 401 to a wrong key;
    a wrong path is a 404. Either would be the answer to every case."""
    plan = mock_plan(mock_dify, [{"id": f"c{i:02}"} for i in range(30)], concurrency=1,
                     retry_policy={"max_attempts": 2, "backoff_seconds": 0.05})
    monkeypatch.setenv("MOCK_DIFY_KEY", "app-wrong" if what == "wrong key" else KEY)
    if what == "wrong path":
        plan["workflows"][0]["base_url"] = mock_dify.base_url.replace("/v1", "/v9")
    if what == "key not set":
        monkeypatch.delenv("MOCK_DIFY_KEY")
    manifest = manifest_for(tmp_path, plan)
    info = run_manifest(app, store, manifest)
    results = list(store.iter_task_results(manifest.run_id, info.batch_count))
    tried = [r for r in results if r.attempt_count]
    assert len(tried) == 3 and all(r.attempt_count == 1 for r in tried)  # permanent: not retried
    assert sum(r.task_status is TaskStatus.CANCELLED for r in results) == 27
    assert "stopped: workflow 'wf' was refused on its first 3 attempts" in (info.stop_reason or "")
    assert "MOCK_DIFY_KEY" in (info.stop_reason or "") and "app-wrong" not in (info.stop_reason or "")
    assert mock_dify.stats()["runs"] == 0


# -- 7. keys a plan cannot redirect ----------------------------------------------------------

def test_the_worker_sends_only_key_variables(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker, mock_dify: MockDifyProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plan naming a worker secret (here the broker URL) gets nothing sent: the worker
    refuses it even when the plan skipped validate (it may come from anyone who reaches Redis)."""
    monkeypatch.setenv("DIFY_RUNNER_BROKER_URL", "redis://:hunter2@10.0.0.1:6379/0")
    plan = mock_plan(mock_dify, [{"id": "c1"}, {"id": "c2"}])
    manifest = manifest_for(tmp_path, plan)
    stolen = manifest.workflows[0].model_copy(update={"api_key_env": "DIFY_RUNNER_BROKER_URL"})
    manifest = manifest.model_copy(update={"workflows": [stolen]})
    info = run_manifest(app, store, manifest)
    results = list(store.iter_task_results(manifest.run_id, info.batch_count))
    assert [r.task_status for r in results] == [TaskStatus.ERROR] * 2
    assert all("one of dify-runner's own settings, not an API key" in (r.error_message or "") for r in results)
    stats = mock_dify.stats()
    assert stats["requests"] == 0 and "hunter2" not in json.dumps(stats)


def test_a_fleet_above_the_apps_limit_passes_every_case(tmp_path: Path, fleet: Any, redis_url: str) -> None:
    """The same, through the CLI on two separate `celery worker` processes: the learned cap
    and the waits are shared in Redis, not per process."""
    from .conftest import cli, write_plan

    with MockDifyProcess("--concurrency-limit", "3", "--latency-ms", "50", "--api-key", KEY) as mock:
        fleet.start(2, concurrency=6, env={"MOCK_DIFY_KEY": KEY})
        plan = mock_plan(mock, [{"id": f"c{i:02}", "inputs": {"query": "x"}} for i in range(60)], concurrency=12,
                         retry_policy={"max_attempts": 1, "backoff_seconds": 0.05})
        done = cli("run", str(write_plan(tmp_path, plan)), "--broker", redis_url, "--out", str(tmp_path / "runs"),
                   "--no-progress", env={"MOCK_DIFY_KEY": KEY}, cwd=tmp_path)
        stats = mock.stats()
    assert done.returncode == 0, done.stdout + done.stderr
    [run_dir] = list((tmp_path / "runs").iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    statistics = report["run"]["statistics"]
    assert statistics["succeeded_tasks"] == 60
    assert 0 < statistics["throttled_answers"] == stats["refused"]["invalid_param"] <= 2 * 12
    assert f"Dify: {statistics['throttled_answers']} throttled answers waited out" in done.stdout
