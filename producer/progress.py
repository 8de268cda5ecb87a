"""Live progress while a run is waited on: a rich bar on a terminal, plain lines in CI logs."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..worker.store import RunInfo

STATUS_ORDER = ("succeeded", "failed", "timeout", "error", "cancelled")
STATUS_STYLE = {"succeeded": "green", "failed": "red", "timeout": "yellow", "error": "magenta", "cancelled": "dim"}


def counts_text(progress: dict[str, int], markup: bool) -> str:
    parts = []
    for status in STATUS_ORDER:
        n = progress.get(status, 0)
        if n:
            parts.append(f"[{STATUS_STYLE[status]}]{status} {n}[/]" if markup else f"{status}={n}")
    if progress.get("retries"):
        parts.append(f"retries {progress['retries']}" if markup else f"retries={progress['retries']}")
    return "  ".join(parts)


class ProgressReporter:
    """A callback for ``wait_for_run`` that draws progress on ``console``."""

    def __init__(self, console: Console, enabled: bool = True, line_interval: float = 5.0) -> None:
        self.console = console
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self.line_interval = line_interval
        self._last_line = 0.0
        self._last_done = -1
        self._progress: Progress | None = None
        self._task: Any = None

    def __call__(self, info: RunInfo, progress: dict[str, int]) -> None:
        if not self.enabled:
            return
        done = min(info.total, sum(progress.get(s, 0) for s in STATUS_ORDER))
        if self.live:
            if self._progress is None:
                self._progress = Progress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[counts]}"),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    console=self.console,
                    transient=False,
                )
                self._progress.start()
                self._task = self._progress.add_task(info.run_id, total=info.total, counts="")
            self._progress.update(self._task, completed=done, counts=counts_text(progress, markup=True))
            return
        now = time.monotonic()
        if done != self._last_done and (now - self._last_line >= self.line_interval or done == info.total):
            line = f"progress {info.run_id}: {done}/{info.total} {counts_text(progress, markup=False)}"
            self.console.print(line.rstrip(),
                               markup=False, highlight=False)
            self._last_line, self._last_done = now, done

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
