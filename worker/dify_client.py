"""An httpx client for Dify's workflow API: one ``POST /workflows/run`` per attempt.

It returns the seed's execution dict (``workflow_run_id``, ``status``, ``outputs``,
``elapsed_time``, ``total_tokens``, ``cost``, ...) and raises the exceptions that map
to task statuses (see ``exceptions.py`` and the README's error table).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from ..config.plan import WorkflowConfig
from .deadline import Deadline
from .dify_answers import PERMANENT_CODES, AnswerKind, classify
from .exceptions import DifyRunnerError, TaskCancelledException, TaskExecutionException, TaskTimeoutException
from .watcher import call_watcher

__all__ = ["PERMANENT_CODES", "AnswerKind", "ConfigurationError", "DifyAPIError", "DifyClient", "DifyServerError"]

CONNECT_TIMEOUT = 10.0
# A stop is cleanup after the attempt's deadline: it gets its own short budget.
STOP_TIMEOUT = 5.0
MAX_BODY_BYTES = 64 * 1024 * 1024


class DifyAPIError(TaskExecutionException):
    """Dify answered with an error body ``{code, message, status}``: status FAILED."""

    def __init__(self, http_status: int, code: str, message: str, *, retry_after: float | None = None) -> None:
        self.kind = classify(http_status, code, message)
        super().__init__(f"HTTP {http_status} {code}: {message}", retryable=self.kind.retryable)
        self.http_status = http_status
        self.code = code
        self.retry_after = retry_after


class DifyPausedError(TaskExecutionException):
    """The run paused at a Human Input node (``workflow_paused``; blocking: status ``paused``).

    FAILED, not retried: nobody will answer it, and each retry would leave another paused run.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class DifyStoppedError(TaskTimeoutException):
    """Dify stopped the run although dify-runner did not ask: its APP_MAX_EXECUTION_TIME limit
    publishes a user stop (``api/core/app/apps/base_app_queue_manager.py``). TIMEOUT, not retried:
    the next attempt would run as long."""

    retryable = False


