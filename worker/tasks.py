"""The two Celery tasks: ``run_case`` (one per case) and ``finish_batch`` (a chord callback).

``run_case`` never raises after its last attempt: whatever happens it returns a
TaskResult, because one raising header task would keep its chord's callback from
ever running (ChordError) and the batch's results would be lost.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from typing import Any

import redis
from celery import Celery, Signature, Task
from celery.exceptions import Reject, Retry
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from ..config.settings import Settings
from .answer_guard import AnswerGuard
from .batches import close_batch
from .case_request import CaseRequest
from .conversation import partial_result
from .converter import STATUS_MAP
from .dify_answers import AnswerKind
from .dify_apps import SharedState
from .dify_client import DifyClient
from .execution import AttemptOutcome, RunHooks, hooks_for, run_attempt
from .messages import LONG_WAIT, AttemptPolicy, CaseMessage
from .models import FAILURE_STATUSES, AttemptRecord, TaskResult, TaskStatus
from .run_control import Admission, Later, RunGate
from .store import RunStore, connect, connections_for

RUN_CASE = "dify_runner.run_case"
# Errors of the worker's own infrastructure: never a case's result (execute_case).
INFRASTRUCTURE_ERRORS = (redis.RedisError, OperationalError)
INFRASTRUCTURE_PAUSE = 1.0
FINISH_BATCH = "dify_runner.finish_batch"
# A retry's wait is cut into hops no longer than this (see _retry).
RETRY_HOP_SECONDS = 5.0
# The longest wait after a refusal for the app's concurrency limit (a quota's may be 30 s).
THROTTLE_WAIT_MAX = 2.0
# How stale a worker's view of a run's cancel flag may be.
CANCEL_CHECK_SECONDS = 0.25

log = logging.getLogger("dify_runner.worker")


class WorkerRuntime:
    """Per-process resources: the run store, the run gate, the Dify HTTP client.

    Created lazily and again after a fork, so prefork children never share sockets.
    """

    def __init__(self, app: Celery) -> None:
        self.pid = os.getpid()
        self.settings: Settings = getattr(app, "dify_runner_settings", None) or Settings.from_env()
        concurrency = max(1, int(app.conf.worker_concurrency or 10))
        # Every thread of the pool may use Redis at once, beside this process's own threads.
        client = connect(app.dify_runner_state_url, connections_for(concurrency))  # type: ignore[attr-defined]
        self.store = RunStore(client, self.settings.result_ttl_seconds)
        self.gate = RunGate(client, self.settings.result_ttl_seconds)
        self.guard = AnswerGuard(client, self.settings.result_ttl_seconds)
        # A case waits at most its policy's admission_wait for a concurrency slot, then goes
        # back to the queue: its message must be acknowledged well within the visibility timeout.
        self.max_slot_wait = self.settings.visibility_timeout / 3
        # The Dify client keeps at most this many idle httpx clients: one per case in flight.
        self.pool_size = concurrency
        self._dify: DifyClient | None = None
        self.shared = SharedState.in_redis(client, self.settings.result_ttl_seconds, self.gate.pace)
        self._cancelled: dict[str, tuple[float, str | None]] = {}

    def dify(self) -> DifyClient:
        if self._dify is None:
            self._dify = DifyClient.create(self.pool_size)
        return self._dify

    def cancel_reason(self, run_id: str, fresh: bool = False) -> str | None:
        """The run's cancel flag. Polling loops (waiting for a slot, watching a call in
        flight) pass fresh=False and read Redis at most every CANCEL_CHECK_SECONDS per
        process; the decision to retry reads it fresh (the decision to start an attempt
        reads it in the admission script)."""
        now = time.monotonic()
        cached = self._cancelled.get(run_id)
        # A resumed run is un-cancelled, so even a cancellation is only cached briefly.
        if cached is not None and not fresh and now - cached[0] < CANCEL_CHECK_SECONDS:
            return cached[1]
        if len(self._cancelled) > 1000:
            self._cancelled.clear()
        reason = self.store.cancel_reason(run_id)
        self._cancelled[run_id] = (now, reason)
        return reason


def runtime(app: Celery) -> WorkerRuntime:
    current = getattr(app, "_dify_runner_runtime", None)
    if current is None or current.pid != os.getpid():
        current = WorkerRuntime(app)
        app._dify_runner_runtime = current  # type: ignore[attr-defined]
    return current


def case_signature(app: Celery, wire: dict[str, Any], broker_id: str, policy: AttemptPolicy) -> Signature:
    """The ``run_case`` task of one case's message, with Celery's time limits for it."""
    soft, hard = policy.time_limits()
    # argsrepr: what Flower and logs show instead of the whole message: "<run id> <case's task id>".
    return app.signature(RUN_CASE, args=(wire,), task_id=broker_id, argsrepr=" ".join(broker_id.split(":")[:2]),
                         soft_time_limit=soft, time_limit=hard)


def register_tasks(app: Celery) -> None:
    """Register the tasks on ``app`` (called by create_app)."""

    # shared=False: each app (fleet, embedded, tests) gets its own task objects.
    # ignore_result=True although run_case is a chord member: Celery's BaseBackend.mark_as_done
    # (celery/backends/base.py) skips storing an ignored result but still calls
    # on_chord_part_return with the return value, which the Redis backend pushes into the
    # chord's own list; so the chord gets every part and no per-task result key is written.
    @app.task(name=RUN_CASE, bind=True, ignore_result=True, max_retries=None, shared=False, Request=CaseRequest)
    def run_case(self: Task, message: dict[str, Any], history: list[dict[str, Any]] | None = None,
                 wait_until: float | None = None, throttled: int = 0, rate_reserved: bool = False) -> dict[str, Any]:
        return execute_case(self, message, history or [], wait_until, throttled, rate_reserved)

    # The batch's results (references to the stored ones, or the results themselves when
    # storing failed) travel in this message: a Redis hiccup while storing the batch is
    # retried rather than losing it (and leaving the run unfinished).
    @app.task(name=FINISH_BATCH, bind=True, ignore_result=True, shared=False,
              autoretry_for=(redis.RedisError,), retry_backoff=1, retry_backoff_max=60, max_retries=20)
    def finish_batch(self: Task, results: list[dict[str, Any]], run_id: str, batch: int, batch_count: int) -> None:
        store_batch(runtime(self.app), results, run_id, batch, batch_count)


def execute_case(
    task: Task, raw: dict[str, Any], raw_history: list[dict[str, Any]], wait_until: float | None = None,
    throttled: int = 0, rate_reserved: bool = False,
) -> dict[str, Any]:
    """One delivery of a case: an attempt (or a step of a retry's wait), then either a
    Celery retry or a final TaskResult. ``throttled``: answers so far that refused to start
    the run for load (they are not attempts); ``rate_reserved``: the case waited for a
    rate-limit instant it had booked, which has come."""
    try:
        message = CaseMessage.model_validate(raw)
        history = [AttemptRecord.model_validate(h) for h in raw_history]
    except ValidationError as exc:
        return _unreadable_message(raw, exc)
    # Attempts are counted from the history the message carries, not from Celery's
    # retry count: a long backoff is waited out in several short hops.
    attempt = len(history) + 1
    rt: WorkerRuntime | None = None
    try:
        rt = runtime(task.app)
        return _attempt_or_retry(task, rt, message, raw, attempt, history, wait_until, throttled, rate_reserved)
    except Retry:
        raise
    except INFRASTRUCTURE_ERRORS as exc:
        # This worker's own Redis or broker failed, not the case: its message goes back to the
        # queue (Reject requeue: kombu restores it at the head) and it runs again once they
        # answer. A pause first, so that a Redis that is down is not asked in a tight loop.
        log.warning("case %s goes back to the queue: the worker's infrastructure failed (%s: %s)",
                    message.task.task_id, type(exc).__name__, exc)
        time.sleep(INFRASTRUCTURE_PAUSE)
        raise Reject(f"{type(exc).__name__}: {exc}", requeue=True) from exc
    except Exception as exc:  # noqa: BLE001 - a bug here must not break the chord
        log.exception("internal error on case %s", message.task.task_id)
        now = datetime.now(timezone.utc)
        outcome = AttemptOutcome(TaskStatus.ERROR, now, 0.0, f"dify-runner internal error: {type(exc).__name__}: {exc}")
        return _finish(rt, message, attempt, history, outcome, throttled=throttled)


def _attempt_or_retry(
    task: Task, rt: WorkerRuntime, message: CaseMessage, raw: dict[str, Any], attempt: int,
    history: list[AttemptRecord], wait_until: float | None, throttled: int, rate_reserved: bool = False,
) -> dict[str, Any]:
    hooks = hooks_for(message.run_id)

    def cancelled() -> bool:
        return _cancel_reason(rt, message, hooks) is not None

    # The cached flag is enough here: admission below reads it fresh, in the same round trip
    # as the slot.
    if _cancel_reason(rt, message, hooks) is not None:
        return _cancelled(rt, message, attempt, history, hooks, throttled)
    # A booked rate-limit instant comes back LONG_WAIT early, to be slept for precisely.
    if wait_until is not None and wait_until - time.time() > (LONG_WAIT if rate_reserved else 0.001):
        # Still waiting for this retry: hop again, so a cancel is seen within a hop.
        raise _retry(task, raw, history, wait_until, throttled, rate_reserved)
    policy = message.policy
    with rt.gate.admit(message.run_id, message.task.task_id, policy.concurrency, policy.rate_control,
                       message.workflow.base_url, cancelled, min(rt.max_slot_wait, policy.admission_wait),
                       booked=wait_until if rate_reserved else None) as admission:
        if isinstance(admission, Later):  # off the worker thread until then (the slot goes back)
            raise _retry(task, raw, history, admission.at, throttled, admission.reserved)
        if admission is Admission.ENDED:
            # A second delivery of a case that already ended (its worker died before the
            # acknowledgement, or resume raced it): its result is stored; never call Dify again.
            return {"task_id": message.task.task_id, "stored": True}
        if admission is Admission.BUSY:
            raise _retry(task, raw, history, None, throttled)  # back in the queue, message released
        if attempt > 1 or throttled:  # a retry (or a case refused for load) left its wait
            rt.store.retry_started(message.run_id, message.task.task_id)
        if admission is Admission.CANCELLED or _token_cancelled(rt, message, hooks):
            return _cancelled(rt, message, attempt, history, hooks, throttled)
        outcome = run_attempt(message, attempt, rt.dify, hooks, cancelled=cancelled, shared=rt.shared)
        stop = rt.guard.note(message.run_id, message.task.workflow_id, message.workflow.api_key_env, outcome)
        if stop is not None:
            rt.store.cancel(message.run_id, stop)
        retry = policy.retry_policy
        if outcome.kind is not None and outcome.kind.waits:
            return _wait_out(task, rt, message, raw, attempt, history, outcome, throttled + 1, hooks)
        countdown = retry.countdown(attempt)
        if outcome.retry_after is not None:
            countdown = max(countdown, outcome.retry_after)
        if not (outcome.status.is_retryable and outcome.retryable and attempt < retry.max_attempts
                and _cancel_reason(rt, message, hooks, fresh=True) is None):
            # Still holding the slot: _finish gives it back in the same round trip as the count.
            return _finish(rt, message, attempt, history, outcome, throttled=throttled)
        rt.gate.release()  # a retry waits without a slot
    history.append(_record(attempt, outcome, countdown))
    rt.store.retry_scheduled(message.run_id, message.task.task_id)
    log.info("case %s attempt %d %s, retry in %.2fs", message.task.task_id, attempt, outcome.status.value, countdown)
    if hooks is not None and hooks.sleep_fn is not None:
        hooks.sleep_fn(countdown)  # the Python API's injected clock waits instead
        raise _retry(task, raw, history, None, throttled)
    raise _retry(task, raw, history, time.time() + countdown, throttled)


def _wait_out(
    task: Task, rt: WorkerRuntime, message: CaseMessage, raw: dict[str, Any], attempt: int,
    history: list[AttemptRecord], outcome: AttemptOutcome, throttled: int, hooks: RunHooks | None,
) -> dict[str, Any]:
    """Dify refused to start the run for load (the app's concurrency limit, a quota): the run
    holds fewer slots (a limit) or pauses (a quota), and the case tries again after a short
    wait; no attempt is spent, and it is never a FAILED case. It ends only when the run is
    stopped (CANCELLED) or after max_throttled refusals (ERROR). Called holding the slot; every
    path gives it back."""
    retry = message.policy.retry_policy
    if outcome.kind is AnswerKind.THROTTLE:
        # The app's concurrency limit frees as soon as one of its runs ends: the run holds
        # fewer slots (the learned cap) rather than pausing the fleet, unless Dify (or a proxy)
        # asked for a pause with Retry-After.
        rt.gate.learn_limit(message.run_id, outcome.error_message)
        wait = retry.throttle_wait(throttled, outcome.retry_after, longest=THROTTLE_WAIT_MAX)
        if outcome.retry_after is not None:
            rt.gate.cool_down(message.run_id, wait)
    else:  # a quota: the whole run pauses
        wait = retry.throttle_wait(throttled, outcome.retry_after)
        rt.gate.cool_down(message.run_id, wait)
    reason = _cancel_reason(rt, message, hooks, fresh=True)
    if reason is None and throttled < retry.max_throttled:
        rt.gate.release()
        rt.store.retry_scheduled(message.run_id, message.task.task_id)
        log.info("case %s refused for load (%d), again in %.2fs", message.task.task_id, throttled, wait)
        raise _retry(task, raw, history, time.time() + wait, throttled)
    if reason is not None:
        final = AttemptOutcome(TaskStatus.CANCELLED, outcome.started_at, 0.0,
                               f"not run: {reason} (Dify's last answer: {outcome.error_message})", retryable=False)
    else:
        final = AttemptOutcome(TaskStatus.ERROR, outcome.started_at, 0.0,
                               f"Dify refused to start it {throttled} times in a row for load "
                               f"(retry_policy.max_throttled); last answer: {outcome.error_message}", retryable=False)
    return _finish(rt, message, attempt - 1, history, final, ran=False, throttled=throttled)


def _retry(task: Task, raw: dict[str, Any], history: list[AttemptRecord], wait_until: float | None,
           throttled: int = 0, rate_reserved: bool = False) -> Retry:
    """Re-queue the case; it waits at most RETRY_HOP_SECONDS per hop until ``wait_until``.

    Short hops keep every ETA far below the broker's visibility timeout (kombu#337) and
    let a cancelled run drop its waiting retries within one hop.
    """
    due = None if wait_until is None else wait_until - (LONG_WAIT if rate_reserved else 0.0)
    countdown = 0.0 if due is None else max(0.0, min(RETRY_HOP_SECONDS, due - time.time()))
    return task.retry(
        args=(raw,),
        kwargs={"history": [h.model_dump(mode="json") for h in history], "wait_until": wait_until,
                "throttled": throttled, "rate_reserved": rate_reserved},
        countdown=countdown,
        max_retries=None,
    )


def _cancelled(
    rt: WorkerRuntime, message: CaseMessage, attempt: int, history: list[AttemptRecord], hooks: RunHooks | None,
    throttled: int = 0,
) -> dict[str, Any]:
    reason = _cancel_reason(rt, message, hooks) or "run cancelled"
    outcome = AttemptOutcome(TaskStatus.CANCELLED, datetime.now(timezone.utc), 0.0,
                             f"cancelled before attempt {attempt}: {reason}")
    return _finish(rt, message, attempt - 1, history, outcome, ran=False, throttled=throttled)


def _token_cancelled(rt: WorkerRuntime, message: CaseMessage, hooks: RunHooks | None) -> bool:
    """The Python API's CancellationToken (in this process only): set means cancel the run."""
    if hooks is not None and hooks.token is not None and hooks.token.is_cancelled():
        rt.store.cancel(message.run_id, "cancelled through the CancellationToken")
        return True
    return False


def _cancel_reason(
    rt: WorkerRuntime, message: CaseMessage, hooks: RunHooks | None, fresh: bool = False
) -> str | None:
    if _token_cancelled(rt, message, hooks):
        return "cancelled through the CancellationToken"
    return rt.cancel_reason(message.run_id, fresh)


def _record(attempt: int, outcome: AttemptOutcome, countdown: float | None = None) -> AttemptRecord:
    return AttemptRecord(
        attempt=attempt,
        status=outcome.status,
        error_message=outcome.error_message,
        execution_time=round(outcome.execution_time, 6),
        retry_countdown=countdown,
        dify_stop=outcome.dify_stop,
    )


def _finish(
    rt: WorkerRuntime | None, message: CaseMessage, attempt: int, history: list[AttemptRecord],
    outcome: AttemptOutcome, ran: bool = True, throttled: int = 0,
) -> dict[str, Any]:
    """The final TaskResult. ``ran=False``: cancelled before another attempt started."""
    if ran:
        history.append(_record(attempt, outcome))
    task = message.task
    result = TaskResult(
        task_id=task.task_id,
        workflow_id=task.workflow_id,
        task_status=outcome.status,
        created_at=datetime.fromisoformat(message.created_at) if message.created_at else outcome.started_at,
        started_at=outcome.started_at if ran else None,
        finished_at=datetime.now(timezone.utc),
        execution_time=round(outcome.execution_time, 6),
        attempt_count=attempt,
        error_message=outcome.error_message,
        dataset=task.dataset,
        scenario=task.scenario,
        case_id=task.case_id,
        run_id=message.run_id,
        attempts=history,
        throttled=throttled,
        # A case that returned nothing still carries its inputs (and a conversation its answered turns).
        test_result=outcome.test_result or partial_result(task, STATUS_MAP[outcome.status], outcome.started_at,
                                                          outcome.turns),
    )
    payload = result.model_dump_json()
    if rt is not None:
        try:
            _record_end(rt, message, outcome.status, payload)
            # Stored where the chord callback reads it: the chord itself only carries a reference
            # (Celery logs, reprs and stores every return value: a small one costs less).
            return {"task_id": task.task_id, "stored": True}
        except Exception:  # noqa: BLE001 - the result then travels in the chord instead
            log.exception("could not record the end of case %s; its result goes with the chord", task.task_id)
    return result.model_dump(mode="json")


def _record_end(rt: WorkerRuntime, message: CaseMessage, status: TaskStatus, result_json: str) -> None:
    """Store the case's TaskResult, count its end for live progress and for max_failures,
    and give back its concurrency slot: one round trip."""
    failed = status in FAILURE_STATUSES
    failures = rt.store.record_end(message.run_id, message.batch, message.task.task_id, result_json, status.value,
                                   failed, before=rt.gate.release_into)
    max_failures = message.policy.max_failures
    if failed and max_failures is not None and failures is not None and failures >= max_failures:
        rt.store.cancel(message.run_id, f"stopped: max_failures ({max_failures}) reached")


def timed_out(app: Celery, args: Any, kwargs: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    """Celery's hard time limit killed a delivery of a case (case_request.py): its final TIMEOUT."""
    raw = args[0] if args else {}
    try:
        message = CaseMessage.model_validate(raw)
        history = [AttemptRecord.model_validate(h) for h in (kwargs or {}).get("history") or []]
    except ValidationError as exc:
        return _unreadable_message(raw, exc)
    outcome = AttemptOutcome(TaskStatus.TIMEOUT, datetime.now(timezone.utc), timeout,
                             f"killed by Celery's hard time limit ({timeout:g} s): the worker process was stuck",
                             retryable=False)
    return _finish(runtime(app), message, len(history) + 1, history, outcome,
                   throttled=int((kwargs or {}).get("throttled") or 0))


def _unreadable_message(raw: Any, exc: ValidationError) -> dict[str, Any]:
    """A message this worker cannot read still yields a result, so the chord completes."""
    log.error("unreadable case message: %s", exc)
    task = raw.get("task", {}) if isinstance(raw, dict) else {}
    task = task if isinstance(task, dict) else {}
    return TaskResult(
        task_id=str(task.get("task_id", "unknown")),
        workflow_id=str(task.get("workflow_id", "unknown")),
        task_status=TaskStatus.ERROR,
        error_message=f"unreadable task message (is the worker the same version as the producer?): {exc}",
        run_id=str(raw.get("run_id")) if isinstance(raw, dict) else None,
    ).model_dump(mode="json")


def store_batch(rt: WorkerRuntime, results: list[dict[str, Any]], run_id: str, batch: int, batch_count: int) -> None:
    """The chord callback: convert a batch's TaskResults and store them with a summary."""
    close_batch(rt.store, run_id, batch, batch_count, results, require_complete=True)
