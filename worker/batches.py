"""Closing a batch: its cases' TaskResults become TestResults and a summary in the run store.

The chord callback (``finish_batch``) closes a batch when its cases have ended; the
producer closes the batches it never published when a run is cancelled while publishing,
and ``resume`` closes the batches whose messages are gone. One function for all three, so
a batch is converted and counted the same way whoever closes it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from .converter import STATUS_MAP, ResultConverter
from .messages import CaseMessage
from .models import FAILURE_STATUSES, TaskResult, TaskStatus, TestResult
from .statistics import BatchSummary
from .store import RunInfo, RunStore, run_key

log = logging.getLogger("dify_runner.worker")


def never_ran_result(message: CaseMessage, when: datetime, reason: str) -> TaskResult:
    """The result of a case that ended CANCELLED without an attempt (never published)."""
    task = message.task
    return TaskResult(
        task_id=task.task_id, workflow_id=task.workflow_id, task_status=TaskStatus.CANCELLED, finished_at=when,
        error_message=reason, dataset=task.dataset, scenario=task.scenario, case_id=task.case_id,
        run_id=message.run_id,
        test_result=TestResult(workflow_id=task.workflow_id, execution_id=task.task_id, timestamp=when,
                               status=STATUS_MAP[TaskStatus.CANCELLED], inputs=task.parameters),
    )


def batch_task_results(store: RunStore, run_id: str, batch: int,
                       results: list[dict[str, Any]] | None = None) -> list[TaskResult]:
    """A batch's TaskResults: stored ones read from the run store, the rest carried inline.

    ``results`` is what the chord carried (references or results); None means every case
    the workers recorded for the batch. Each case appears once. A reference whose result is
    not in this batch but whose case has ended belongs to a duplicate delivery: the case's
    result lives in the batch that ran it first.
    """
    stored = store.ended_results(run_id, batch)
    if results is None:
        return [TaskResult.model_validate_json(raw) for _, raw in sorted(stored.items())]
    task_results: list[TaskResult] = []
    seen: set[str] = set()
    final: dict[str, str] | None = None
    for item in results:
        task_id = str(item.get("task_id"))
        if task_id in seen:
            continue
        seen.add(task_id)
        if not item.get("stored"):
            task_results.append(TaskResult.model_validate(item))
        elif task_id in stored:
            task_results.append(TaskResult.model_validate_json(stored[task_id]))
        else:
            final = store.final_statuses(run_id) if final is None else final
            if task_id in final:
                continue  # a duplicate: counted and stored with the delivery that ended it first
            task_results.append(TaskResult(task_id=task_id, workflow_id="unknown", run_id=run_id,
                                           task_status=TaskStatus.ERROR,
                                           error_message="the case's stored result was lost (Redis restarted?)"))
    return task_results


# A closer holds its batch's lock this long at most (a closer killed mid-way lets go by then).
CLOSE_LOCK_MS = 60_000


def batch_complete(store: RunStore, run_id: str, batch: int, info: RunInfo | None = None,
                   ends: int | None = None) -> bool:
    """Whether every case of ``batch`` has ended (its end recorded in the run store).
    ``info`` and ``ends`` (the batch's count of ends): what the caller read already."""
    info = info or store.get_run(run_id)
    if info is None:
        return False
    expected = info.batch_cases(batch)
    if expected is None:
        members = store.batch_members(run_id, batch)
        if not members:
            return True  # a run stored before batches were counted: trust the chord
        expected = len(members)
    return (store.batch_ends(run_id, batch) if ends is None else ends) >= expected


def close_batch(store: RunStore, run_id: str, batch: int, batch_count: int | None,
                results: list[dict[str, Any]] | None = None, require_complete: bool = False) -> bool:
    """Convert and store one batch, and finish the run if it was its last (``batch_count``: the
    count the caller knows, at most the run's own; None: never, the caller finishes it); False
    when the batch was not closed: already closed (a late or redelivered callback: storing
    again would count its cases twice), being closed by another process, or, with
    ``require_complete``, some of its cases have not ended yet.

    ``require_complete`` is for the chord callback and the fleet sweep: a chord may fire
    early (a case redelivered after its worker reported it to the chord but before it
    acknowledged it counts twice), and the sweep closes the batch once its last case ends.
    """
    if results:
        _record_inline(store, run_id, batch, results)
    if store.batch_done(run_id, batch):
        log.info("run %s batch %d is already done; late results ignored", run_id, batch)
        # A callback redelivered after its batch was saved but before the run was finished
        # (its worker died in between) still finishes the run: finalize is idempotent.
        if batch_count is not None:
            store.finalize(run_id)
        return False
    if require_complete and not batch_complete(store, run_id, batch):
        log.info("run %s batch %d: not every case has ended yet; it closes when the last one has", run_id, batch)
        return False
    lock = run_key(run_id, "closing", batch)
    if not store.redis.set(lock, "1", nx=True, px=CLOSE_LOCK_MS):
        return False
    try:
        if store.batch_done(run_id, batch):
            return False
        # A complete batch's results are all in the store (inline ones were stored above).
        task_results = batch_task_results(store, run_id, batch, None if require_complete else results)
        test_results = ResultConverter.convert_batch(task_results)
        summary = BatchSummary()
        for task_result, test_result in zip(task_results, test_results, strict=True):
            summary.add(task_result.task_status.value, task_result.execution_time, test_result.tokens_used,
                        test_result.cost, test_result.metadata, test_result.checks)
        done = store.save_batch(run_id, batch, task_results, test_results, summary)
    finally:
        store.redis.delete(lock)
    # finalize reads the run's count with its done set: a resume may have added batches since
    # this chord was published (its batch was live, so resume left it). Reaching the count the
    # caller knows only says it is worth asking.
    if batch_count is not None and done >= batch_count and store.finalize(run_id):
        log.info("run %s finished (%d batches)", run_id, done)
    return True


def _record_inline(store: RunStore, run_id: str, batch: int, results: list[dict[str, Any]]) -> None:
    """Results the chord carried because their worker could not store them: store them now
    (once per case, like any end), so the batch's count and the sweep see them."""
    inline = [item for item in results if not item.get("stored")]
    if not inline:
        return
    pipe = store.redis.pipeline()
    for item in inline:
        result = TaskResult.model_validate(item)
        store.record_end(run_id, batch, result.task_id, result.model_dump_json(), result.task_status.value,
                         result.task_status in FAILURE_STATUSES, pipe=pipe)
    pipe.execute()
