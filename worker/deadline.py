"""A per-attempt deadline that every pool honours, not only prefork.

Celery's time limits are enforced by the prefork pool alone (threads and solo ignore
them, celery#9203), so each attempt carries its own deadline: the stub sleeps no longer
than it, and the Dify client shuts the socket of a response that outlives it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType


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


class SocketWatchdog:
    """Shut a socket down when a deadline passes, unblocking a thread stuck reading it.

    httpx's read timeout bounds each read, not the whole body: a server that trickles a
    byte now and then never trips it. Shutting the socket makes the blocked read return,
    so a response can never outlive its deadline by more than the scheduling delay.
    """

    def __init__(self, deadline: Deadline, sock: socket.socket | None) -> None:
        self.fired = False
        self._sock = sock
        self._timer = threading.Timer(deadline.remaining(), self._fire) if sock is not None else None

    def _fire(self) -> None:
        self.fired = True
        try:
            assert self._sock is not None
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: nothing left to unblock

    def __enter__(self) -> SocketWatchdog:
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
