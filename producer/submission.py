"""Submitting a manifest: one chord per batch of ``batch_size`` cases.

Each chord's callback (``finish_batch``) converts and stores its batch, and the last
one computes the run's statistics. Batches keep every message and every Redis value
bounded by ``batch_size``, whatever the size of the run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext, suppress
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

from celery import Celery, chord
from pydantic import BaseModel

from ..config.errors import PlanError
from ..config.manifest import RunManifest
from ..config.plan import ExecutionPolicy
from ..config.settings import Settings
from ..worker.app import RunnerCelery
from ..worker.batches import close_batch, never_ran_result
from ..worker.dify.files import stage
from ..worker.messages import AttemptPolicy, CaseMessage
from ..worker.store import CLOSED, INTERRUPTED, PUBLISHED, RunInfo, RunStore
from ..worker.tasks import FINISH_BATCH, case_signature
from .waiting import PublishingIncomplete

# Most publish commands sent to Redis in one pipeline (kombu's Producer.batch).
PUBLISH_PIPELINE = 1000


class ManifestHeader(BaseModel):
    """The first line of a run's manifest.jsonl; task messages follow, one per line."""

    run_id: str
    plan_name: str
    total: int
    batch_size: int
    pass_rate: float = 1.0
    # Local file inputs (sha256 -> path): resume stages them again where Redis lost them.
    files: dict[str, str] = {}


def attempt_policy(manifest: RunManifest) -> AttemptPolicy:
    return attempt_policy_of(manifest.execution_policy, Settings.from_env())


def attempt_policy_of(execution: ExecutionPolicy, settings: Settings) -> AttemptPolicy:
    """What each case's message carries of the plan's execution policy and the settings."""
    return AttemptPolicy(
        retry_policy=execution.retry_policy,
        timeout_per_task=execution.stop_conditions.timeout_per_task,
        max_failures=execution.stop_conditions.max_failures,
        concurrency=execution.concurrency,
        rate_control=execution.rate_control,
        admission_wait=settings.admission_wait,
    )


def case_messages(manifest: RunManifest, executor: str = "plan") -> Iterator[list[CaseMessage]]:
    """The run's task messages, batch by batch."""
    policy = attempt_policy(manifest)
    workflows = {w.id: w for w in manifest.workflows}
    created_at = manifest.created_at.isoformat()
    for index, batch in enumerate(manifest.batches()):
        yield [
            CaseMessage(run_id=manifest.run_id, batch=index, task=task, workflow=workflows[task.workflow_id],
                        policy=policy, executor=executor, created_at=created_at,
                        judge=manifest.judge(task.expect.judge.by) if task.expect and task.expect.judge else None)
            for task in batch
        ]


# Called after each chord is published with (batches published, cases published); False stops
# publishing there (an interrupt the user answered with "cancel").
AfterChord = Callable[[int, int], bool]


def broker_task_id(run_id: str, task_id: str, batch: int, round_: int = 0) -> str:
    """A case's Celery task id: ``<run_id>:<task_id>:<batch>[:r<round>]``. Plan ids never hold
    ':', so ``resume`` can read the run, the case and the batch back from a queued message."""
    return f"{run_id}:{task_id}:{batch}" + (f":r{round_}" if round_ else "")


def finish_task_id(run_id: str, batch: int, round_: int = 0) -> str:
    """The chord callback's Celery task id: ``<run_id>:finish:<batch>[:r<round>]``."""
    return f"{run_id}:finish:{batch}" + (f":r{round_}" if round_ else "")


def publish(app: Celery, run_id: str, batches: Iterable[tuple[int, list[CaseMessage]]], batch_count: int,
            round_: int = 0, after_chord: AfterChord | None = None, store: RunStore | None = None) -> int:
    """Send each batch as a chord: its cases, then ``finish_batch`` with their results.
    Returns how many batches were sent (fewer than given when ``after_chord`` said stop).

    Messages go out through kombu's ``Producer.batch()``: LPUSHes are pipelined, up to
    PUBLISH_PIPELINE at a time, instead of one round trip each (bench/bench_pipeline.py).
    A chord is flushed whole before ``after_chord`` runs, so a stop never splits one.
    With ``store``, each batch's messages are also kept in the run store until the batch
    closes, so the fleet can publish a case again if its message is lost (worker/recovery.py).
    """
    sent = cases = 0
    with app.producer_or_acquire() as producer, producer.batch(max_size=PUBLISH_PIPELINE) as pipeline, \
            _publishing_through(app, producer):
        for index, messages in batches:
            wires = [message.with_batch(index).to_wire() for message in messages]
            if store is not None:
                store.keep_messages(run_id, index,
                                    {m.task.task_id: json.dumps(w) for m, w in zip(messages, wires, strict=True)})
            header = [case_signature(app, wire, broker_task_id(run_id, message.task.task_id, index, round_),
                                     message.policy)
                      for message, wire in zip(messages, wires, strict=True)]
            body = app.signature(FINISH_BATCH, args=(run_id, index, batch_count),
                                 task_id=finish_task_id(run_id, index, round_))
            chord(header, body).apply_async(producer=producer)
            pipeline.flush()  # a chord at a time: workers start on the first while the rest is built
            sent, cases = sent + 1, cases + len(messages)
            if after_chord is not None and not after_chord(sent, cases):
                break
    return sent


