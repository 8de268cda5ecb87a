"""Submitting a manifest: one chord per batch of ``batch_size`` cases.

Each chord's callback (``finish_batch``) converts and stores its batch, and the last
one computes the run's statistics. Batches keep every message and every Redis value
bounded by ``batch_size``, whatever the size of the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from celery import Celery, chord
from pydantic import BaseModel

from ..config.manifest import RunManifest
from ..worker.app import RunnerCelery
from ..worker.messages import AttemptPolicy, CaseMessage
from ..worker.store import RunStore
from ..worker.tasks import FINISH_BATCH, RUN_CASE

# Celery's limits only back up the attempt's own deadline (prefork enforces them, the
# threads pool does not): the soft one raises inside the task, the hard one kills it.
SOFT_LIMIT_GRACE = 2.0
HARD_LIMIT_GRACE = 10.0
# Most publish commands sent to Redis in one pipeline (kombu's Producer.batch).
PUBLISH_PIPELINE = 1000


class ManifestHeader(BaseModel):
    """The first line of a run's manifest.jsonl; task messages follow, one per line."""

    run_id: str
    plan_name: str
    total: int
    batch_size: int
    pass_rate: float = 1.0


def attempt_policy(manifest: RunManifest) -> AttemptPolicy:
    execution = manifest.execution_policy
    return AttemptPolicy(
        retry_policy=execution.retry_policy,
        timeout_per_task=execution.stop_conditions.timeout_per_task,
        max_failures=execution.stop_conditions.max_failures,
        concurrency=execution.concurrency,
        rate_control=execution.rate_control,
    )


def case_messages(manifest: RunManifest, executor: str = "plan") -> Iterator[list[CaseMessage]]:
    """The run's task messages, batch by batch."""
    policy = attempt_policy(manifest)
    workflows = {w.id: w for w in manifest.workflows}
    created_at = manifest.created_at.isoformat()
    for index, batch in enumerate(manifest.batches()):
        yield [
            CaseMessage(run_id=manifest.run_id, batch=index, task=task, workflow=workflows[task.workflow_id],
                        policy=policy, executor=executor, created_at=created_at)
            for task in batch
        ]


def publish(app: Celery, run_id: str, batches: Iterable[tuple[int, list[CaseMessage]]], batch_count: int,
            round_: int = 0) -> None:
    """Send each batch as a chord: its cases, then ``finish_batch`` with their results.

    Messages go out through kombu's ``Producer.batch()``: LPUSHes are pipelined, up to
    PUBLISH_PIPELINE at a time, instead of one round trip each (bench/bench_pipeline.py).
    """
    with app.producer_or_acquire() as producer, producer.batch(max_size=PUBLISH_PIPELINE) as pipeline, \
            _publishing_through(app, producer):
        for index, messages in batches:
            header = [
                app.signature(
                    RUN_CASE,
                    args=(message.with_batch(index).to_wire(),),
                    task_id=f"{run_id}:{message.task.task_id}" + (f":resume{round_}" if round_ else ""),
                    # What Flower and logs show instead of the whole message.
                    argsrepr=f"{run_id} {message.task.task_id}",
                    soft_time_limit=message.policy.timeout_per_task + SOFT_LIMIT_GRACE,
                    time_limit=message.policy.timeout_per_task + HARD_LIMIT_GRACE,
                )
                for message in messages
            ]
            body = app.signature(FINISH_BATCH, args=(run_id, index, batch_count))
            chord(header, body).apply_async(producer=producer)
            pipeline.flush()  # a chord at a time: workers start on the first while the rest is built


def _publishing_through(app: Celery, producer: Any) -> AbstractContextManager[Any]:
    """Make the chord's own publishing use ``producer`` (see RunnerCelery)."""
    if isinstance(app, RunnerCelery):
        return app.publishing_through(producer)
    return nullcontext(producer)


def submit(app: Celery, store: RunStore, manifest: RunManifest, executor: str = "plan",
           manifest_file: Path | None = None) -> None:
    """Record the run and publish its chords. Returns once every message is sent.

    ``manifest_file`` keeps every task message (JSON lines, no secrets) for ``resume``:
    it outlives the run's state in Redis.
    """
    # The store times the run from now (the manifest's created_at may come from an injected clock).
    store.create_run(manifest.run_id, manifest.plan_name, len(manifest.cases), manifest.batch_count,
                     datetime.now(timezone.utc), manifest.gates.pass_rate)
    batches = enumerate(case_messages(manifest, executor))
    if manifest_file is None:
        publish(app, manifest.run_id, batches, manifest.batch_count)
        return
    manifest_file.parent.mkdir(parents=True, exist_ok=True)
    with manifest_file.open("w", encoding="utf-8") as out:
        header = ManifestHeader(run_id=manifest.run_id, plan_name=manifest.plan_name, total=len(manifest.cases),
                                batch_size=manifest.execution_policy.batch_size,
                                pass_rate=manifest.gates.pass_rate)
        out.write(header.model_dump_json() + "\n")

        def recorded() -> Iterator[tuple[int, list[CaseMessage]]]:
            for index, messages in batches:
                out.writelines(m.model_dump_json() + "\n" for m in messages)
                yield index, messages

        publish(app, manifest.run_id, recorded(), manifest.batch_count)
