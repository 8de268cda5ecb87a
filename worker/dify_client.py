"""An httpx client for Dify's app APIs: one call per attempt (or per turn of a conversation).

``run_workflow`` (``POST /workflows/run``) and ``send_message`` (``POST /chat-messages``,
``/completion-messages``) return the seed's execution dict (``status``, ``outputs``,
``elapsed_time``, ``total_tokens``, ``cost``, ...) and raise the exceptions that map to task
statuses (``dify/errors.py`` and the README's error table). What each API sends and answers
lives in ``dify/workflow.py`` and ``dify/messages.py``; this module owns the connections, the
clock, the deadline and stopping an abandoned run.
"""

from __future__ import annotations

import mimetypes
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import httpx

from ..config.plan import WorkflowConfig
from .deadline import Deadline
from .dify import files, messages
from .dify import workflow as workflow_api
from .dify.errors import (
    ConfigurationError,
    DifyAPIError,
    DifyPausedError,
    DifyServerError,
    DifyStoppedError,
    error_from_response,
    json_object,
    timeout_error,
)
from .dify.sse import events
from .dify_answers import PERMANENT_CODES, AnswerKind
from .exceptions import TaskCancelledException
from .watcher import call_watcher

__all__ = ["PERMANENT_CODES", "AnswerKind", "ConfigurationError", "DifyAPIError", "DifyClient", "DifyPausedError",
           "DifyServerError", "DifyStoppedError"]

CONNECT_TIMEOUT = 10.0
# A stop is cleanup after the attempt's deadline: it gets its own short budget.
STOP_TIMEOUT = 5.0
MAX_BODY_BYTES = 64 * 1024 * 1024


