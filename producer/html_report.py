"""``report.html``: one self-contained page (no network needed to open it).

The numbers, the status bar and the latency histogram (inline SVG) are rendered here,
so the page reads the same with scripts off; a few lines of script filter the case
list. The case list holds at most ``MAX_CASE_ROWS`` rows, cases that did not pass
first; every case is in report.json, results.jsonl and results.csv.
"""

from __future__ import annotations

import json
from html import escape
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

from ..worker.models import TestResult
from ..worker.statistics import RunStatistics
from .summary import HistogramBin, ReportSummary, judge_cost_text, number_text, task_status_of

if TYPE_CHECKING:
    from .reports import RunSummary

MAX_CASE_ROWS = 2000
SHOWN_CHARS = 600
STATUS_COLOURS = {"succeeded": "#1a7f37", "failed": "#cf222e", "timeout": "#9a6700", "error": "#8250df",
                  "cancelled": "#6e7781"}


class HtmlCaseList:
    """The rows of the case list, bounded: failing cases first, then passing ones."""

    def __init__(self, limit: int = MAX_CASE_ROWS) -> None:
        self.limit = limit
        self.failing: list[str] = []
        self.passing: list[str] = []
        self.total = 0

    def add(self, result: TestResult) -> None:
        self.total += 1
        status = task_status_of(result)
        rows = self.passing if status == "succeeded" else self.failing
        if len(rows) < self.limit:
            rows.append(case_row(result, status))

    def rows(self) -> list[str]:
        return (self.failing + self.passing)[: self.limit]


def case_row(result: TestResult, status: str) -> str:
    shown = escape(_short(result.error_message)) if result.error_message else ""
    outputs = escape(_short(json.dumps(result.outputs, ensure_ascii=False, indent=1))) if result.outputs else ""
    cost = "?" if result.cost is None else f"{result.cost:.6f}"
    return (
        f'<tr data-status="{status}"><td><code>{escape(result.execution_id)}</code></td>'
        f'<td class="status s-{status}">{status}</td><td class="num">{result.execution_time:.3f}</td>'
        f'<td class="num">{result.tokens_used}</td><td class="num">{cost}</td>'
        f'<td class="num">{escape(str(result.metadata.get("attempt_count", "")))}</td>'
        f"<td><pre>{escape(_short(json.dumps(result.inputs, ensure_ascii=False)))}</pre></td>"
        f"<td><pre>{outputs}</pre>{f'<pre class=s-{status}>{shown}</pre>' if shown else ''}{_turns(result)}</td>"
        f"<td>{_check_cells(result)}</td></tr>"
    )


def _turns(result: TestResult) -> str:
    """A conversation, turn by turn, folded under its last answer (``<details>``: no script)."""
    if not result.turns:
        return ""
    rows = "".join(
        f"<tr><td class=num>{t.index}</td><td>{escape(_short(t.query))}</td><td>{escape(_short(t.answer or ''))}</td>"
        f"<td class=num>{t.latency:.3f}</td><td class=num>{t.tokens_used}</td>"
        f"<td class='status s-{'succeeded' if t.passed else 'failed'}'>{'pass' if t.passed else 'fail'}</td></tr>"
        for t in result.turns)
    return (f"<details><summary>{len(result.turns)} turns</summary><table class=turns><thead><tr><th>#</th>"
            "<th>query</th><th>answer</th><th class=num>latency s</th><th class=num>tokens</th><th>checks</th></tr>"
            f"</thead><tbody>{rows}</tbody></table></details>")


def _check_cells(result: TestResult) -> str:
    """Each check: its verdict and score; a failed check's reason is written out, a passed one's
    is its tooltip."""
    parts = []
    for check in result.checks:
        verdict = "pass" if check.passed else "fail"
        score = "" if check.score is None else f" {check.score:.3f}"
        reason = escape(check.reason or "")
        label = f'<span class="check c-{verdict}" title="{reason}">{escape(check.name)} {verdict}{score}</span>'
        parts.append(label if check.passed or not reason else f"{label}<div class=s-failed>{reason}</div>")
    return "<br>".join(parts)


def mean_scores(s: RunStatistics) -> str:
    """Mean score per kind of check, graded ones (similarity, judge) first."""
    graded = [(n, c) for n, c in s.checks.items() if n in ("similarity", "judge")]
    others = [(n, c) for n, c in s.checks.items() if n not in ("similarity", "judge")]
    return " · ".join(f"{escape(n)} {c.mean_score:.3f}" for n, c in graded + others if c.mean_score is not None)


def _checks_section(stats: RunStatistics) -> str:
    if not stats.checks:
        return ""
    rows = "".join(f"<tr><td>{escape(name)}</td><td class=num>{c.total}</td><td class=num>{c.passed}</td>"
                   f"<td class=num>{c.pass_rate:.1%}</td><td class=num>{number_text(c.mean_score)}</td></tr>"
                   for name, c in stats.checks.items())
    judges = (f"<p class=muted>judges: {stats.judge_tokens:,} tokens, cost {escape(judge_cost_text(stats))} "
              "(apart from the app's figures)</p>") if stats.judge_tokens or stats.judge_cost or \
        stats.judge_cost_unknown else ""
    ttft = (f"<p class=muted>time to first token: p50 {number_text(stats.ttft_p50)} s, "
            f"p95 {number_text(stats.ttft_p95)} s</p>") if stats.ttft_p50 is not None else ""
    return ("<h2>Checks</h2><table id=checks><thead><tr><th>check</th><th class=num>cases</th>"
            "<th class=num>passed</th><th class=num>pass rate</th><th class=num>mean score</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>{judges}{ttft}")


