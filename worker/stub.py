"""The stub target: a case outcome without any HTTP server.

Used by ``base_url: stub`` workflows in plans and by StubExecutor in the Python API;
both share this one implementation of the seeds' behaviours.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import Any

from ..config.manifest import Task
from ..config.plan import StubConfig
from .deadline import Deadline
from .exceptions import TaskCancelledException, TaskExecutionException, TaskTimeoutException

_FLAKY = re.compile(r"^flaky:(\d+)$")


def behavior_for(task: Task, config: StubConfig) -> str:
    """The behaviour configured for a task (by full task id, then by case id)."""
    behaviors = config.task_behaviors
    behavior = behaviors.get(task.task_id) or behaviors.get(task.case_id)
    if behavior is not None:
        return behavior
    if config.failure_rate > 0:
        # Seeded by task and attempt: the same plan fails the same cases every run.
        draw = random.Random(f"{task.task_id}:{task.attempt_count}").random()
        if draw < config.failure_rate:
            return "failure"
    return "success"


def _sleep(seconds: float, sleep_fn: Callable[[float], None], cancelled: Callable[[], bool] | None) -> None:
    """Sleep, in short slices that watch for cancellation when sleeping for real."""
    if cancelled is None or sleep_fn is not time.sleep:
        sleep_fn(seconds)
        return
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if cancelled():
            raise TaskCancelledException("run cancelled during the stub's delay")
        sleep_fn(min(0.1, left))


def run_stub(
    task: Task,
    config: StubConfig,
    deadline: Deadline,
    sleep_fn: Callable[[float], None] = time.sleep,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run one attempt of ``task`` against the stub; returns the seed's execution dict."""
    behavior = behavior_for(task, config)
    if config.simulated_delay > 0:
        if config.simulated_delay > deadline.remaining():
            _sleep(deadline.remaining(), sleep_fn, cancelled)
            raise TaskTimeoutException(
                f"stub delay {config.simulated_delay:g} s exceeds timeout_per_task ({deadline.seconds:g} s)"
            )
        _sleep(config.simulated_delay, sleep_fn, cancelled)
    flaky = _FLAKY.match(behavior)
    if flaky:
        behavior = "failure" if task.attempt_count <= int(flaky.group(1)) else "success"
    if behavior == "failure":
        raise TaskExecutionException(f"stub failure (attempt {task.attempt_count})")
    if behavior == "timeout":
        raise TaskTimeoutException(f"stub timeout (attempt {task.attempt_count})")
    if behavior == "error":
        raise RuntimeError(f"stub error (attempt {task.attempt_count})")
    text = " ".join(str(v) for v in task.parameters.values())
    return {
        "workflow_run_id": f"stub-{task.task_id}",
        "status": "succeeded",
        "outputs": {"text": f"stub answer: {text}"[:1000]},
        "total_tokens": 10 + len(text) // 4,
        "cost": 0.0,
    }