class AnswerReader(Protocol):
    """How one API's answer is read: ``dify/workflow.py`` and ``dify/messages.py`` provide one."""

    def parse_blocking(self, raw: bytes) -> dict[str, Any]: ...

    def parse_stream(self, stream: Iterator[dict[str, Any]], started: float,
                     on_started: Callable[[str], None] | None, result: dict[str, Any]) -> dict[str, Any]: ...


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
        self._modes: dict[tuple[str, str], str | None] = {}  # app_mode() answers

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
        files: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """One workflow run. ``on_started(task_id)`` is called when a streaming run has started
        (the id that ``stop`` needs). While the call is in flight ``should_stop()`` is asked
        every STOP_CHECK_INTERVAL; once it says yes, a streaming run is stopped in Dify, the
        call is abandoned and TaskCancelledException is raised."""
        body: dict[str, Any] = {"inputs": inputs, "response_mode": workflow.response_mode, "user": workflow.user}
        if files:
            body["files"] = files  # WorkflowRunPayload.files: the run's sys.files
        parsed = self._invoke(workflow, api_key, workflow_api.PATH, body, workflow_api, deadline, on_started,
                              should_stop)
        workflow_api.check_final_status(parsed)
        return parsed

    def send_message(
        self,
        workflow: WorkflowConfig,
        api_key: str,
        query: str | None,
        inputs: dict[str, Any],
        deadline: Deadline,
        files: list[dict[str, Any]] | None = None,
        conversation_id: str | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """One message to a chat app (in ``conversation_id``, or a new conversation) or a
        completion app; the answer is ``outputs["answer"]``."""
        api = workflow.api
        body = messages.request_body(api, query, inputs, files or [], conversation_id, workflow.response_mode,
                                     workflow.user)
        return self._invoke(workflow, api_key, messages.PATHS[api], body, messages, deadline, None, should_stop)

    def upload_file(self, workflow: WorkflowConfig, api_key: str, name: str, data: bytes, deadline: Deadline) -> str:
        """``POST /files/upload`` (multipart ``file`` and ``user``); the UploadFile's id."""
        remaining = deadline.remaining()
        timeout = httpx.Timeout(min(CONNECT_TIMEOUT, remaining), read=remaining, write=remaining, pool=remaining)
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        try:
            with self._client() as http:
                response = http.post(f"{workflow.base_url}{files.UPLOAD_PATH}", files={"file": (name, data, mime)},
                                     data={"user": workflow.user}, headers={"Authorization": f"Bearer {api_key}"},
                                     timeout=timeout)
        except httpx.TimeoutException:
            raise timeout_error(deadline) from None
        except httpx.TransportError as exc:
            raise DifyServerError(f"uploading {name!r}: {type(exc).__name__}: {exc or 'connection failed'}") from None
        if response.status_code >= 400:
            raise error_from_response(response, response.content)
        upload_id = json_object(response.content, "upload answer").get("id")
        if not isinstance(upload_id, str) or not upload_id:
            raise DifyServerError(f"upload answer has no id: {response.content[:200]!r}")
        return upload_id

    def app_mode(self, workflow: WorkflowConfig, api_key: str) -> str | None:
        """The app's mode from ``GET /info`` (``api/controllers/service_api/app/app.py``), kept per
        base URL and key for the process; None when Dify does not say."""
        cache_key = (workflow.base_url, api_key)
        if cache_key not in self._modes:
            try:
                response = self._stops.get(f"{workflow.base_url}/info", headers={"Authorization": f"Bearer {api_key}"},
                                           timeout=STOP_TIMEOUT)
                mode = response.json().get("mode") if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                return None
            self._modes[cache_key] = mode if isinstance(mode, str) else None
        return self._modes[cache_key]

    def _invoke(
        self, workflow: WorkflowConfig, api_key: str, path: str, body: dict[str, Any], reader: AnswerReader,
        deadline: Deadline, on_started: Callable[[str], None] | None, should_stop: Callable[[], bool] | None,
    ) -> dict[str, Any]:
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
            return self._call(workflow, path, body, headers, timeout, deadline, started, result, stop_in_dify,
                              reader, on_started, should_stop)
        except BaseException as exc:
            # Abandoned after the run started (a timeout, a broken stream, a soft time limit):
            # Dify goes on running (and billing) the run unless it is told to stop.
            if not result.get("ended"):
                stop_in_dify()
            if "dify_stop" in result:
                exc.dify_stop = result["dify_stop"]  # type: ignore[attr-defined]
            raise

    def _call(
        self, workflow: WorkflowConfig, path: str, body: dict[str, Any], headers: dict[str, str],
        timeout: httpx.Timeout, deadline: Deadline, started: float, result: dict[str, Any],
        stop_in_dify: Callable[[], None], reader: AnswerReader, on_started: Callable[[str], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> dict[str, Any]:
        def trace(event: str, _: dict[str, Any]) -> None:  # httpcore's trace extension
            if event == "http11.send_request_headers.started":
                result["written_at"] = time.monotonic()

        try:
            with self._client() as http, http.stream(
                "POST", f"{workflow.base_url}{path}", json=body, headers=headers, timeout=timeout,
                extensions={"trace": trace},
            ) as response:
                stream = response.extensions.get("network_stream")
                sock = stream.get_extra_info("socket") if stream is not None else None
                with call_watcher().watch(deadline, sock, should_stop, stop_in_dify) as watchdog:
                    try:
                        if response.status_code >= 400:
                            raise error_from_response(response, _read_body(response, deadline))
                        if workflow.response_mode == "blocking":
                            parsed = reader.parse_blocking(_read_body(response, deadline))
                        else:
                            parsed = reader.parse_stream(events(response, deadline), started, on_started, result)
                        result["ended"] = True  # Dify ended the run: nothing left to stop
                        _timed(parsed, started, result.get("written_at"))
                        if watchdog.cancelled:  # Dify may answer "stopped" before the socket is shut
                            raise TaskCancelledException("run cancelled: the call to Dify was stopped")
                        return parsed
                    except (httpx.TransportError, DifyServerError):
                        if watchdog.cancelled:
                            raise TaskCancelledException("run cancelled: the call to Dify was stopped") from None
                        if watchdog.fired or deadline.expired():
                            raise timeout_error(deadline) from None
                        raise
        except httpx.TimeoutException:
            raise timeout_error(deadline) from None
        except httpx.TransportError as exc:
            raise DifyServerError(f"{type(exc).__name__}: {exc or 'connection failed'}") from None

    def stop(self, workflow: WorkflowConfig, api_key: str, task_id: str) -> None:
        """Ask Dify to stop a streaming run (``POST /workflows/tasks/{task_id}/stop``, or
        ``/chat-messages/{task_id}/stop``, ``/completion-messages/{task_id}/stop``; body ``{user}``:
        Dify stops only a task of that user, ``api/controllers/service_api/app/workflow.py``,
        ``completion.py``). Raises httpx.HTTPError when Dify did not answer 2xx."""
        path = workflow_api.STOP_PATH if workflow.api == "workflow" else messages.STOP_PATHS[workflow.api]
        response = self._stops.post(
            f"{workflow.base_url}{path.format(task_id=task_id)}",
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


def _read_body(response: httpx.Response, deadline: Deadline) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise DifyServerError(f"response body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if deadline.expired():
            raise timeout_error(deadline)
    return b"".join(chunks)