def _short(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def write_html(path: Path, run: RunSummary, summary: ReportSummary, cases: HtmlCaseList) -> None:
    template = Template(resources.files(__package__).joinpath("templates/report.html").read_text(encoding="utf-8"))
    stats = run.statistics
    rows = cases.rows()
    shown = len(rows)
    values: dict[str, Any] = {
        "plan_name": escape(run.plan_name),
        "run_id": escape(run.run_id),
        # Never a verdict over fewer results than the plan has cases.
        "verdict": (f"incomplete: {run.missing_results} of {run.total_cases} cases have no result"
                    if run.missing_results else "passed" if run.passed else "not passed"),
        "verdict_class": "pass" if run.passed else "fail",
        "created_at": run.created_at.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "finished_at": run.finished_at.strftime("%Y-%m-%d %H:%M:%S %Z") if run.finished_at else "-",
        "duration": f"{stats.total_duration:.2f}",
        "stop_reason": f" · stop reason: {escape(run.stop_reason)}" if run.stop_reason else "",
        "cases": stats.total_tasks,
        "pass_rate": f"{stats.success_rate:.1%}",
        "gate": f"{run.pass_rate_gate:.0%}",
        "p50": number_text(stats.latency_p50),
        "p95": number_text(stats.latency_p95),
        "p99": number_text(stats.latency_p99),
        "tokens": f"{stats.total_tokens:,}",
        "cost": f"{stats.total_cost:.4f}",
        "cost_note": f" ({stats.cost_unknown_tasks} cases unknown)" if stats.cost_unknown_tasks else "",
        "status_bar": status_bar(stats),
        "status_legend": " ".join(
            f'<span class="s-{s}">■ {s} {n}</span>' for s, n in stats.counts_by_status().items()),
        "histogram": histogram_svg(summary.latency_histogram),
        "group_rows": "".join(_group_row(g.workflow_id, g.dataset, g.statistics, g.failures_by_class)
                              for g in summary.groups),
        "flaky_section": _flaky_section(summary),
        "checks_section": _checks_section(stats),
        "cases_note": (f"all {cases.total} cases" if shown == cases.total else
                       f"{shown} of {cases.total} cases (those that did not pass first); every case is in "
                       "report.json, results.jsonl and results.csv"),
        "case_rows": "\n".join(rows),
    }
    path.write_text(template.substitute(values), encoding="utf-8")


def status_bar(stats: RunStatistics, width: int = 420, height: int = 22) -> str:
    total = stats.total_tasks or 1
    x, parts = 0.0, []
    for status, n in stats.counts_by_status().items():
        if n:
            w = width * n / total
            parts.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="{height}" fill="{STATUS_COLOURS[status]}">'
                         f"<title>{status}: {n}</title></rect>")
            x += w
    return (f'<svg id="status-bar" width="{width}" height="{height}" role="img" aria-label="status breakdown">'
            + "".join(parts) + "</svg>")


def histogram_svg(bins: list[HistogramBin], width: int = 420, height: int = 140) -> str:
    if not bins:
        return '<p class="muted">no case returned</p>'
    top = max(b.count for b in bins) or 1
    bar_width = width / len(bins)
    plot = height - 18
    bars = []
    for i, b in enumerate(bins):
        h = plot * b.count / top
        bars.append(f'<rect x="{i * bar_width + 1:.1f}" y="{plot - h:.1f}" width="{bar_width - 2:.1f}" '
                    f'height="{h:.1f}" fill="#0969da"><title>{b.low:.3f}-{b.high:.3f} s: {b.count}</title></rect>')
    labels = (f'<text x="0" y="{height - 4}">{bins[0].low:.3f} s</text>'
              f'<text x="{width}" y="{height - 4}" text-anchor="end">{bins[-1].high:.3f} s</text>'
              f'<text x="{width}" y="10" text-anchor="end">max {top} per bin</text>')
    return (f'<svg id="latency-histogram" width="{width}" height="{height}" role="img" '
            f'aria-label="latency histogram">{"".join(bars)}{labels}</svg>')


def _group_row(workflow: str, dataset: str, s: RunStatistics, failures: dict[str, int]) -> str:
    classes = ", ".join(f"{escape(kind)} {n}" for kind, n in sorted(failures.items(), key=lambda kv: -kv[1]))
    return (f"<tr><td>{escape(workflow)}</td><td>{escape(dataset)}</td><td class=num>{s.total_tasks}</td>"
            f"<td class=num>{s.success_rate:.1%}</td><td class=num>{number_text(s.latency_p50)}</td>"
            f"<td class=num>{number_text(s.latency_p95)}</td><td class=num>{number_text(s.latency_p99)}</td>"
            f"<td class=num>{s.total_tokens:,}</td><td class=num>{s.total_cost:.4f}</td><td>{mean_scores(s)}</td>"
            f"<td>{classes}</td></tr>")


def _flaky_section(summary: ReportSummary) -> str:
    """Repeated cases that did not pass every run (flaky ones first); the rest are counted."""
    if not summary.repeats:
        return ""
    shaky = [r for r in summary.repeats if r.passed < r.runs]
    rows = "".join(f"<tr><td><code>{escape(r.case)}</code></td><td class=num>{r.passed}/{r.runs}</td></tr>"
                   for r in shaky[:200])
    table = (f"<table id=repeats><thead><tr><th>case</th><th class=num>passed</th></tr></thead>"
             f"<tbody>{rows}</tbody></table>") if shaky else ""
    return (f"<h2>Repeats</h2><p class=muted>{len(summary.flaky)} flaky of {len(summary.repeats)} repeated cases "
            f"(passed some runs, not all); {len(summary.repeats) - len(shaky)} passed every run</p>{table}")