def _publishing_through(app: Celery, producer: Any) -> AbstractContextManager[Any]:
    """Make the chord's own publishing use ``producer`` (see RunnerCelery)."""
    if isinstance(app, RunnerCelery):
        return app.publishing_through(producer)
    return nullcontext(producer)


def create_run(store: RunStore, manifest: RunManifest, executor: str = "plan",
               manifest_file: Path | None = None) -> None:
    """Write the run's whole manifest to disk, then record the run with its plan's case
    count, before a single message is published: whatever happens to publishing, the run's
    size and every case it must run are known (``resume`` reads them back). In this order,
    a producer killed between the two leaves a manifest and no run, which ``resume`` rebuilds;
    the other order would leave a run that nothing can resume."""
    if manifest_file is not None:
        manifest_file.parent.mkdir(parents=True, exist_ok=True)
        partial = manifest_file.with_name(manifest_file.name + ".partial")
        with partial.open("w", encoding="utf-8") as out:
            header = ManifestHeader(run_id=manifest.run_id, plan_name=manifest.plan_name,
                                    total=len(manifest.cases), batch_size=manifest.execution_policy.batch_size,
                                    pass_rate=manifest.gates.pass_rate, files=manifest.files)
            out.write(header.model_dump_json() + "\n")
            for messages in case_messages(manifest, executor):
                out.writelines(m.model_dump_json() + "\n" for m in messages)
        partial.replace(manifest_file)  # a manifest on disk is always whole
    stage_files(store, manifest.run_id, manifest.files)
    # The store times the run from now (the manifest's created_at may come from an injected clock).
    store.create_run(manifest.run_id, manifest.plan_name, len(manifest.cases), manifest.batch_count,
                     datetime.now(timezone.utc), manifest.gates.pass_rate, manifest.execution_policy.batch_size)


def stage_files(store: RunStore, run_id: str, files: dict[str, str]) -> None:
    """Put the run's local file inputs in Redis for its workers (worker/dify/files.py)."""
    if files:
        stage(store.redis, run_id, read_staged_files(files), store.ttl)


def read_staged_files(files: dict[str, str]) -> dict[str, bytes]:
    """The run's local file inputs (sha256 -> path) read again; a file changed since the plan
    was read is an error, not a different file sent under the same name."""
    read: dict[str, bytes] = {}
    for digest, path in files.items():
        data = Path(path).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise PlanError(path, ["the file changed while the run was being prepared; run again"])
        read[digest] = data
    return read


def publish_run(app: Celery, store: RunStore, manifest: RunManifest, executor: str = "plan",
                keep_going: Callable[[], bool] | None = None) -> int:
    """Publish a created run's chords; returns how many batches were sent.

    ``keep_going()`` is asked after each chord (an interrupt handler answers it); when it
    says no, publishing stops and the caller decides what the unsent batches become
    (``cancel_unpublished``). Raises PublishingIncomplete when publishing fails part way.
    """
    run_id = manifest.run_id

    def after_chord(batches: int, cases: int) -> bool:
        store.mark_published(run_id, batches, cases)
        return keep_going is None or keep_going()

    try:
        sent = publish(app, run_id, enumerate(case_messages(manifest, executor)), manifest.batch_count,
                       after_chord=after_chord, store=store)
    except Exception as exc:
        info = _safe_info(store, run_id)
        with suppress(Exception):
            store.end_publishing(run_id, INTERRUPTED)
        published = info.published_cases if info is not None else 0
        raise PublishingIncomplete(run_id, published, len(manifest.cases), f"{type(exc).__name__}: {exc}") \
            from exc
    if sent == manifest.batch_count:
        store.end_publishing(run_id, PUBLISHED)
    return sent


def _safe_info(store: RunStore, run_id: str) -> RunInfo | None:
    try:
        return store.get_run(run_id)
    except Exception:  # noqa: BLE001 - only for the error message
        return None


def unpublished(manifest: RunManifest, first_batch: int,
                executor: str = "plan") -> Iterator[tuple[int, list[CaseMessage]]]:
    """The manifest's batches from ``first_batch`` on."""
    return islice(enumerate(case_messages(manifest, executor)), first_batch, None)


def end_unpublished(store: RunStore, run_id: str, batches: Iterable[tuple[int, list[CaseMessage]]],
                    batch_count: int, reason: str) -> int:
    """Cancel the run and end every case of ``batches`` (never published) as CANCELLED, so
    the run still finishes with one result per case of its plan. Returns how many cases."""
    store.cancel(run_id, reason)
    ended = 0
    for index, messages in batches:
        now = datetime.now(timezone.utc)
        pipe = store.redis.pipeline()
        for message in messages:
            result = never_ran_result(message.with_batch(index), now, f"cancelled before it was published: {reason}")
            store.record_end(run_id, index, message.task.task_id, result.model_dump_json(), "cancelled", False,
                             pipe=pipe)
        pipe.execute()
        close_batch(store, run_id, index, batch_count)
        ended += len(messages)
    store.end_publishing(run_id, CLOSED)
    return ended


def submit(app: Celery, store: RunStore, manifest: RunManifest, executor: str = "plan",
           manifest_file: Path | None = None) -> None:
    """Create the run and publish all of it (the Python API's path: no interrupts)."""
    create_run(store, manifest, executor, manifest_file)
    publish_run(app, store, manifest, executor)
