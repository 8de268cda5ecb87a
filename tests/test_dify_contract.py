"""The Dify client against the mock Dify server (a separate process), and the mock
against the shapes of ../shared/dify-api.md. Real HTTP on loopback, nothing mocked."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest
from dify_runner.config.plan import WorkflowConfig
from dify_runner.worker.deadline import Deadline
from dify_runner.worker.dify_client import DifyAPIError, DifyClient, DifyServerError, DifyStoppedError
from dify_runner.worker.exceptions import TaskTimeoutException

from dify_runner.mockdify.process import MockDifyProcess

from . import dify_shapes as shapes

KEY = "app-mock"


@pytest.fixture
def client() -> DifyClient:
    return DifyClient.create(pool_size=4)


def workflow(mock: MockDifyProcess, mode: str = "streaming", base_url: str | None = None) -> WorkflowConfig:
    return WorkflowConfig(id="wf", base_url=base_url or mock.base_url, api_key_env="K", response_mode=mode)


def run(client: DifyClient, mock: MockDifyProcess, mode: str, inputs: dict[str, Any],
        key: str = KEY, seconds: float = 10) -> dict[str, Any]:
    return client.run_workflow(workflow(mock, mode), key, inputs, Deadline(seconds))


# -- successful runs ------------------------------------------------------------------------

def test_blocking_run(client: DifyClient, mock_dify: MockDifyProcess) -> None:
    result = run(client, mock_dify, "blocking", {"query": "hi", "_mock": {"llm_nodes": 2}})
    assert result["status"] == "succeeded"
    assert result["outputs"] == {"answer": "mock answer: hi"}
    assert result["total_tokens"] == 240 and result["total_steps"] == 4
    assert result["cost"] is None  # the blocking API carries no price: unknown, not 0
    assert result["workflow_run_id"] and result["dify_task_id"]


@pytest.mark.parametrize("price_format", ["string", "number"])
def test_streaming_run_sums_cost_over_nodes(client: DifyClient, mock_dify: MockDifyProcess, price_format: str) -> None:
    behaviour = {"llm_nodes": 3, "price_per_node": "0.0003260", "price_format": price_format, "latency_ms": 200}
    result = run(client, mock_dify, "streaming", {"query": "hello world", "_mock": behaviour})
    assert result["status"] == "succeeded"
    assert Decimal(str(result["cost"])) == Decimal("0.0009780")
    assert result["currency"] == "USD"
    assert result["total_tokens"] == 360
    assert result["outputs"] == {"answer": "mock answer: hello world"}
    # time to first event comes before time to first text chunk (TTFT)
    assert 0 <= result["time_to_first_event"] <= result["ttft"]


def test_streaming_skips_ping_keepalives(client: DifyClient, mock_dify: MockDifyProcess) -> None:
    # The fixture's mock pings every 0.05 s; a 0.4 s node gets several pings in its stream.
    result = run(client, mock_dify, "streaming", {"q": "x", "_mock": {"latency_ms": 400}})
    assert result["status"] == "succeeded"


def test_a_failed_run_is_http_200_with_status_failed(client: DifyClient, mock_dify: MockDifyProcess) -> None:
    for mode in ("blocking", "streaming"):
        result = run(client, mock_dify, mode, {"q": "x", "_mock": {"status": "failed"}})
        assert result["status"] == "failed"
        assert "mock node failed" in result["error"]


# -- error classes --------------------------------------------------------------------------

def test_wrong_api_key_is_401_and_not_retryable(client: DifyClient, mock_dify: MockDifyProcess) -> None:
    with pytest.raises(DifyAPIError) as caught:
        run(client, mock_dify, "blocking", {"q": "x"}, key="app-wrong")
    assert caught.value.http_status == 401 and caught.value.code == "unauthorized"
    assert not caught.value.retryable
    assert "app-wrong" not in str(caught.value)


@pytest.mark.parametrize(
    ("code", "retryable"),
    [("invalid_param", False), ("app_unavailable", False), ("provider_not_initialize", False),
     ("provider_quota_exceeded", False), ("model_currently_not_support", False),
     ("completion_request_error", True)],
)
def test_documented_400_codes(client: DifyClient, mock_dify: MockDifyProcess, code: str, retryable: bool) -> None:
    with pytest.raises(DifyAPIError) as caught:
        run(client, mock_dify, "streaming", {"_mock": {"error": {"http_status": 400, "code": code}}})
    assert caught.value.code == code and caught.value.retryable is retryable
    assert code in str(caught.value)


@pytest.mark.parametrize("code", ["too_many_requests", "rate_limit_error"])
def test_429_is_retryable_and_honours_retry_after(client: DifyClient, mock_dify: MockDifyProcess, code: str) -> None:
    with pytest.raises(DifyAPIError) as caught:
        run(client, mock_dify, "blocking", {"_mock": {"error": {"http_status": 429, "code": code}, "retry_after": 2}})
    assert caught.value.retryable and caught.value.retry_after == 2.0
    with pytest.raises(DifyAPIError) as without:
        run(client, mock_dify, "blocking", {"_mock": {"error": {"http_status": 429, "code": code}}})
    assert without.value.retry_after is None


def test_5xx_is_a_retryable_server_error(client: DifyClient, mock_dify: MockDifyProcess) -> None:
    with pytest.raises(DifyServerError, match="HTTP 500 internal_server_error"):
        run(client, mock_dify, "blocking", {"_mock": {"error": {"http_status": 500, "code": "internal_server_error"}}})


def test_404_on_a_wrong_path(client: DifyClient, mock_dify: MockDifyProcess) -> None:
    wrong = workflow(mock_dify, "blocking", base_url=mock_dify.base_url.replace("/v1", "/v9"))
    with pytest.raises(DifyAPIError) as caught:
        client.run_workflow(wrong, KEY, {}, Deadline(5))
    assert caught.value.http_status == 404 and not caught.value.retryable


def test_connection_refused(client: DifyClient) -> None:
    from dify_runner.producer.embedded import free_port

    dead = WorkflowConfig(id="wf", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key_env="K")
    with pytest.raises(DifyServerError, match="ConnectError"):
        client.run_workflow(dead, KEY, {}, Deadline(5))


@pytest.mark.parametrize("mode", ["blocking", "streaming"])
def test_garbage_answers(client: DifyClient, mock_dify: MockDifyProcess, mode: str) -> None:
    with pytest.raises(DifyServerError, match="not JSON"):
        run(client, mock_dify, mode, {"_mock": {"garbage": True}})


def test_truncated_stream(client: DifyClient, mock_dify: MockDifyProcess) -> None:
    with pytest.raises(DifyServerError, match="stream ended before workflow_finished"):
        run(client, mock_dify, "streaming", {"_mock": {"truncate": True}})


def test_error_events_in_the_stream(client: DifyClient, mock_dify: MockDifyProcess) -> None:
    quota = {"http_status": 400, "code": "provider_quota_exceeded"}
    with pytest.raises(DifyAPIError) as caught:
        run(client, mock_dify, "streaming", {"_mock": {"stream_error": quota}})
    assert caught.value.code == "provider_quota_exceeded" and not caught.value.retryable
    internal = {"http_status": 500, "code": "internal_server_error"}
    with pytest.raises(DifyServerError, match="stream error 500"):
        run(client, mock_dify, "streaming", {"_mock": {"stream_error": internal}})


@pytest.mark.parametrize("mode", ["blocking", "streaming"])
def test_a_hung_answer_times_out(client: DifyClient, mock_dify: MockDifyProcess, mode: str) -> None:
    started = time.monotonic()
    with pytest.raises(TaskTimeoutException):
        run(client, mock_dify, mode, {"_mock": {"hang": True}}, seconds=0.5)
    assert time.monotonic() - started < 10  # the mock hangs for good: only the 0.5 s deadline ends it


def test_stop_a_streaming_run(client: DifyClient, mock_dify: MockDifyProcess) -> None:
    started = threading.Event()
    task_ids: list[str] = []

    def on_started(task_id: str) -> None:
        task_ids.append(task_id)
        started.set()

    def call() -> None:
        try:
            client.run_workflow(workflow(mock_dify), KEY, {"q": "x", "_mock": {"latency_ms": 1500}}, Deadline(10),
                                on_started)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            errors.append(exc)

    errors: list[Exception] = []
    thread = threading.Thread(target=call)
    thread.start()
    assert started.wait(5)
    client.stop(workflow(mock_dify), KEY, task_ids[0])
    thread.join(10)
    # A stop this client did not send reads as Dify's own (its time limit): TIMEOUT, not retried.
    assert len(errors) == 1 and isinstance(errors[0], DifyStoppedError) and not errors[0].retryable
    stats = mock_dify.stats()
    assert stats["stops"] == 1 and stats["stopped_runs"] == 1 and stats["running"] == 0


# -- the mock speaks Dify's shapes ----------------------------------------------------------

def _post(mock: MockDifyProcess, body: dict[str, Any], key: str = KEY) -> httpx.Response:
    return httpx.post(f"{mock.base_url}/workflows/run", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=10)


def test_mock_blocking_and_detail_shapes(mock_dify: MockDifyProcess) -> None:
    body = _post(mock_dify, {"inputs": {"query": "hi"}, "user": "u", "response_mode": "blocking"}).json()
    blocking = shapes.BlockingResponse.model_validate(body)
    detail = httpx.get(f"{mock_dify.base_url}/workflows/run/{blocking.workflow_run_id}",
                       headers={"Authorization": f"Bearer {KEY}"}).json()
    shapes.RunDetail.model_validate(detail)
    assert json.loads(detail["inputs"]) == {"query": "hi"}


def test_mock_stream_shapes(mock_dify: MockDifyProcess) -> None:
    response = _post(mock_dify, {"inputs": {"query": "hi"}, "user": "u", "response_mode": "streaming",
                                 })
    assert response.headers["content-type"].startswith("text/event-stream")
    kinds = []
    for block in response.text.split("\n\n"):
        if not block.strip() or block.startswith("event: ping"):
            continue
        assert block.startswith("data: ")
        event = json.loads(block[6:])
        envelope = shapes.StreamEvent.model_validate(event)
        shapes.EVENT_DATA[envelope.event].model_validate(envelope.data)
        kinds.append(envelope.event)
    assert kinds[0] == "workflow_started" and kinds[-1] == "workflow_finished"
    assert {"node_started", "node_finished", "text_chunk"} <= set(kinds)


def test_mock_error_shapes(mock_dify: MockDifyProcess) -> None:
    cases = [
        (_post(mock_dify, {"inputs": {}, "user": "u"}, key="bad"), 401, "unauthorized"),
        (_post(mock_dify, {"inputs": {}}), 400, "invalid_param"),
        (_post(mock_dify, {"inputs": "no", "user": "u"}), 400, "invalid_param"),
        (_post(mock_dify, {"inputs": {}, "user": "u", "response_mode": "sideways"}), 400, "invalid_param"),
        (httpx.get(f"{mock_dify.base_url}/workflows/run/nope", headers={"Authorization": f"Bearer {KEY}"}),
         404, "not_found"),
    ]
    for response, status, code in cases:
        assert response.status_code == status
        error = shapes.ErrorBody.model_validate(response.json())
        assert (error.status, error.code) == (status, code)
    stream = _post(mock_dify, {"inputs": {"_mock": {"stream_error": {"http_status": 400, "code": "invalid_param"}}},
                               "user": "u", "response_mode": "streaming"})
    last = [b for b in stream.text.split("\n\n") if b.startswith("data: ")][-1]
    shapes.StreamErrorEvent.model_validate(json.loads(last[6:]))


def test_mock_info_and_parameters_shapes(mock_dify: MockDifyProcess) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    shapes.Info.model_validate(httpx.get(f"{mock_dify.base_url}/info", headers=headers).json())
    shapes.Parameters.model_validate(httpx.get(f"{mock_dify.base_url}/parameters", headers=headers).json())
