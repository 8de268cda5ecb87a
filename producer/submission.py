"""Submitting a manifest: one chord per batch of ``batch_size`` cases.

Each chord's callback (``finish_batch``) converts and stores its batch, and the last
one computes the run's statistics. Batches keep every message and every Redis value
bounded by ``batch_size``, whatever the size of the run.
"""

from __future__ import annotations

from datetime import datetime, timezone

from celery import Celery, chord

from ..config.manifest import RunManifest
from ..worker.messages import AttemptPolicy, CaseMessage
from ..worker.store import RunStore
from ..worker.tasks import FINISH_BATCH, RUN_CASE

# Celery's limits only back up the attempt's own deadline (prefork enforces them, the
# threads pool does not): the soft one raises inside the task, the hard one kills it.
SOFT_LIMIT_GRACE = 2.0
HARD_LIMIT_GRACE = 10.0


def submit(app: Celery, store: RunStore, manifest: RunManifest, executor: str = "plan") -> None:
    """Record the run and publish its chords. Returns once every message is sent."""
    batch_count = manifest.batch_count
    # The store times the run from now (the manifest's created_at may come from an injected clock).
    store.create_run(manifest.run_id, manifest.plan_name, len(manifest.cases), batch_count, datetime.now(timezone.utc))
    execution = manifest.execution_policy
    policy = AttemptPolicy(
        retry_policy=execution.retry_policy,
        timeout_per_task=execution.stop_conditions.timeout_per_task,
        max_failures=execution.stop_conditions.max_failures,
        concurrency=execution.concurrency,
        rate_control=execution.rate_control,
    )
    workflows = {w.id: w for w in manifest.workflows}
    created_at = manifest.created_at.isoformat()
    timeout = policy.timeout_per_task
    with app.producer_or_acquire() as producer:
        for index, batch in enumerate(manifest.batches()):
            header = [
                app.signature(
                    RUN_CASE,
                    args=(
                        CaseMessage(
                            run_id=manifest.run_id,
                            batch=index,
                            task=task,
                            workflow=workflows[task.workflow_id],
                            policy=policy,
                            executor=executor,
                            created_at=created_at,
                        ).to_wire(),
                    ),
                    task_id=f"{manifest.run_id}:{task.task_id}",
                    # What Flower and logs show instead of the whole message.
                    argsrepr=f"{manifest.run_id} {task.task_id}",
                    soft_time_limit=timeout + SOFT_LIMIT_GRACE,
                    time_limit=timeout + HARD_LIMIT_GRACE,
                )
                for task in batch
            ]
            body = app.signature(FINISH_BATCH, args=(manifest.run_id, index, batch_count))
            chord(header, body).apply_async(producer=producer)
