"""Reports of a finished run: ``report.json``, ``junit.xml`` and the summary table.

Results are streamed from the run store batch by batch, so writing a report of a
100k-case run does not hold every result in memory at once (JUnit aside, see below).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path

from junitparser import Error, Failure, JUnitXml, Properties, Property, Skipped, TestCase, TestSuite
from pydantic import BaseModel, ConfigDict
from rich import box
from rich.console import Console
from rich.table import Table

from ..worker.models import TestResult, TestStatus
from ..worker.statistics import BatchSummary, RunStatistics
from ..worker.store import RunInfo, RunStore

FAILING_CASES_SHOWN = 10


class RunSummary(BaseModel):
    """The header of ``report.json``."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    plan_name: str
    created_at: datetime
    finished_at: datetime | None
    stop_reason: str | None
    statistics: RunStatistics


class RunReport(BaseModel):
    """The whole ``report.json``: the run's summary and every TestResult."""

    model_config = ConfigDict(extra="forbid")

    run: RunSummary
    results: list[TestResult]


def summary_of(info: RunInfo) -> RunSummary:
    return RunSummary(
        run_id=info.run_id,
        plan_name=info.plan_name,
        created_at=info.created_at,
        finished_at=info.finished_at,
        stop_reason=info.stop_reason,
        statistics=info.statistics or RunStatistics(),
    )


def task_status_of(result: TestResult) -> str:
    """The 8-state status kept in metadata (CANCELLED and ERROR both map to ERROR)."""
    return str(result.metadata.get("task_status") or result.status.value)


def write_reports(store: RunStore, info: RunInfo, out_dir: Path) -> list[Path]:
    """Write ``report.json`` and ``junit.xml`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, junit_path = out_dir / "report.json", out_dir / "junit.xml"
    suites: dict[str, TestSuite] = {}
    with json_path.open("w", encoding="utf-8") as out:
        out.write('{"run": ' + summary_of(info).model_dump_json() + ',\n"results": [')
        for index, result in enumerate(store.iter_test_results(info.run_id, info.batch_count)):
            out.write(("," if index else "") + "\n" + result.model_dump_json())
            suite = suites.get(result.workflow_id)
            if suite is None:
                suite = suites[result.workflow_id] = TestSuite(result.workflow_id)
                suite.add_property("run_id", info.run_id)
            suite.add_testcase(_junit_case(result))
    with json_path.open("a", encoding="utf-8") as out:
        out.write("\n]}\n")
    xml = JUnitXml(info.plan_name)
    for suite in suites.values():
        xml.add_testsuite(suite)
    xml.update_statistics()
    xml.write(str(junit_path), pretty=True)
    return [json_path, junit_path]


def _junit_case(result: TestResult) -> TestCase:
    case = TestCase(result.execution_id, classname=f"{result.workflow_id}.{result.dataset}", time=result.execution_time)
    status = task_status_of(result)
    message = result.error_message or status
    if status == "cancelled":
        case.result = [Skipped(message)]
    elif result.status is TestStatus.FAILED:
        case.result = [Failure(message, type_="failed")]
    elif result.status is not TestStatus.SUCCESS:
        case.result = [Error(message, type_=status)]
    properties = Properties()
    for key in ("workflow_run_id", "attempt_count"):
        if result.metadata.get(key) is not None:
            properties.add_property(Property(key, str(result.metadata[key])))
    properties.add_property(Property("tokens", str(result.tokens_used)))
    if result.cost is not None:
        properties.add_property(Property("cost", f"{result.cost:g}"))
    case.append(properties)
    return case


def print_summary(console: Console, store: RunStore, info: RunInfo) -> None:
    """The table a person reads at the end of a run."""
    groups: dict[tuple[str, str], BatchSummary] = defaultdict(BatchSummary)
    failing: list[TestResult] = []
    for result in store.iter_test_results(info.run_id, info.batch_count):
        status = task_status_of(result)
        groups[(result.workflow_id, result.dataset or "-")].add(
            status, result.execution_time, result.tokens_used, result.cost,
            returned=status in ("succeeded", "failed"),
        )
        if result.status is not TestStatus.SUCCESS and len(failing) < FAILING_CASES_SHOWN:
            failing.append(result)

    table = Table(title=f"run {info.run_id} ({info.plan_name})", title_justify="left", box=box.SIMPLE_HEAD)
    # Short headers: the table must stay readable in an 80-column CI log.
    for column in ("workflow", "dataset", "cases", "ok", "fail", "t/o", "err", "cxl", "pass", "p50 s", "p95 s",
                   "tokens"):
        table.add_column(column, justify="left" if column in ("workflow", "dataset") else "right",
                         no_wrap=column not in ("workflow", "dataset"))
    for (workflow, dataset), summary in sorted(groups.items()):
        table.add_row(workflow, dataset, *_stat_cells(RunStatistics.from_summaries([summary])))
    stats = info.statistics or RunStatistics()
    table.add_section()
    table.add_row("[bold]all", "", *_stat_cells(stats))
    console.print(table)
    unknown = f" ({stats.cost_unknown_tasks} cases unknown)" if stats.cost_unknown_tasks else ""
    cost = f"{stats.total_cost:.6f}{unknown}"
    console.print(f"duration {stats.total_duration:.2f} s, cost {cost}, p99 {_seconds(stats.latency_p99)} s")
    if info.stop_reason:
        console.print(f"[yellow]stop reason:[/] {info.stop_reason}")
    if failing:
        console.print(f"[bold]not passed[/] (first {len(failing)}):")
        for result in failing:
            console.print(f"  {task_status_of(result):9} {result.execution_id}: {result.error_message}",
                          markup=False, highlight=False)


def _stat_cells(s: RunStatistics) -> list[str]:
    return [
        str(s.total_tasks), str(s.succeeded_tasks), str(s.failed_tasks), str(s.timeout_tasks),
        str(s.error_tasks), str(s.cancelled_tasks), f"{s.success_rate:.1%}",
        _seconds(s.latency_p50), _seconds(s.latency_p95), str(s.total_tokens),
    ]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
