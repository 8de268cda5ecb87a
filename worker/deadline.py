"""A per-attempt deadline that every pool honours, not only prefork.

Celery's time limits are enforced by the prefork pool alone (threads and solo ignore
them, celery#9203), so each attempt carries its own deadline: the stub sleeps no longer
than it, and the Dify client shuts the socket of a response that outlives it (watcher.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Deadline:
    """``seconds`` from now on a monotonic clock."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._start = clock()

    def elapsed(self) -> float:
        return self._clock() - self._start

    def remaining(self) -> float:
        return max(0.0, self.seconds - self.elapsed())

    def expired(self) -> bool:
        return self.elapsed() >= self.seconds