class DifyServerError(DifyRunnerError):
    """A 5xx, a dropped connection or a reply that is not Dify's protocol: status ERROR, retried."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigurationError(DifyRunnerError):
    """The worker cannot run the case as configured (e.g. the API key variable is unset).

    Status ERROR, not retried: the next attempt would find the same environment. ``kind``
    REJECTED (a key missing or refused): like a rejected key, a workflow whose first attempts
    all end so stops the run.
    """

    retryable = False

    def __init__(self, message: str, *, kind: AnswerKind | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class DifyClient:
    """Runs workflows over httpx: a free list of small ``httpx.Client`` objects sharing one
    SSL context; a call takes one, and gives it back (its connection kept alive) when done.

    One client shared by every thread (the first design) scans its whole pool on each
    request and response under one lock (httpcore): at 500 threads, a thousand 5-s calls
    cost 14 ms of CPU each and came back seconds late; with a client per call in flight,
    1.6 ms and on time (issue 17). A free list rather than a client per thread, because a
    gevent worker runs each task in a new greenlet: "per thread" would be per task there.
    """

    def __init__(self, pool_size: int = 100) -> None:
        self.pool_size = pool_size  # calls in flight at once, at most: the clients kept idle
        self._ssl = httpx.create_ssl_context()  # built once: loading the CA bundle costs ms
        self._idle: list[httpx.Client] = []
        self._lock = threading.Lock()
        # Stops are sent from short-lived threads (watcher.py): one shared client for them.
        self._stops = self._new_client(max_connections=8)

    @classmethod
    def create(cls, pool_size: int = 100) -> DifyClient:
        return cls(pool_size)

    def _new_client(self, max_connections: int = 2) -> httpx.Client:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        return httpx.Client(verify=self._ssl, limits=limits, http2=False, follow_redirects=False)

    @contextmanager
    def _client(self) -> Iterator[httpx.Client]:
        with self._lock:
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = self._new_client()
        try:
            yield client
        finally:
            with self._lock:
                keep = len(self._idle) < self.pool_size
                if keep:
                    self._idle.append(client)
            if not keep:
                client.close()

    def close(self) -> None:
        with self._lock:
            clients, self._idle = self._idle, []
        for client in [*clients, self._stops]:
            client.close()

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
            if task_id and "dify_stop" not in result:  # only a started streaming run can be stopped
                result["dify_stop"] = self.stop_quietly(workflow, api_key, str(task_id))

        try:
            return self._call(workflow, body, headers, timeout, deadline, started, result, stop_in_dify,
                              on_started, should_stop)
        except BaseException as exc:
            # Abandoned after workflow_started (a timeout, a broken stream, a soft time limit):
            # Dify goes on running (and billing) the run unless it is told to stop.
            if not result.get("ended"):
                stop_in_dify()
            if "dify_stop" in result:
                exc.dify_stop = result["dify_stop"]  # type: ignore[attr-defined]
            raise

    def _call(
        self, workflow: WorkflowConfig, body: dict[str, Any], headers: dict[str, str], timeout: httpx.Timeout,
        deadline: Deadline, started: float, result: dict[str, Any], stop_in_dify: Callable[[], None],
        on_started: Callable[[str], None] | None, should_stop: Callable[[], bool] | None,
    ) -> dict[str, Any]:
        def trace(event: str, _: dict[str, Any]) -> None:  # httpcore's trace extension
            if event == "http11.send_request_headers.started":
                result["written_at"] = time.monotonic()

        try:
            with self._client() as http, http.stream(
                "POST", f"{workflow.base_url}/workflows/run", json=body, headers=headers, timeout=timeout,
                extensions={"trace": trace},
            ) as response:
                stream = response.extensions.get("network_stream")
                sock = stream.get_extra_info("socket") if stream is not None else None
                with call_watcher().watch(deadline, sock, should_stop, stop_in_dify) as watchdog:
                    try:
                        if response.status_code >= 400:
                            raise _error_from_response(response, _read_body(response, deadline))
                        if workflow.response_mode == "blocking":
                            parsed = _parse_blocking(_read_body(response, deadline))
                        else:
                            parsed = _parse_stream(response, deadline, started, on_started, result)
                        result["ended"] = True  # Dify ended the run: nothing left to stop
                        _timed(parsed, started, result.get("written_at"))
                        if watchdog.cancelled:  # Dify may answer "stopped" before the socket is shut
                            raise TaskCancelledException("run cancelled: the call to Dify was stopped")
                        _check_final_status(parsed)
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
        """Ask Dify to stop a streaming run (``POST /workflows/tasks/{task_id}/stop``, body
        ``{user}``: Dify stops only a task of that user, ``api/controllers/service_api/app/
        workflow.py``). Raises httpx.HTTPError when Dify did not answer 2xx."""
        response = self._stops.post(
            f"{workflow.base_url}/workflows/tasks/{task_id}/stop",
            json={"user": workflow.user},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=STOP_TIMEOUT,
        )
        response.raise_for_status()

    def stop_quietly(self, workflow: WorkflowConfig, api_key: str, task_id: str) -> str:
        """Stop a run; "stopped", or "stop failed: why" (the case goes on either way)."""
        try:
            self.stop(workflow, api_key, task_id)
            return "stopped"
        except httpx.HTTPStatusError as exc:
            return f"stop failed: HTTP {exc.response.status_code}"
        except httpx.HTTPError as exc:
            return f"stop failed: {type(exc).__name__}"


def _check_final_status(parsed: dict[str, Any]) -> None:
    """Statuses that end the case here, whatever the plan expects."""
    status = parsed.get("status")
    run = parsed.get("workflow_run_id") or "?"
    if status == "paused":
        raise DifyPausedError(
            f"workflow paused: it waits for human input (Dify run {run}); dify-runner cannot answer a Human "
            "Input node, so the case ends here and is not retried (a retry would leave another paused run)")
    if status == "stopped":
        raise DifyStoppedError(
            f"Dify stopped the run although dify-runner did not ask ({parsed.get('error') or 'no reason given'}): "
            "Dify reports its own time limit (APP_MAX_EXECUTION_TIME) as a user stop; not retried, the next "
            "attempt would run as long")


def _timed(parsed: dict[str, Any], started: float, written_at: float | None) -> None:
    """The target's latency, from the moment the request was written to the moment its last
    byte was read, and the time before that spent in this worker (a free connection of the
    pool, connecting): an overloaded worker shows as local_wait, never as Dify's latency."""
    written = started if written_at is None else written_at
    parsed["latency"] = round(time.monotonic() - written, 6)
    parsed["local_wait"] = round(written - started, 6)
    for key in ("time_to_first_event", "ttft"):  # measured from the call's start while streaming
        if parsed.get(key) is not None:
            parsed[key] = round(max(0.0, parsed[key] - parsed["local_wait"]), 6)


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
        elif kind == "error":  # the run ended in Dify with this error
            result["ended"] = True
            status = int(event.get("status") or 500)
            code, message = str(event.get("code", "unknown")), str(event.get("message", ""))
            if status >= 500:
                raise DifyServerError(f"stream error {status} {code}: {message}")
            raise DifyAPIError(status, code, message)
        elif kind == "workflow_paused":  # newest Dify: the stream ends here, no workflow_finished
            result.update(workflow_run_id=event.get("workflow_run_id") or result.get("workflow_run_id"),
                          status="paused", outputs=data.get("outputs") or {}, error=None,
                          total_tokens=data.get("total_tokens") or 0, total_steps=data.get("total_steps") or 0)
            result["cost"] = float(cost) if priced else 0.0
            return result
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
