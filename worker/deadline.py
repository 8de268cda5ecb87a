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
    """Shut a socket down when a deadline passes or the run is cancelled.

    httpx's read timeout bounds each read, not the whole body: a server that trickles a
    byte now and then never trips it. Shutting the socket makes the blocked read return,
    so a response can never outlive its deadline by more than the scheduling delay. The
    same thread asks ``should_stop`` every ``interval``; when it says yes, ``on_stop``
    runs (e.g. to stop the run in Dify) before the socket is shut.
    """

    def __init__(
        self,
        deadline: Deadline,
        sock: socket.socket | None,
        should_stop: Callable[[], bool] | None = None,
        on_stop: Callable[[], None] | None = None,
        interval: float = 0.5,
    ) -> None:
        self.fired = False
        self.cancelled = False
        self._deadline = deadline
        self._sock = sock
        self._should_stop = should_stop
        self._on_stop = on_stop
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="dify-runner-watchdog", daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(min(self._interval, self._deadline.remaining())):
            if self._deadline.expired():
                self.fired = True
            elif self._should_stop is not None and self._should_stop():
                self.cancelled = True
                if self._on_stop is not None:
                    self._on_stop()
            else:
                continue
            self._shut()
            return

    def _shut(self) -> None:
        try:
            assert self._sock is not None
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: nothing left to unblock

    def __enter__(self) -> SocketWatchdog:
        if self._sock is not None:
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
