"""Waiting for a run: poll the run store until the last chord callback has finished it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..worker.store import RunInfo, RunStore

ProgressCallback = Callable[[RunInfo, dict[str, int]], None]


class RunNotFound(LookupError):
    """No run with that id in this Redis (wrong id, wrong broker, or expired)."""


def wait_for_run(
    store: RunStore,
    run_id: str,
    on_progress: ProgressCallback | None = None,
    poll_interval: float = 0.25,
    token: Any = None,
    sleep_fn: Callable[[float], None] = time.sleep,
) -> RunInfo:
    """Block until ``run_id`` is finished; report progress on every poll.

    ``token`` (a CancellationToken) cancels the run when it is set: cases not yet
    started then end CANCELLED and the run still finishes with one result per case.
    """
    cancelled = False
    while True:
        info = store.get_run(run_id)
        if info is None:
            raise RunNotFound(run_id)
        if on_progress is not None:
            on_progress(info, store.progress(run_id))
        if info.finished:
            return info
        if token is not None and not cancelled and token.is_cancelled():
            store.cancel(run_id, "cancelled through the CancellationToken")
            cancelled = True
        sleep_fn(poll_interval)
