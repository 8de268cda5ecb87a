"""One attempt of one case: call the target, and map what happened to a TaskStatus.

Exception to status (the seeds' table, extended for the Dify client):

    TaskExecutionException (incl. DifyAPIError)   FAILED    retried unless .retryable is False
                                                            (a throttle or quota answer waits
                                                            instead: see dify_answers.py)
    TaskTimeoutException, SoftTimeLimitExceeded   TIMEOUT   retried unless .retryable is False
    TaskCancelledException                        CANCELLED not retried
    ConfigurationError                            ERROR     not retried
    any other exception (incl. DifyServerError)   ERROR     retried
    (none)                                        SUCCEEDED not retried
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from ..config.expectations import Expectations
from ..config.manifest import Task
from ..config.plan import StubConfig
from ..config.settings import key_variable_refusal
from .checks import Judge, evaluate, failure_message
from .checks.judge import judge_check
from .conversation import Grade
from .deadline import Deadline
from .dify_answers import AnswerKind
from .dify_apps import SharedState, call_app
from .dify_client import ConfigurationError, DifyClient
from .exceptions import TaskCancelledException, TaskExecutionException, TaskTimeoutException
from .messages import CaseMessage
from .models import CheckResult, TaskStatus, TestResult, TestStatus, TurnResult
from .stub import run_stub

ExecutionFunc = Callable[..., Any]


@dataclass
class RunHooks:
    """In-process hooks of the Python API (ExecutorService, ConcurrentExecutor).

    They cannot travel in a JSON message, so they are registered by run id in the
    process that also runs the in-process worker; a fleet worker never sees them.
    """

    execution_func: ExecutionFunc | None = None
    now_fn: Callable[[], datetime] | None = None
    sleep_fn: Callable[[float], None] | None = None
    token: Any = None


_hooks: dict[str, RunHooks] = {}
_hooks_lock = threading.Lock()


def register_hooks(run_id: str, hooks: RunHooks) -> None:
    with _hooks_lock:
        _hooks[run_id] = hooks


def unregister_hooks(run_id: str) -> None:
    with _hooks_lock:
        _hooks.pop(run_id, None)


def hooks_for(run_id: str) -> RunHooks | None:
    return _hooks.get(run_id)


@dataclass
class AttemptOutcome:
    status: TaskStatus
    started_at: datetime
    execution_time: float
    error_message: str | None = None
    retryable: bool = True
    retry_after: float | None = None
    kind: AnswerKind | None = None  # what a Dify error answer means (dify_answers.py)
    dify_stop: str | None = None  # "stopped" / "stop failed: ..." when the run was stopped in Dify
    test_result: TestResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # A conversation that failed part way: the turns Dify answered before it did.
    turns: list[TurnResult] = field(default_factory=list)


def run_attempt(
    message: CaseMessage,
    attempt: int,
    dify: Callable[[], DifyClient],
    hooks: RunHooks | None = None,
    cancelled: Callable[[], bool] | None = None,
    shared: SharedState | None = None,
) -> AttemptOutcome:
    """Run attempt number ``attempt`` (1-based) of the case in ``message``.

    ``cancelled()`` tells whether the run has been cancelled meanwhile; a streaming
    Dify run asks it now and then and stops itself (and Dify's run) when it says yes.
    """
    task = message.task.model_copy(update={"attempt_count": attempt})
    now_fn = (hooks.now_fn if hooks and hooks.now_fn else None) or (lambda: datetime.now(timezone.utc))
    workflow = message.workflow
    if message.executor != "hook" and not workflow.is_stub and not workflow.is_mock:
        # The process's HTTP client (and its pool) is built before the clock starts: building
        # it is this worker's cost, never the target's latency.
        client = dify()
        dify = lambda: client  # noqa: E731
    deadline = Deadline(message.policy.timeout_per_task)

    def grade(expect: Expectations, result: TestResult, latency: float) -> list[CheckResult]:
        """Every check of ``expect``, with the case's judge sharing the attempt's deadline."""
        return evaluate(expect, result, latency, _judge(message, deadline, dify))

    started_at = now_fn()
    clock = time.monotonic()
    try:
        value = _call_target(message, task, deadline, dify, hooks, cancelled, shared or SharedState(), grade)
        latency = time.monotonic() - clock  # the call to the target only
        if isinstance(value, dict) and isinstance(value.get("latency"), float):
            latency = value["latency"]  # the Dify client's: from the request written (dify_client._timed)
        test_result = _to_test_result(value, task, started_at)
        status = _STATUS_FROM_TEST[test_result.status]
        error = test_result.error_message
        if status is TaskStatus.SUCCEEDED and (task.expect is not None or test_result.turns):
            own = grade(task.expect, test_result, latency) if task.expect else []
            test_result.checks = [c for turn in test_result.turns for c in turn.checks] + own
            failed = failure_message(test_result.checks)
            if failed:  # judged, not broken: not retried
                return AttemptOutcome(TaskStatus.FAILED, started_at, latency, failed, retryable=False,
                                      test_result=test_result)
        return AttemptOutcome(status, started_at, latency, error, test_result=test_result)
    except (TaskTimeoutException, SoftTimeLimitExceeded) as exc:
        message_text = str(exc) or f"exceeded timeout_per_task ({deadline.seconds:g} s)"
        return _ended_by(exc, TaskStatus.TIMEOUT, started_at, clock, message_text, getattr(exc, "retryable", True))
    except TaskCancelledException as exc:
        return _ended_by(exc, TaskStatus.CANCELLED, started_at, clock, str(exc), False)
    except TaskExecutionException as exc:
        return _ended_by(exc, TaskStatus.FAILED, started_at, clock, str(exc), exc.retryable)
    except Exception as exc:  # noqa: BLE001 - any other exception is the ERROR status
        return _ended_by(exc, TaskStatus.ERROR, started_at, clock, f"{type(exc).__name__}: {exc}",
                         getattr(exc, "retryable", True))


def _judge(message: CaseMessage, deadline: Deadline, dify: Callable[[], DifyClient]) -> Judge | None:
    """The case's judge, sharing the attempt's deadline (timeout_per_task covers both calls)."""
    target = message.judge
    if target is None:
        return None
    policy = message.policy.retry_policy
    return lambda check, question, answer: judge_check(check, target, question, answer, deadline, dify, policy)


def _ended_by(exc: BaseException, status: TaskStatus, started_at: datetime, clock: float, message: str,
              retryable: bool) -> AttemptOutcome:
    """An attempt an exception ended, with what the Dify client attached to it: Retry-After,
    the answer's kind (dify_answers.py) and the stop it sent to Dify."""
    return AttemptOutcome(status, started_at, time.monotonic() - clock, message, retryable=retryable,
                          retry_after=getattr(exc, "retry_after", None), kind=getattr(exc, "kind", None),
                          dify_stop=getattr(exc, "dify_stop", None), turns=list(getattr(exc, "turns", None) or []))


_STATUS_FROM_TEST = {
    TestStatus.SUCCESS: TaskStatus.SUCCEEDED,
    TestStatus.FAILED: TaskStatus.FAILED,
    TestStatus.TIMEOUT: TaskStatus.TIMEOUT,
    TestStatus.ERROR: TaskStatus.ERROR,
}


def _call_target(
    message: CaseMessage,
    task: Task,
    deadline: Deadline,
    dify: Callable[[], DifyClient],
    hooks: RunHooks | None,
    cancelled: Callable[[], bool] | None,
    shared: SharedState,
    grade: Grade,
) -> Any:
    if message.executor == "hook":
        if hooks is None or hooks.execution_func is None:
            raise ConfigurationError(
                f"run {message.run_id} uses a Python execution function, which only its own "
                "in-process worker has"
            )
        func = hooks.execution_func
        if "cancellation_token" in inspect.signature(func).parameters:
            return func(task, cancellation_token=hooks.token)
        return func(task)
    workflow = message.workflow
    if workflow.is_stub:
        sleep_fn = hooks.sleep_fn if hooks and hooks.sleep_fn else time.sleep
        return run_stub(task, workflow.stub or StubConfig(), deadline, sleep_fn, cancelled)
    if workflow.is_mock:
        raise ConfigurationError(
            f"workflow {workflow.id!r} targets the mock, which only the embedded default starts; "
            "give it the URL of a running `dify-runner mock-dify`"
        )
    assert workflow.api_key_env is not None  # enforced by WorkflowConfig
    # The plan may come from anyone who can reach Redis: only variables meant to hold Dify
    # keys are ever sent, whatever it names.
    refusal = key_variable_refusal(workflow.api_key_env, os.environ)
    if refusal is not None:
        raise ConfigurationError(f"workflow {workflow.id!r}: api_key_env {workflow.api_key_env!r} {refusal}",
                                 kind=AnswerKind.REJECTED)
    api_key = os.environ.get(workflow.api_key_env)
    if not api_key:
        raise ConfigurationError(
            f"environment variable {workflow.api_key_env} (the API key of workflow "
            f"{workflow.id!r}) is not set in this worker", kind=AnswerKind.REJECTED
        )
    return call_app(message, task, api_key, deadline, dify(), cancelled, shared, grade)


def _to_test_result(value: Any, task: Task, started_at: datetime) -> TestResult:
    """Normalise what a target returned (seed dict or TestResult) into a TestResult."""
    if isinstance(value, TestResult):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise TypeError(f"execution function returned {type(value).__name__}, expected dict or TestResult")
    status = str(value.get("status") or "succeeded")
    expects_failure = task.expect is not None and task.expect.status == "failed"
    if status in ("failed", "stopped") and not expects_failure:
        raise TaskExecutionException(f"workflow {status}: {value.get('error') or 'no error message'}")
    if status not in ("succeeded", "partial-succeeded", "failed", "stopped"):
        raise TaskExecutionException(f"workflow ended with status {status!r}")
    outputs = value.get("outputs") or {}
    metadata = {
        key: value[key]
        for key in ("workflow_run_id", "dify_task_id", "elapsed_time", "total_steps", "currency", "ttft",
                    "time_to_first_event", "local_wait", "conversation_id", "message_id", "agent_thoughts",
                    "message_files", "prompt_tokens", "completion_tokens", "conversation_restarts",
                    "conversation_restart_reason")
        if value.get(key) is not None
    }
    if status != "succeeded":
        metadata["workflow_status"] = status
    if status in ("failed", "stopped"):  # expected (a negative test): check() judges it
        metadata["workflow_error"] = str(value.get("error") or "")
    return TestResult(
        workflow_id=task.workflow_id,
        execution_id=task.task_id,
        timestamp=started_at,
        status=TestStatus.SUCCESS,
        tokens_used=int(value.get("total_tokens") or value.get("tokens_used") or 0),
        cost=value["cost"] if "cost" in value else 0.0,
        inputs=task.parameters,
        outputs=outputs if isinstance(outputs, dict) else {"output": outputs},
        metadata=metadata,
        turns=[TurnResult.model_validate(t) for t in value.get("turns") or []],
    )
