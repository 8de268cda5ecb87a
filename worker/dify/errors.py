"""The exceptions a call to Dify ends with, and reading Dify's error answers.

    DifyAPIError        Dify answered ``{code, message, status}`` (4xx)   FAILED (dify_answers.py
                                                                      says whether retried)
    DifyPausedError     a workflow paused at a Human Input node          FAILED, not retried
    DifyStoppedError    Dify stopped the run itself (its time limit)     TIMEOUT, not retried
    DifyServerError     5xx, a dropped connection, not Dify's protocol   ERROR, retried
    ConfigurationError  the worker cannot run the case (no key, ...)     ERROR, not retried
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from ..deadline import Deadline
from ..dify_answers import AnswerKind, classify
from ..exceptions import DifyRunnerError, TaskExecutionException, TaskTimeoutException


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


def retry_after_of(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the policy's backoff


def error_from_response(response: httpx.Response, raw: bytes) -> Exception:
    retry_after = retry_after_of(response)
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


def json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        raise DifyServerError(f"{what} is not JSON: {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise DifyServerError(f"{what} is not a JSON object: {str(value)[:200]!r}")
    return value


def timeout_error(deadline: Deadline) -> TaskTimeoutException:
    return TaskTimeoutException(f"no complete answer within timeout_per_task ({deadline.seconds:g} s)")


def stream_error(event: dict[str, Any]) -> Exception:
    """An ``error`` event (``ErrorStreamResponse``): the run ended in Dify with this error."""
    status = int(event.get("status") or 500) if str(event.get("status") or "").isdigit() else 500
    code, message = str(event.get("code", "unknown")), str(event.get("message", ""))
    if status >= 500:
        return DifyServerError(f"stream error {status} {code}: {message}")
    return DifyAPIError(status, code, message)
