"""An httpx client for Dify's workflow API: one ``POST /workflows/run`` per attempt.

It returns the seed's execution dict (``workflow_run_id``, ``status``, ``outputs``,
``elapsed_time``, ``total_tokens``, ``cost``, ...) and raises the exceptions that map
to task statuses (see ``exceptions.py`` and the README's error table).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from ..config.plan import WorkflowConfig
from .deadline import Deadline, SocketWatchdog
from .exceptions import DifyRunnerError, TaskCancelledException, TaskExecutionException, TaskTimeoutException

# 4xx codes that will not heal on retry: the plan or the app needs fixing.
PERMANENT_CODES = frozenset(
    {
        "invalid_param",
        "not_workflow_app",
        "app_unavailable",
        "provider_not_initialize",
        "provider_quota_exceeded",
        "model_currently_not_support",
        "unauthorized",
        "forbidden",
        "not_found",
        "bad_request",
    }
)
CONNECT_TIMEOUT = 10.0
# How often an attempt in flight asks whether its run was cancelled.
STOP_CHECK_INTERVAL = 0.5
MAX_BODY_BYTES = 64 * 1024 * 1024


class DifyAPIError(TaskExecutionException):
    """Dify answered with an error body ``{code, message, status}``: status FAILED."""

    def __init__(self, http_status: int, code: str, message: str, *, retry_after: float | None = None) -> None:
        retryable = http_status == 429 or (code not in PERMANENT_CODES and http_status not in (401, 403, 404))
        super().__init__(f"HTTP {http_status} {code}: {message}", retryable=retryable)
        self.http_status = http_status
        self.code = code
        self.retry_after = retry_after


class DifyServerError(DifyRunnerError):
    """A 5xx, a dropped connection or a reply that is not Dify's protocol: status ERROR, retried."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigurationError(DifyRunnerError):
    """The worker cannot run the case as configured (e.g. the API key variable is unset).

    Status ERROR, not retried: the next attempt would find the same environment.
    """

    retryable = False


