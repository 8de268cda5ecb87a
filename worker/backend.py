"""The Redis result backend, minus the per-result subscriptions this project never reads.

Celery's AsyncResult subscribes the creating process to every task's result channel
(celery#3808): a producer that publishes a 100k-case chord would hold 100k
subscriptions. dify-runner reads progress and results from its own run store, never
through AsyncResult, so pending results are not tracked at all.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend


class RunnerRedisBackend(RedisBackend):
    """RedisBackend whose AsyncResults do not subscribe to result channels."""

    def add_pending_result(self, result: Any, weak: bool = False, start_drainer: bool = True) -> Any:
        return result

    def add_pending_results(self, results: Any, weak: bool = False) -> Any:
        return results


BACKEND_PATH = f"{__name__}:RunnerRedisBackend"
