"""What Ctrl+C and SIGTERM mean to a producer, whatever it is doing.

- While publishing, a signal is noted, not raised: a chord is never split, and between two
  chords the publisher asks (on a terminal) or cancels (without one, or on SIGTERM).
- While waiting, SIGINT raises KeyboardInterrupt and SIGTERM raises Terminated (a kind of
  KeyboardInterrupt), so both reach the same question, and every ``with`` block that started
  something (the embedded Redis, the mock) stops it on the way out.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

from rich.console import Console


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop now, cancelling what runs (nobody is there to answer a question)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def terminate_as_interrupt() -> None:
    """Make SIGTERM unwind the program like Ctrl+C does (Python's default kills it on the spot)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def ask(console: Console, question: str, choices: dict[str, str], default: str) -> str:
    """Ask on the terminal; the first letter of an answer picks a choice. Ctrl+C or end of input
    at the prompt picks ``choices['c']`` (cancel): pressing it twice must stop the run."""
    try:
        answer = console.input(question).strip().lower()
    except (KeyboardInterrupt, EOFError):
        console.print()
        return choices["c"]
    return choices.get(answer[:1], default) if answer else default


class PublishGuard:
    """Notes SIGINT and SIGTERM while a run is published; ``keep_going`` answers between chords."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.pending: int | None = None
        self.reason = "interrupted while publishing"
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> PublishGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._saved[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.pending = signum

    def keep_going(self) -> bool:
        """False when the run must be cancelled (the caller ends its unpublished cases)."""
        if self.pending is None:
            return True
        signum, self.pending = self.pending, None
        if signum == signal.SIGTERM:
            self.reason = "terminated (SIGTERM) while publishing"
            return False
        self.reason = "interrupted (Ctrl+C) while publishing"
        if not sys.stdin.isatty():
            return False
        # The default handler is back while asking, so a second Ctrl+C answers "cancel".
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            choice = ask(self.console, "\n[bold]interrupted while publishing[/]: \\[c]ancel the run, or Enter to "
                         "go on publishing? ", {"c": "cancel"}, "go on")
        finally:
            signal.signal(signal.SIGINT, self._note)
        return choice != "cancel"
