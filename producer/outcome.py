"""How a command ends: publishing that may be cancelled, the reports, and the exit code.

Exit codes: 0 every case of the plan has a result and the run passes its gate; 1 every case
has a result and the run does not pass; 2 bad input (plan, data file, arguments, unknown
run); 3 the run is incomplete or the infrastructure failed (cases without a result,
publishing interrupted, Redis unreachable, the embedded default cannot start, the run
stalled or was lost); 130 interrupted (Ctrl+C or SIGTERM): when the run was cancelled, its
reports are written first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from celery import Celery
from rich.console import Console

from ..config.manifest import RunManifest
from ..worker.store import PUBLISHING, RunInfo, RunStore
from .console_summary import print_summary
from .interrupts import PublishGuard
from .reports import FORMATS, summary_of, write_reports
from .result_stream import ResultStream
from .submission import end_unpublished, publish_run, unpublished
from .watch import Watched

EXIT_OK, EXIT_NOT_ALL_PASSED, EXIT_BAD_INPUT, EXIT_INFRA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(Exception):
    """Arguments that do not fit together (exit 2)."""


def finish_watched(console: Console, store: RunStore, watched: Watched, out_root: Path,
                   interrupted: bool = False) -> int:
    """The end of a run this process watched: reports, summary, exit code."""
    return finish_run(console, store, watched.info, out_root, stream=watched.stream,
                      interrupted=interrupted or watched.interrupted)


def publish_or_cancel(console: Console, app: Celery, store: RunStore, manifest: RunManifest) -> bool:
    """Publish a created run; Ctrl+C or SIGTERM meanwhile stops it between two chords. True
    when the run was cancelled that way (its unpublished cases then end CANCELLED)."""
    with PublishGuard(console) as guard:
        sent = publish_run(app, store, manifest, keep_going=guard.keep_going)
    if sent == manifest.batch_count:
        return False
    count = end_unpublished(store, manifest.run_id, unpublished(manifest, sent), manifest.batch_count, guard.reason)
    console.print(f"[yellow]cancelling ({guard.reason}): {count} case(s) never published end CANCELLED; "
                  "the published ones end CANCELLED as workers take them[/]", highlight=False)
    return True


def finish_run(console: Console, store: RunStore, info: RunInfo, out_root: Path, formats: Sequence[str] = FORMATS,
               stream: ResultStream | None = None, interrupted: bool = False) -> int:
    """Write the reports, print the summary, and say the exit code: never a verdict over
    fewer results than the plan has cases, never a pass for a run this process cancelled."""
    paths, summary = write_reports(store, info, out_root / info.run_id, formats, stream)
    run = summary_of(info)
    print_summary(console, run, summary)
    console.print("reports: " + ", ".join(str(p) for p in paths), highlight=False)
    if info.missing_results:
        # Never a verdict over fewer cases than the plan has.
        console.print(f"[red]incomplete:[/] {info.missing_results} of the plan's {info.total} cases have no "
                      f"result; no verdict. `dify-runner resume {info.run_id}` runs them", highlight=False)
        return EXIT_INFRA
    if interrupted:
        return EXIT_INTERRUPTED
    # The plan's gate (gates.pass_rate, default 1.0: every case) decides the exit code.
    if info.statistics is not None and info.pass_rate < 1.0:
        verdict = "passes" if run.passed else "fails"
        console.print(f"gate: pass rate {run.statistics.success_rate:.1%} {verdict} gates.pass_rate "
                      f"{info.pass_rate:.1%}", highlight=False)
    return EXIT_OK if run.passed else EXIT_NOT_ALL_PASSED


def state_text(info: RunInfo) -> str:
    """A run's state for `status`, publishing included."""
    if info.finished:
        return "finished" if not info.missing_results else f"finished, {info.missing_results} results missing"
    if info.publishing_incomplete:
        return "publishing interrupted"
    if info.publish_state == PUBLISHING:
        return f"publishing {info.published_cases}/{info.total}"
    return info.state


def incomplete_text(run_id: str, published: int, total: int) -> str:
    """What to do about a run whose publishing stopped part way."""
    return (f"published {published:,} of {total:,} cases: `dify-runner resume {run_id}` publishes the rest "
            "(and runs every case without a final result)")
