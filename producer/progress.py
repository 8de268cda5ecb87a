"""Live progress while a run is waited on: a rich bar on a terminal, plain lines in CI logs.

Counts come from the run's progress hash (updated as each case ends); latency, tokens and
cost come from the batches finished so far (see result_stream), so they lag by a batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..worker.statistics import RunStatistics
from ..worker.store import RunInfo

STATUS_ORDER = ("succeeded", "failed", "timeout", "error", "cancelled")
STATUS_STYLE = {"succeeded": "green", "failed": "red", "timeout": "yellow", "error": "magenta", "cancelled": "dim"}
STATS_EVERY = 1.0  # seconds between recomputing percentiles
WORKERS_EVERY = 10.0  # seconds between asking the fleet who is alive


def cases_done(progress: dict[str, int], total: int) -> int:
    """Cases with a final status, capped at ``total``: the live counts can run over when a
    worker dies between recording a case's end and acknowledging its message (the case is
    redelivered and ends again; its result is stored once, its count is not)."""
    return min(total, sum(progress.get(status, 0) for status in STATUS_ORDER))


def retries_waiting(progress: dict[str, int]) -> int:
    """Cases with a retry waiting: the run store's set of them, so each counts once."""
    return progress.get("retries_waiting", 0)


def counts_text(progress: dict[str, int], markup: bool) -> str:
    parts = []
    for status in STATUS_ORDER:
        n = progress.get(status, 0)
        if n:
            parts.append(f"[{STATUS_STYLE[status]}]{status} {n}[/]" if markup else f"{status}={n}")
    waiting = retries_waiting(progress)
    if waiting:
        parts.append(f"retries waiting {waiting}" if markup else f"retries_waiting={waiting}")
    return "  ".join(parts)


def figures_text(done: int, total: int, elapsed: float, stats: RunStatistics | None, workers: int | None,
                 done_before: int = 0) -> str:
    """cases/s, ETA, latency, tokens, cost and workers: the figures after the counts.
    ``done_before``: cases that had ended before ``elapsed`` began (kept by a resume)."""
    rate = max(0, done - done_before) / elapsed if elapsed > 0 else 0.0
    parts = [f"{rate:.1f}/s"]
    if 0 < done < total and rate > 0:
        parts.append(f"eta {_duration((total - done) / rate)}")
    if stats is not None and stats.latency_p50 is not None:
        parts.append(f"p50 {stats.latency_p50:.2f}s p95 {stats.latency_p95:.2f}s")
    if stats is not None and stats.total_tasks:
        parts.append(f"tokens {stats.total_tokens}")
        parts.append(f"cost {stats.total_cost:.4f}" + ("?" if stats.cost_unknown_tasks else ""))
    if workers is not None:
        parts.append(f"workers {workers}")
    return "  ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class ProgressReporter:
    """Draws a run's progress on ``console``; called on every poll of the run."""

    def __init__(self, console: Console, enabled: bool = True, line_interval: float = 5.0,
                 workers_alive: Callable[[], int | None] | None = None) -> None:
        self.console = console
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self.line_interval = line_interval
        self.workers_alive = workers_alive
        self._last_line = 0.0
        self._last_done = -1
        self._progress: Progress | None = None
        self._task: Any = None
        self._stats: RunStatistics | None = None
        self._stats_at = 0.0
        self._workers: int | None = None
        self._workers_at = float("-inf")

    def __call__(self, info: RunInfo, progress: dict[str, int],
                 statistics: Callable[[], RunStatistics] | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        done = cases_done(progress, info.total)
        if statistics is not None and (now - self._stats_at >= STATS_EVERY or info.finished):
            self._stats, self._stats_at = statistics(), now
        if self.workers_alive is not None and now - self._workers_at >= WORKERS_EVERY:
            self._workers, self._workers_at = self.workers_alive(), now
        # A resumed run is timed from its resume, and counts only what ended since.
        elapsed = (datetime.now(timezone.utc) - (info.resumed_at or info.created_at)).total_seconds()
        figures = figures_text(done, info.total, elapsed, self._stats, self._workers, info.resumed_done)
        if self.live:
            self._draw(info, done, counts_text(progress, markup=True), figures)
            return
        if done != self._last_done and (now - self._last_line >= self.line_interval or done == info.total):
            line = f"progress {info.run_id}: {done}/{info.total} {counts_text(progress, markup=False)}  {figures}"
            self.console.print(line.rstrip(), markup=False, highlight=False)
            self._last_line, self._last_done = now, done

    def _draw(self, info: RunInfo, done: int, counts: str, figures: str) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("[dim]{task.fields[figures]}"),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(info.run_id, total=info.total, counts="", figures="")
        self._progress.update(self._task, completed=done, counts=counts, figures=figures)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
