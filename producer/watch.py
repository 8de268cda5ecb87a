"""Watching a run from the command line: live progress, results.jsonl as batches finish,
and what Ctrl+C means."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..worker.store import RunInfo, RunStore
from .interrupts import Terminated, ask
from .progress import ProgressReporter
from .result_stream import ResultStream
from .waiting import wait_for_run


@dataclass
class Watched:
    """A watched run's end: its final state, its streamed results, and whether this
    process cancelled it on an interrupt (the exit code is then 130)."""

    info: RunInfo
    stream: ResultStream
    interrupted: bool = False


def ask_on_interrupt(console: Console, can_detach: bool, terminated: bool = False) -> str:
    """What Ctrl+C means: ask on a terminal; cancel when nobody can answer (CI) or on SIGTERM."""
    if terminated or not sys.stdin.isatty():
        return "cancel"
    options = "\\[c]ancel the run, \\[d]etach (it goes on), or Enter to keep waiting" if can_detach else \
        "\\[c]ancel the run, or Enter to keep waiting"
    choices = {"c": "cancel", **({"d": "detach"} if can_detach else {})}
    return ask(console, f"\n[bold]interrupted[/]: {options}? ", choices, "wait")


def watch_run(console: Console, store: RunStore, run_id: str, out_dir: Path, show_progress: bool,
              can_detach: bool = True, stall_after: float | None = None,
              workers_alive: Callable[[], int | None] | None = None) -> Watched:
    """Wait for ``run_id`` with progress, streaming its results to ``out_dir/results.jsonl``."""
    stream = ResultStream(store, run_id, out_dir)
    reporter = ProgressReporter(console, enabled=show_progress, workers_alive=workers_alive)
    interrupted = False

    def on_progress(info: RunInfo, progress: dict[str, int]) -> None:
        stream.catch_up(info)
        reporter(info, progress, stream.statistics)

    try:
        while True:
            try:
                info = wait_for_run(store, run_id, on_progress, stall_after=stall_after)
                return Watched(info, stream, interrupted)
            except KeyboardInterrupt as exc:
                reporter.close()
                choice = ask_on_interrupt(console, can_detach, isinstance(exc, Terminated))
                if choice == "cancel":
                    reason = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl+C)"
                    store.cancel(run_id, reason)
                    interrupted = True
                    console.print("[yellow]cancelling: unfinished cases end CANCELLED; reports follow[/]")
                elif choice == "detach":
                    console.print(f"run {run_id} goes on; `dify-runner wait {run_id}` picks it up", highlight=False)
                    raise
    finally:
        reporter.close()
        stream.close()
