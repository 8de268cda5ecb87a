"""The ``run_case`` task's Celery Request: a hard time limit ends the case TIMEOUT, not its batch.

Celery's ``Request.on_timeout`` (celery/worker/request.py) marks a task its hard time limit
killed as FAILURE. For a chord member that FAILURE reaches the chord (celery/backends/base.py
``mark_as_failure`` -> ``on_chord_part_return``), the Redis backend raises ChordError when
the last part returns (celery/backends/redis.py ``_unpack_chord_result``) and the callback
(``finish_batch``) never runs; and the case has no result at all, since the process that
would have recorded it was killed. Here, instead, the pool's parent process records the
case's final TIMEOUT result in the run store and reports the chord part as done, like any
other end. The hard limit only fires on prefork (the only pool that enforces it), when a
case outlives its own deadline by HARD_LIMIT_GRACE: a process stuck in C code, or stopped.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker import state
from celery.worker.request import Request

log = logging.getLogger("dify_runner.worker")


class CaseRequest(Request):
    """A Request whose hard time limit ends the case TIMEOUT (see the module's docstring)."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if soft or state.should_terminate:
            super().on_timeout(soft, timeout)
            return
        from .tasks import timed_out  # tasks registers this class: import it late

        state.task_ready(self)
        log.error("hard time limit (%ss) exceeded for %s[%s]: the case ends TIMEOUT", timeout, self.name, self.id)
        reference: dict[str, Any] = timed_out(self.task.app, self.args, self.kwargs, timeout)
        # ignore_result is set on run_case: store_result=False stores nothing per task, and the
        # chord still gets its part (BaseBackend.mark_as_done calls on_chord_part_return).
        self.task.backend.mark_as_done(self.id, reference, request=self._context, store_result=False)
        self.send_event("task-failed", exception=f"TimeLimitExceeded({timeout})", traceback="")
        if self.task.acks_late:
            self.acknowledge()
