"""The reports of a finished run, in ``runs/<run_id>/``.

    report.json    {"run": RunSummary, "results": [TestResult...], "summary": ReportSummary}
    results.jsonl  one TestResult per line, appended while the run goes (see result_stream)
    results.csv    one row per case, for spreadsheets
    junit.xml      for CI test tabs (see junit_report)
    report.html    one self-contained page (see html_report)

Everything is written in one pass over the run store, batch by batch, so only one batch
of results is held at a time (JUnit and the HTML case list aside, see their modules).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel, ConfigDict

from ..worker.models import TestResult, TurnResult
from ..worker.statistics import RunStatistics
from ..worker.store import RunInfo, RunStore
from .html_report import HtmlCaseList, write_html
from .junit_report import JUnitWriter
from .result_stream import RESULTS_FILE, ResultStream
from .summary import ReportSummary, SummaryBuilder, task_status_of

__all__ = ["FORMATS", "RunReport", "RunSummary", "summary_of", "write_reports"]

Format = Literal["json", "jsonl", "csv", "junit", "html"]
FORMATS: tuple[Format, ...] = ("json", "jsonl", "csv", "junit", "html")
FILE_NAMES: dict[str, str] = {"json": "report.json", "jsonl": RESULTS_FILE, "csv": "results.csv",
                              "junit": "junit.xml", "html": "report.html"}
CSV_COLUMNS = ("execution_id", "workflow_id", "dataset", "case_id", "status", "task_status", "execution_time",
               "tokens_used", "cost", "attempt_count", "workflow_run_id", "error_message", "inputs", "outputs",
               "conversation_id", "turns")


class RunSummary(BaseModel):
    """The ``run`` part of ``report.json``."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    plan_name: str
    created_at: datetime
    finished_at: datetime | None
    stop_reason: str | None
    statistics: RunStatistics
    # The plan's gate and whether the run met it (what decided the exit code).
    pass_rate_gate: float = 1.0
    passed: bool = False
    # The plan's case count, and how many of its cases have no result (a run that lost
    # results never passes: its verdict would rest on fewer cases than the plan has).
    total_cases: int | None = None
    missing_results: int = 0


class RunReport(BaseModel):
    """The whole ``report.json`` (as ``compare`` reads it)."""

    model_config = ConfigDict(extra="forbid")

    run: RunSummary
    results: list[TestResult]
    summary: ReportSummary | None = None


def run_passed(info: RunInfo) -> bool:
    stats = info.statistics
    return stats is not None and stats.total_tasks > 0 and info.missing_results == 0 and \
        stats.success_rate >= info.pass_rate


def summary_of(info: RunInfo) -> RunSummary:
    return RunSummary(
        run_id=info.run_id,
        plan_name=info.plan_name,
        created_at=info.created_at,
        finished_at=info.finished_at,
        stop_reason=info.stop_reason,
        statistics=info.statistics or RunStatistics(),
        pass_rate_gate=info.pass_rate,
        passed=run_passed(info),
        total_cases=info.total,
        missing_results=info.missing_results,
    )


def write_reports(store: RunStore, info: RunInfo, out_dir: Path, formats: Iterable[str] = FORMATS,
                  stream: ResultStream | None = None) -> tuple[list[Path], ReportSummary]:
    """Write the reports in ``formats`` into ``out_dir``; returns their paths and the summary.

    ``stream`` is the run's live results.jsonl, if one was followed while waiting: it is
    completed rather than written again.
    """
    wanted = set(formats)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "jsonl" in wanted:
        if stream is not None and stream.path.parent == out_dir:
            stream.catch_up(info)
        else:
            own = ResultStream(store, info.run_id, out_dir)
            own.catch_up(info)
            own.close()
    run = summary_of(info)
    builder = SummaryBuilder()
    junit = JUnitWriter(info.run_id, info.plan_name) if "junit" in wanted else None
    cases = HtmlCaseList() if "html" in wanted else None
    json_out = (out_dir / FILE_NAMES["json"]).open("w", encoding="utf-8") if "json" in wanted else None
    csv_file = (out_dir / FILE_NAMES["csv"]).open("w", encoding="utf-8", newline="") if "csv" in wanted else None
    check_names = sorted((info.statistics or RunStatistics()).checks)
    try:
        csv_out = _csv_writer(csv_file, check_names) if csv_file is not None else None
        if json_out is not None:
            json_out.write('{"run": ' + run.model_dump_json() + ',\n"results": [')
        for index, result in enumerate(store.iter_test_results(info.run_id, info.batch_count)):
            builder.add(result)
            if json_out is not None:
                json_out.write(("," if index else "") + "\n" + result.model_dump_json())
            if csv_out is not None:
                csv_out.writerow(csv_row(result, check_names))
            if junit is not None:
                junit.add(result)
            if cases is not None:
                cases.add(result)
        summary = builder.build()
        if json_out is not None:
            json_out.write('\n],\n"summary": ' + summary.model_dump_json() + "}\n")
    finally:
        for handle in (json_out, csv_file):
            if handle is not None:
                handle.close()
    if junit is not None:
        junit.write(out_dir / FILE_NAMES["junit"], info.missing_results)
    if cases is not None:
        write_html(out_dir / FILE_NAMES["html"], run, summary, cases)
    return [out_dir / FILE_NAMES[f] for f in FORMATS if f in wanted], summary


def _csv_writer(handle: TextIO, check_names: list[str]) -> Any:
    writer = csv.writer(handle)
    writer.writerow(CSV_COLUMNS + tuple(f"{kind}_{name}" for name in check_names for kind in ("check", "score")))
    return writer


def csv_row(result: TestResult, check_names: Sequence[str] = ()) -> list[Any]:
    """A case's CSV row; per kind of check in the run: pass/fail (empty when not checked) and score."""
    meta = result.metadata
    per_check: list[Any] = []
    for name in check_names:
        # A conversation may run a kind of check on several turns: it passes when all did, its
        # score is the lowest.
        same = [c for c in result.checks if c.name == name]
        scores = [c.score for c in same if c.score is not None]
        per_check += ["", ""] if not same else \
            ["pass" if all(c.passed for c in same) else "fail", f"{min(scores):.4f}" if scores else ""]
    return [
        result.execution_id, result.workflow_id, result.dataset or "", meta.get("case_id", ""),
        result.status.value, task_status_of(result), f"{result.execution_time:.6f}", result.tokens_used,
        "" if result.cost is None else f"{result.cost:g}", meta.get("attempt_count", ""),
        meta.get("workflow_run_id", ""), result.error_message or "",
        json.dumps(result.inputs, ensure_ascii=False), json.dumps(result.outputs, ensure_ascii=False),
        meta.get("conversation_id", ""), json.dumps([_turn_figures(t) for t in result.turns], ensure_ascii=False)
        if result.turns else "",
        *per_check,
    ]


def _turn_figures(turn: TurnResult) -> dict[str, Any]:
    return {"turn": turn.index, "query": turn.query, "answer": turn.answer, "latency": turn.latency,
            "tokens": turn.tokens_used, "cost": turn.cost, "passed": turn.passed}
