"""Resuming a run: run again only the cases of its plan without a final result.

The cases come from the run's manifest.jsonl, written whole by the producer before it
published anything (it outlives the run's state in Redis). A batch is one of three kinds:

- *done*: its chord callback stored its results. Final results are kept (SUCCEEDED, FAILED,
  TIMEOUT, ERROR; only SUCCEEDED with ``retry_failed``); the others are dropped and run again.
- *live*: a message of it (a case, or its callback) is still in the broker. It is left alone:
  its cases end by themselves, and none of them is run twice.
- *dead*: neither (never published, publishing was interrupted, or its messages were lost).
  It is closed with the results its cases recorded, and the rest of its cases run again.

The cases run again form new batches of the same run, so each case still has one result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from celery import Celery
from pydantic import ValidationError

from ..config.errors import PlanError
from ..worker.batches import close_batch
from ..worker.live_messages import live_messages
from ..worker.messages import CaseMessage
from ..worker.statistics import BatchSummary
from ..worker.store import PUBLISHED, PUBLISHING, RunStore
from .submission import AfterChord, ManifestHeader, publish, stage_files
from .summary import task_status_of

KEPT = frozenset({"succeeded", "failed", "timeout", "error"})


class RunBusy(RuntimeError):
    """Another process is still publishing the run."""


@dataclass
class ResumePlan:
    """What a resume found and did."""

    resubmitted: int = 0
    kept: int = 0
    live_batches: int = 0
    closed_batches: int = 0
    batch_count: int = 0
    # Batches that were to be published and were not (publishing was stopped).
    unsent: list[tuple[int, list[CaseMessage]]] = field(default_factory=list)


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


def resume_run(app: Celery, store: RunStore, run_id: str, manifest_file: Path, retry_failed: bool = False,
               keep_going: Callable[[], bool] | None = None) -> ResumePlan:
    """Re-submit the cases of the plan that have no final result. Works when Redis lost the run."""
    header, messages = read_manifest(manifest_file)
    if header.run_id != run_id:
        raise PlanError(str(manifest_file), [f"is the manifest of run {header.run_id}, not {run_id}"])
    cases = list(messages)
    if len(cases) != header.total:
        raise PlanError(str(manifest_file), [f"holds {len(cases)} cases, its header says {header.total}: "
                                             "it was not written whole"])
    planned_batches = 1 + max((m.batch for m in cases), default=-1)
    # The files may never have been staged (a producer killed first) or have expired.
    stage_files(store, run_id, header.files)
    info = store.get_run(run_id)
    if info is None:  # Redis lost the run's state: start it again from the manifest
        # Cases that ended after the loss recorded their results in their batches: keep them.
        store.create_run(run_id, header.plan_name, header.total, planned_batches, datetime.now(timezone.utc),
                         header.pass_rate, header.batch_size)
        old_batches = planned_batches
    else:
        if info.publish_state == PUBLISHING and not info.publishing_incomplete:
            raise RunBusy(f"run {run_id} is still being published by {info.publisher}")
        old_batches = max(info.batch_count, planned_batches)
    # Held open until reopen() below says how many batches the run now has: a chord callback
    # or the fleet sweep seeing every old batch done (this resume closes the dead ones) would
    # otherwise finish it over the cases that had ended, as if the plan were whole. A resume
    # killed here leaves the run publishing and waiting for a batch no one sends: the next
    # resume closes that batch as dead.
    store.start_publishing(run_id, old_batches + 1)
    plan = ResumePlan()
    live = live_messages(app, run_id)
    done = store.done_batches(run_id)
    batch_of = {m.task.task_id: m.batch for m in cases}
    for batch in range(old_batches):
        if batch in done or batch in live.batches:
            continue
        close_batch(store, run_id, batch, None)  # dead: what its cases recorded is their result
        done.add(batch)
        plan.closed_batches += 1
    plan.live_batches = len(live.batches - done)
    # Batches made by earlier resumes: their members are in Redis, not in the manifest.
    live_members: set[str] = set()
    for batch in range(old_batches):
        members = store.batch_members(run_id, batch)
        for task_id in members:
            batch_of[task_id] = batch
        if batch in live.batches and batch not in done:
            live_members |= members
    live_members |= {m.task.task_id for m in cases if m.batch in live.batches and m.batch not in done}
    keep = {"succeeded"} if retry_failed else KEPT
    final = store.final_statuses(run_id)
    dropped_by_batch: dict[int, list[str]] = {}
    for task_id, status in final.items():
        if status not in keep and task_id not in live_members and batch_of.get(task_id) in done:
            dropped_by_batch.setdefault(batch_of[task_id], []).append(task_id)
    for batch, dropped in dropped_by_batch.items():
        gone = set(dropped)
        summary = BatchSummary()
        for task_id, result in store.batch_results(run_id, batch).items():
            if task_id not in gone:
                summary.add(task_status_of(result), result.execution_time, result.tokens_used, result.cost,
                            result.metadata, result.checks)
        store.replace_batch(run_id, batch, dropped, summary)
        for task_id in dropped:
            del final[task_id]
    pending = [m for m in cases if m.task.task_id not in final and m.task.task_id not in live_members]
    plan.kept, plan.resubmitted = len(final), len(pending)
    size = header.batch_size
    new_batches = [(old_batches + i, pending[start:start + size])
                   for i, start in enumerate(range(0, len(pending), size))]
    batch_count = plan.batch_count = old_batches + len(new_batches)
    store.reopen(run_id, batch_count, store.waiting_cases(run_id) - live.cases)
    for index, messages in new_batches:
        store.set_batch_members(run_id, index, [m.task.task_id for m in messages])
    if not new_batches:
        store.end_publishing(run_id, PUBLISHED)
        store.finalize(run_id)  # when every batch is done
        return plan
    already = header.total - len(pending)

    def after_chord(batches: int, published: int) -> bool:
        store.mark_published(run_id, old_batches + batches, already + published)
        return keep_going is None or keep_going()

    sent = publish(app, run_id, new_batches, batch_count, store.next_resume_round(run_id), after_chord, store)
    if sent == len(new_batches):
        store.end_publishing(run_id, PUBLISHED)
    plan.unsent = new_batches[sent:]
    return plan


__all__ = ["AfterChord", "ResumePlan", "RunBusy", "read_manifest", "resume_run"]
