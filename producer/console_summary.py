"""The summary printed at the end of ``run``, ``wait``, ``resume`` and ``report``.

Short column headers: the tables must stay readable in an 80-column CI log.
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from ..worker.statistics import RunStatistics
from .reports import RunSummary
from .summary import ReportSummary, judge_cost_text, number_text

FLAKY_SHOWN = 10


def print_summary(console: Console, run: RunSummary, summary: ReportSummary) -> None:
    stats = run.statistics
    table = Table(title=f"run {run.run_id} ({run.plan_name})", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("workflow", "dataset", "cases", "pass", "p50 s", "p95 s", "p99 s", "tokens", "cost"):
        table.add_column(column, justify="left" if column in ("workflow", "dataset") else "right",
                         no_wrap=column not in ("workflow", "dataset"))
    for group in summary.groups:
        table.add_row(group.workflow_id, group.dataset, *_cells(group.statistics))
    table.add_section()
    table.add_row("[bold]all", "", *_cells(stats))
    console.print(table)

    counts = ", ".join(f"{status} {n}" for status, n in stats.counts_by_status().items() if n)
    console.print(f"{counts or 'no cases'}; duration {stats.total_duration:.2f} s", highlight=False)
    for line in (ttft_text(stats), checks_text(stats)):
        if line:
            console.print(line, markup=False, highlight=False)
    load = load_text(stats)
    if load:
        console.print(load, markup=False, highlight=False)
    if summary.failures_by_class:
        console.print("failures by class: " + ", ".join(f"{kind} {n}" for kind, n in summary.failures_by_class.items()),
                      markup=False, highlight=False)
    if summary.slowest:
        console.print("slowest: " + ", ".join(f"{c.execution_id} {c.latency:.2f}s" for c in summary.slowest[:5]),
                      markup=False, highlight=False)
    flaky = summary.flaky
    if flaky:
        console.print(f"[bold]flaky[/] ({len(flaky)} of {len(summary.repeats)} repeated cases):")
        for repeats in flaky[:FLAKY_SHOWN]:
            console.print(f"  {repeats.passed}/{repeats.runs} passed  {repeats.case}", markup=False, highlight=False)
    elif summary.repeats:
        solid = sum(r.passed == r.runs for r in summary.repeats)
        console.print(f"repeats: {solid} of {len(summary.repeats)} cases passed every time, none flaky",
                      highlight=False)
    if run.stop_reason:
        console.print(f"[yellow]stop reason:[/] {run.stop_reason}", highlight=False)
    if summary.failing:
        shown = len(summary.failing)
        more = f" of {summary.failing_total}" if summary.failing_total > shown else ""
        console.print(f"[bold]not passed[/] ({shown}{more}):")
        for case in summary.failing:
            console.print(f"  {case.status:9} {case.execution_id}: {case.error_message}", markup=False,
                          highlight=False)


def _cells(s: RunStatistics) -> list[str]:
    cost = f"{s.total_cost:.4f}" + ("?" if s.cost_unknown_tasks else "")
    return [str(s.total_tasks), f"{s.success_rate:.1%}", number_text(s.latency_p50), number_text(s.latency_p95),
            number_text(s.latency_p99), str(s.total_tokens), cost]


def ttft_text(stats: RunStatistics) -> str | None:
    """Time to the first answer chunk beside the latency (streamed cases only)."""
    if stats.ttft_p50 is None:
        return None
    return f"time to first token: p50 {stats.ttft_p50:.3f} s, p95 {number_text(stats.ttft_p95)} s (streamed cases)"


def checks_text(stats: RunStatistics) -> str | None:
    """Per kind of check: passed of checked, and the mean score of graded ones; the judges' own use."""
    if not stats.checks:
        return None
    parts = []
    for name, check in stats.checks.items():
        text = f"{name} {check.passed}/{check.total} ({check.pass_rate:.1%})"
        if name in GRADED and check.mean_score is not None:
            text += f" mean {check.mean_score:.3f}"
        parts.append(text)
    line = "checks: " + ", ".join(parts)
    if stats.judge_tokens or stats.judge_cost or stats.judge_cost_unknown:
        line += f"\njudges: {stats.judge_tokens} tokens, cost {judge_cost_text(stats)} (not in the table's figures)"
    return line


# Checks whose score is a grade (not 1/0): their mean is shown.
GRADED = ("similarity", "judge")
# A local wait (dify_client._timed) shorter than this is connecting, not overload: not shown.
LOCAL_WAIT_SHOWN = 0.25


def load_text(stats: RunStatistics) -> str | None:
    """What load cost the run: Dify's answers waited out, runs stopped in Dify, and time the
    cases waited in overloaded workers (None: nothing worth a line)."""
    parts = []
    if stats.throttled_answers:
        parts.append(f"{stats.throttled_answers} throttled answers waited out (no attempt spent)")
    if stats.dify_stops:
        failed = f", {stats.dify_stop_failures} of them failed: those runs may go on in Dify" \
            if stats.dify_stop_failures else ""
        parts.append(f"{stats.dify_stops} abandoned runs stopped in Dify{failed}")
    text = "Dify: " + "; ".join(parts) if parts else None
    wait = stats.local_wait_p95
    if wait is not None and wait >= max(LOCAL_WAIT_SHOWN, 0.1 * (stats.latency_p50 or 0.0)):
        overloaded = (f"workers: p95 {wait:.3f} s waited in the worker before the request went out (not counted "
                      "as Dify's latency): they were overloaded; add workers or lower concurrency")
        text = f"{text}\n{overloaded}" if text else overloaded
    return text
