"""One thread per worker process watches every Dify call in flight.

httpx's read timeout bounds each read, not the whole body: a server that trickles a byte
now and then never trips it. So a call's socket is shut when its attempt's deadline
passes, or when its run is cancelled: the blocked read returns at once. A thread per call
doing that (the first design) cost a thread start and two wake-ups a second per case in
flight, CPU that grew with concurrency x latency (issue 17: about 35 ms per case at 1,000
calls of 5 s); one watcher per process wakes for all of them.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from types import TracebackType

from .deadline import Deadline

# How often a call in flight asks whether its run was cancelled.
STOP_CHECK_INTERVAL = 0.5


class Watch:
    """One call's watch: ``fired`` once its deadline shut it, ``cancelled`` once a stop did."""

    def __init__(self, watcher: CallWatcher, deadline: Deadline, sock: socket.socket | None,
                 should_stop: Callable[[], bool] | None, on_stop: Callable[[], None] | None) -> None:
        self.fired = False
        self.cancelled = False
        self.deadline = deadline
        self._watcher = watcher
        self._sock = sock
        self._should_stop = should_stop
        self._on_stop = on_stop

    def check(self) -> bool:
        """Shut the call if its time is up or its run stopped; True when it is no longer watched."""
        if self.deadline.expired():
            self.fired = True
            self._shut()
            return True
        if self._should_stop is not None and self._should_stop():
            self.cancelled = True
            # Stopping the run in Dify is an HTTP call: off the watcher's thread, then the shut.
            threading.Thread(target=self._stop_then_shut, name="dify-runner-stop", daemon=True).start()
            return True
        return False

    def _stop_then_shut(self) -> None:
        try:
            if self._on_stop is not None:
                self._on_stop()
        finally:
            self._shut()

    def _shut(self) -> None:
        try:
            assert self._sock is not None
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: nothing left to unblock

    def __enter__(self) -> Watch:
        if self._sock is not None:
            self._watcher.add(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._watcher.discard(self)


class CallWatcher:
    """Wakes every ``interval`` (sooner for a deadline due before) and checks every watch."""

    def __init__(self, interval: float = STOP_CHECK_INTERVAL) -> None:
        self.interval = interval
        self._watches: set[Watch] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._next_wake = float("inf")
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline, sock: socket.socket | None, should_stop: Callable[[], bool] | None = None,
              on_stop: Callable[[], None] | None = None) -> Watch:
        return Watch(self, deadline, sock, should_stop, on_stop)

    def add(self, watch: Watch) -> None:
        with self._lock:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dify-runner-watcher", daemon=True)
                self._thread.start()
            due = watch.deadline.remaining()
        if due < self._next_wake:
            self._wake.set()

    def discard(self, watch: Watch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def _run(self) -> None:
        while True:
            with self._lock:
                watches = list(self._watches)
            sleep = self.interval
            for watch in watches:
                if watch.check():
                    self.discard(watch)
                else:
                    sleep = min(sleep, watch.deadline.remaining())
            self._next_wake = sleep
            self._wake.wait(sleep)
            self._wake.clear()


_watcher: tuple[int, CallWatcher] | None = None
_watcher_lock = threading.Lock()


def call_watcher() -> CallWatcher:
    """This process's watcher (a forked child gets its own: threads do not survive a fork)."""
    global _watcher
    with _watcher_lock:
        if _watcher is None or _watcher[0] != os.getpid():
            _watcher = (os.getpid(), CallWatcher())
        return _watcher[1]
