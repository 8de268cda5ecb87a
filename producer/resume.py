"""Resuming a run: run again only the cases without a final result, in the same run.

The cases come from the run's manifest.jsonl, written by the producer at submit time
(it outlives the run's state in Redis). What counts as final: SUCCEEDED, FAILED, TIMEOUT
and ERROR results (only SUCCEEDED with ``retry_failed``); CANCELLED cases and cases with
no result at all are run again. Their new results join the run's report; the old ones
are dropped and every batch summary is rebuilt, so each case still has one result.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from celery import Celery
from pydantic import ValidationError

from ..config.errors import PlanError
from ..worker.messages import CaseMessage
from ..worker.statistics import BatchSummary
from ..worker.store import RunStore
from .submission import ManifestHeader, publish
from .summary import task_status_of

KEPT = frozenset({"succeeded", "failed", "timeout", "error"})


def read_manifest(path: Path) -> tuple[ManifestHeader, Iterator[CaseMessage]]:
    """The header and the task messages of a manifest.jsonl."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise PlanError(str(path), [f"cannot read the run's manifest: {exc.strerror}"]) from None
    try:
        header = ManifestHeader.model_validate_json(handle.readline())
    except ValidationError as exc:
        handle.close()
        raise PlanError(str(path), [f"line 1: not a dify-runner manifest header: {exc.errors()[0]['msg']}"]) from None

    def messages() -> Iterator[CaseMessage]:
        with handle:
            for number, line in enumerate(handle, start=2):
                try:
                    yield CaseMessage.model_validate_json(line)
                except ValidationError as exc:
                    raise PlanError(str(path), [f"line {number}: not a task message: {exc.errors()[0]['msg']}"]) \
                        from None

    return header, messages()


def resume_run(app: Celery, store: RunStore, run_id: str, manifest_file: Path, retry_failed: bool = False) -> int:
    """Re-submit the run's unfinished cases; returns how many. Works when Redis lost the run."""
    header, messages = read_manifest(manifest_file)
    if header.run_id != run_id:
        raise PlanError(str(manifest_file), [f"is the manifest of run {header.run_id}, not {run_id}"])
    info = store.get_run(run_id)
    if info is None:  # Redis lost the run's state: start it again from the manifest
        store.create_run(run_id, header.plan_name, header.total, 0, datetime.now(timezone.utc), header.pass_rate)
        old_batches = 0
    else:
        old_batches = info.batch_count
    keep = {"succeeded"} if retry_failed else KEPT
    kept: set[str] = set()
    kept_summary = BatchSummary()  # the kept cases of every old batch
    for batch in range(old_batches):
        results = store.batch_results(run_id, batch)
        summary, dropped = BatchSummary(), []
        for task_id, result in results.items():
            status = task_status_of(result)
            if status in keep:
                kept.add(task_id)
                summary.add(status, result.execution_time, result.tokens_used, result.cost)
            else:
                dropped.append(task_id)
        store.replace_batch(run_id, batch, dropped, summary)
        kept_summary.merge(summary)
    pending = [m for m in messages if m.task.task_id not in kept]
    size = header.batch_size
    new_batches = [(old_batches + i, pending[start:start + size])
                   for i, start in enumerate(range(0, len(pending), size))]
    batch_count = old_batches + len(new_batches)
    # Old batches count as done: what they still lacked is in the new ones.
    store.reopen(run_id, batch_count, range(old_batches))
    for status, n in kept_summary.counts.items():  # one increment per status, not per case
        store.count(run_id, status, n)
    if not new_batches:
        store.finalize(run_id, batch_count)
        return 0
    publish(app, run_id, new_batches, batch_count, store.next_resume_round(run_id))
    return len(pending)
