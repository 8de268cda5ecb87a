"""Waiting for a run: poll the run store until the last chord callback has finished it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from ..worker.store import RunInfo, RunStore

ProgressCallback = Callable[[RunInfo, dict[str, int]], None]


# How long the producer keeps trying while Redis is unreachable before it gives up.
REDIS_OUTAGE_LIMIT = 300.0

log = logging.getLogger("dify_runner.producer")


class RunNotFound(LookupError):
    """No run with that id in this Redis (wrong id, wrong broker, or expired)."""


class RunLost(LookupError):
    """The run was there and is gone: Redis lost its state (restarted without persistence)."""


class RunStalled(RuntimeError):
    """No case of the run ended for ``stall_after`` seconds: no live worker, or lost messages."""


class PublishingIncomplete(RuntimeError):
    """Publishing stopped part way (Redis failed, or the process was told to stop without a
    cancel): the run holds fewer messages than its plan has cases; ``resume`` sends the rest."""

    def __init__(self, run_id: str, published: int, total: int, cause: str) -> None:
        super().__init__(run_id, published, total, cause)
        self.run_id, self.published, self.total, self.cause = run_id, published, total, cause


def wait_for_run(
    store: RunStore,
    run_id: str,
    on_progress: ProgressCallback | None = None,
    poll_interval: float = 0.25,
    token: Any = None,
    sleep_fn: Callable[[float], None] = time.sleep,
    stall_after: float | None = None,
) -> RunInfo:
    """Block until ``run_id`` is finished; report progress on every poll.

    ``token`` (a CancellationToken) cancels the run when it is set: cases not yet
    started then end CANCELLED and the run still finishes with one result per case.
    """
    cancelled = seen = False
    outage_since: float | None = None
    last_change, last_state = time.monotonic(), None
    while True:
        try:
            info = store.get_run(run_id)
            progress = store.progress(run_id) if info is not None else {}
        except redis.ConnectionError as exc:
            # Workers and the broker reconnect by themselves; the producer waits too, and says so.
            outage_since = outage_since or time.monotonic()
            if time.monotonic() - outage_since > REDIS_OUTAGE_LIMIT:
                raise
            log.warning("Redis unreachable (%s); retrying", exc)
            sleep_fn(min(5.0, max(poll_interval, 1.0)))
            continue
        outage_since = None
        if info is None:
            raise RunLost(run_id) if seen else RunNotFound(run_id)
        seen = True
        if on_progress is not None:
            on_progress(info, progress)
        if info.finished:
            return info
        if info.publishing_incomplete:
            # Said at once, not after a stall timeout: part of the plan was never sent.
            raise PublishingIncomplete(run_id, info.published_cases, info.total, "publishing was interrupted")
        state = (sum(progress.values()), info.batches_done, info.batch_count)
        if state != last_state:
            last_change, last_state = time.monotonic(), state
        elif stall_after is not None and time.monotonic() - last_change > stall_after:
            raise RunStalled(run_id, stall_after)
        if token is not None and not cancelled and token.is_cancelled():
            store.cancel(run_id, "cancelled through the CancellationToken")
            cancelled = True
        sleep_fn(poll_interval)