class DifyClient:
    """Runs workflows over one shared ``httpx.Client`` (connection pool per process)."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    @classmethod
    def create(cls, pool_size: int = 100) -> DifyClient:
        limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)
        return cls(httpx.Client(limits=limits, http2=False, follow_redirects=False))

    def run_workflow(
        self,
        workflow: WorkflowConfig,
        api_key: str,
        inputs: dict[str, Any],
        deadline: Deadline,
        on_started: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """One run. ``on_started(task_id)`` is called when a streaming run has started
        (the id that ``stop`` needs). While the call is in flight ``should_stop()`` is asked
        every STOP_CHECK_INTERVAL; once it says yes, a streaming run is stopped in Dify, the
        call is abandoned and TaskCancelledException is raised."""
        body = {"inputs": inputs, "response_mode": workflow.response_mode, "user": workflow.user}
        remaining = deadline.remaining()
        timeout = httpx.Timeout(min(CONNECT_TIMEOUT, remaining), read=remaining, write=remaining, pool=remaining)
        headers = {"Authorization": f"Bearer {api_key}"}
        started = time.monotonic()
        # Filled in while the stream is read; the watchdog needs Dify's task id to stop the run.
        result: dict[str, Any] = {"cost": None, "currency": None, "time_to_first_event": None, "ttft": None}

        def stop_in_dify() -> None:
            task_id = result.get("dify_task_id")
            if task_id:  # only a streaming run can be stopped (and only once it started)
                try:
                    self.stop(workflow, api_key, str(task_id))
                except httpx.HTTPError:
                    pass  # cancelled on our side either way; Dify may finish the run

        try:
            with self.http.stream(
                "POST", f"{workflow.base_url}/workflows/run", json=body, headers=headers, timeout=timeout
            ) as response:
                stream = response.extensions.get("network_stream")
                sock = stream.get_extra_info("socket") if stream is not None else None
                with SocketWatchdog(deadline, sock, should_stop, stop_in_dify, STOP_CHECK_INTERVAL) as watchdog:
                    try:
                        if response.status_code >= 400:
                            raise _error_from_response(response, _read_body(response, deadline))
                        if workflow.response_mode == "blocking":
                            parsed = _parse_blocking(_read_body(response, deadline))
                        else:
                            parsed = _parse_stream(response, deadline, started, on_started, result)
                        if watchdog.cancelled:  # Dify may answer "stopped" before the socket is shut
                            raise TaskCancelledException("run cancelled: the call to Dify was stopped")
                        return parsed
                    except (httpx.TransportError, DifyServerError):
                        if watchdog.cancelled:
                            raise TaskCancelledException("run cancelled: the call to Dify was stopped") from None
                        if watchdog.fired or deadline.expired():
                            raise _timeout(deadline) from None
                        raise
        except httpx.TimeoutException:
            raise _timeout(deadline) from None
        except httpx.TransportError as exc:
            raise DifyServerError(f"{type(exc).__name__}: {exc or 'connection failed'}") from None

    def stop(self, workflow: WorkflowConfig, api_key: str, task_id: str) -> None:
        """Ask Dify to stop a streaming run (``POST /workflows/tasks/{task_id}/stop``)."""
        self.http.post(
            f"{workflow.base_url}/workflows/tasks/{task_id}/stop",
            json={"user": workflow.user},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=CONNECT_TIMEOUT,
        )


def _timeout(deadline: Deadline) -> TaskTimeoutException:
    return TaskTimeoutException(f"no complete answer within timeout_per_task ({deadline.seconds:g} s)")


def _read_body(response: httpx.Response, deadline: Deadline) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise DifyServerError(f"response body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if deadline.expired():
            raise _timeout(deadline)
    return b"".join(chunks)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the policy's backoff


def _error_from_response(response: httpx.Response, raw: bytes) -> Exception:
    retry_after = _retry_after(response)
    try:
        body = json.loads(raw)
        code, message = str(body["code"]), str(body.get("message", ""))
    except (ValueError, KeyError, TypeError):
        snippet = raw[:200].decode("utf-8", "replace").strip() or "(empty body)"
        if response.status_code >= 500:
            return DifyServerError(f"HTTP {response.status_code}: {snippet}", retry_after=retry_after)
        code, message = f"http_{response.status_code}", snippet
    if response.status_code >= 500:
        return DifyServerError(f"HTTP {response.status_code} {code}: {message}", retry_after=retry_after)
    return DifyAPIError(response.status_code, code, message, retry_after=retry_after)


def _json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        raise DifyServerError(f"{what} is not JSON: {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise DifyServerError(f"{what} is not a JSON object: {str(value)[:200]!r}")
    return value


def _parse_blocking(raw: bytes) -> dict[str, Any]:
    body = _json_object(raw, "blocking response")
    data = body.get("data")
    if not isinstance(data, dict) or "status" not in data:
        raise DifyServerError(f"blocking response has no data.status: {raw[:200]!r}")
    return {
        "workflow_run_id": body.get("workflow_run_id"),
        "dify_task_id": body.get("task_id"),
        "status": data.get("status"),
        "outputs": data.get("outputs") or {},
        "error": data.get("error"),
        "elapsed_time": data.get("elapsed_time"),
        "total_tokens": data.get("total_tokens") or 0,
        "total_steps": data.get("total_steps") or 0,
        # The blocking API carries no price: the cost is unknown, not zero.
        "cost": None,
        "currency": None,
    }


def _parse_stream(
    response: httpx.Response, deadline: Deadline, started: float, on_started: Callable[[str], None] | None,
    result: dict[str, Any],
) -> dict[str, Any]:
    cost = Decimal(0)
    priced = False
    for line in response.iter_lines():
        if deadline.expired():
            raise _timeout(deadline)
        if not line.startswith("data:"):
            continue  # blank separators, `event: ping` keep-alives
        event = _json_object(line[5:].strip(), "stream event")
        if result["time_to_first_event"] is None:
            result["time_to_first_event"] = round(time.monotonic() - started, 6)
        kind = event.get("event")
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        if kind == "workflow_started":
            result["workflow_run_id"] = event.get("workflow_run_id")
            result["dify_task_id"] = event.get("task_id")
            if on_started is not None and result["dify_task_id"]:
                on_started(str(result["dify_task_id"]))
        elif kind == "text_chunk" and result["ttft"] is None:
            result["ttft"] = round(time.monotonic() - started, 6)
        elif kind == "node_finished":
            metadata = data.get("execution_metadata") or {}
            price = metadata.get("total_price")
            if price is not None:
                try:
                    cost += Decimal(str(price))
                except InvalidOperation:
                    raise DifyServerError(f"node_finished has a price that is not a number: {price!r}") from None
                priced = True
                result["currency"] = metadata.get("currency") or result["currency"]
        elif kind == "error":
            status = int(event.get("status") or 500)
            code, message = str(event.get("code", "unknown")), str(event.get("message", ""))
            if status >= 500:
                raise DifyServerError(f"stream error {status} {code}: {message}")
            raise DifyAPIError(status, code, message)
        elif kind == "workflow_finished":
            result.update(
                workflow_run_id=event.get("workflow_run_id") or result.get("workflow_run_id"),
                status=data.get("status"),
                outputs=data.get("outputs") or {},
                error=data.get("error"),
                elapsed_time=data.get("elapsed_time"),
                total_tokens=data.get("total_tokens") or 0,
                total_steps=data.get("total_steps") or 0,
            )
            result["cost"] = float(cost) if priced else 0.0
            return result
    raise DifyServerError("stream ended before workflow_finished")
