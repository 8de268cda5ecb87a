"""Reports: every format from one run, results.jsonl streamed batch by batch, compare.

The runs here go through the real pipeline (embedded default: a private redis-server and
an in-process Celery worker); the HTML report is opened in Chromium in test_html_report.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

from dify_runner.producer.reports import RunReport
from dify_runner.producer.result_stream import ResultStream
from dify_runner.worker.models import TaskResult, TaskStatus, TestResult
from dify_runner.worker.statistics import BatchSummary
from dify_runner.worker.store import RunStore
from junitparser import Error, Failure, JUnitXml, Properties, Skipped

from .conftest import cli, stub_plan, write_plan

MIXED_CASES = [
    {"id": "ok"},
    {"id": "bad"},
    {"id": "slow"},
    {"id": "broken"},
    {"id": "flaky"},
    {"id": "judged", "expect": {"contains": "no such text"}},
]


def mixed_plan() -> dict:
    """6 cases x 3 repeats, one attempt each: passes, failures of every class, one flaky case."""
    return stub_plan(
        MIXED_CASES,
        stub={"task_behaviors": {"bad": "failure", "slow": "timeout", "broken": "error",
                                 "wf/ds/flaky#2": "failure"}},
        execution={"batch_size": 4, "retry_policy": {"max_attempts": 1}},
        repeat=3,
    )


def run_plan(tmp_path: Path, plan: dict, name: str = "plan.yaml") -> tuple[Path, str]:
    done = cli("run", str(write_plan(tmp_path, plan, name)), "--out", str(tmp_path / "runs"), "--no-progress",
               cwd=tmp_path)
    run_dir = max((tmp_path / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    return run_dir, done.stdout + done.stderr


def test_every_format_from_one_run(tmp_path: Path) -> None:
    run_dir, output = run_plan(tmp_path, mixed_plan())

    report = RunReport.model_validate_json((run_dir / "report.json").read_text())
    assert len(report.results) == 18 and report.run.statistics.total_tasks == 18
    assert report.run.passed is False
    summary = report.summary
    assert summary is not None
    assert summary.failures_by_class["timeout"] == 3 and summary.failures_by_class["expectation"] == 3
    assert sum(summary.failures_by_class.values()) == summary.failing_total == 18 - 3 - 2
    repeats = {r.case: (r.passed, r.runs) for r in summary.repeats}
    assert repeats["wf/ds/flaky"] == (2, 3) and repeats["wf/ds/ok"] == (3, 3) and repeats["wf/ds/bad"] == (0, 3)
    assert [r.case for r in summary.flaky] == ["wf/ds/flaky"]
    assert sum(b.count for b in summary.latency_histogram) == 18 - 3 - 3  # cases that returned an answer

    # The console summary: groups, failure classes, flakiness, the failing cases and why.
    assert "failures by class:" in output and "expectation 3" in output
    assert "flaky (1 of 6 repeated cases)" in output and "2/3 passed  wf/ds/flaky" in output
    assert "not passed (13):" in output and "expectation failed: output 'text' should contain" in output

    # results.jsonl: streamed while the run went, one TestResult per case, same as report.json.
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    streamed = [TestResult.model_validate_json(line) for line in lines]
    assert sorted(r.execution_id for r in streamed) == sorted(r.execution_id for r in report.results)

    with (run_dir / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 18
    flaky_2 = next(r for r in rows if r["execution_id"] == "wf/ds/flaky#2")
    assert flaky_2["task_status"] == "failed" and flaky_2["case_id"] == "flaky" and json.loads(flaky_2["inputs"]) == {}

    xml = JUnitXml.fromfile(str(run_dir / "junit.xml"))
    [suite] = list(xml)
    assert suite.name == "wf" and suite.tests == 18
    kinds: dict[str, int] = {}
    for case in suite:
        assert case.classname == "wf.ds" and case.time >= 0
        for result in case.result:
            kinds[type(result).__name__] = kinds.get(type(result).__name__, 0) + 1
        properties = {p.name: p.value for props in case.iterchildren(Properties) for p in props}
        assert properties["run_id"] == report.run.run_id and "tokens" in properties and "cost" in properties
    assert kinds == {Failure.__name__: 3 + 1 + 3, Error.__name__: 6}
    assert suite.failures == 7 and suite.errors == 6 and Skipped.__name__ not in kinds

    html = (run_dir / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    assert 'id="kpi-pass-rate">27.8%<' in html and "wf/ds/flaky#2" in html


def test_results_jsonl_follows_batches_as_they_finish(tmp_path: Path, store: RunStore) -> None:
    run_id = "stream-test"
    store.create_run(run_id, "p", total=4, batch_count=2, created_at=datetime.now(timezone.utc))
    stream = ResultStream(store, run_id, tmp_path)

    def save(batch: int, ids: list[str]) -> None:
        now = datetime.now(timezone.utc)
        tasks = [TaskResult(task_id=i, workflow_id="wf", run_id=run_id, task_status=TaskStatus.SUCCEEDED,
                            created_at=now) for i in ids]
        tests = [TestResult(workflow_id="wf", execution_id=i, timestamp=now, status="success", execution_time=0.5)
                 for i in ids]
        summary = BatchSummary()
        for _ in ids:
            summary.add("succeeded", 0.5, 10, 0.001)
        store.save_batch(run_id, batch, tasks, tests, summary)

    assert stream.catch_up(store.get_run(run_id)) == 0 and stream.path.read_text() == ""
    save(1, ["c", "d"])  # batches finish in any order
    assert stream.catch_up(store.get_run(run_id)) == 1
    assert [json.loads(line)["execution_id"] for line in stream.path.read_text().splitlines()] == ["c", "d"]
    assert stream.catch_up(store.get_run(run_id)) == 0  # nothing new: nothing written twice
    save(0, ["a", "b"])
    assert stream.catch_up(store.get_run(run_id)) == 1
    assert [json.loads(line)["execution_id"] for line in stream.path.read_text().splitlines()] == ["c", "d", "a", "b"]
    stats = stream.statistics()
    assert stats.total_tasks == 4 and stats.total_tokens == 40 and stats.latency_p50 == 0.5


def test_compare_gates_on_regressions(tmp_path: Path) -> None:
    cases = [{"id": f"c{i}"} for i in range(6)]
    before, _ = run_plan(tmp_path, stub_plan(cases, stub={"task_behaviors": {"c5": "failure"}},
                                             execution={"retry_policy": {"max_attempts": 1}}), "a.yaml")
    after, _ = run_plan(tmp_path, stub_plan(cases, stub={"task_behaviors": {"c1": "failure", "c2": "timeout"}},
                                            execution={"retry_policy": {"max_attempts": 1}}), "b.yaml")
    runs = str(tmp_path / "runs")

    worse = cli("compare", before.name, after.name, "--runs-dir", runs)
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "2 newly failing, 1 fixed" in worse.stdout
    assert "succeeded → failed  wf/ds/c1" in worse.stdout and "succeeded → timeout  wf/ds/c2" in worse.stdout
    assert "regression: 2 case(s) newly failing (allowed: 0); pass rate fell from 83.3% to 66.7%" in worse.stdout

    lenient = cli("compare", str(before / "report.json"), str(after), "--max-new-failures", "2",
                  "--max-pass-rate-drop", "0.2")
    assert lenient.returncode == 0 and "no regression" in lenient.stdout

    better = cli("compare", after.name, before.name, "--runs-dir", runs)  # c1, c2 fixed; c5 newly failing
    assert better.returncode == 1 and "1 newly failing, 2 fixed" in better.stdout
    assert "pass rate" not in better.stdout.split("regression:")[1]  # it rose

    missing = cli("compare", "no-such-run", after.name, "--runs-dir", runs)
    assert missing.returncode == 2 and "no-such-run" in missing.stderr and "Traceback" not in missing.stderr
    negative = cli("compare", before.name, after.name, "--runs-dir", runs, "--max-new-failures", "-1")
    assert negative.returncode == 2 and "--max-new-failures -1: Input should be greater than or equal to 0" \
        in negative.stderr
    (tmp_path / "garbage.json").write_text('{"run": 1}')
    garbage = cli("compare", str(tmp_path / "garbage.json"), after.name, "--runs-dir", runs)
    assert garbage.returncode == 2 and "not a dify-runner report.json" in garbage.stderr


def test_failure_classes() -> None:
    from dify_runner.producer.summary import failure_class

    def klass(status: str, message: str | None) -> str | None:
        test_status = {"succeeded": "success", "cancelled": "error"}.get(status, status)
        return failure_class(TestResult(workflow_id="wf", execution_id="x", timestamp=datetime.now(timezone.utc),
                                        status=test_status, error_message=message,
                                        metadata={"task_status": status}))

    assert klass("succeeded", None) is None
    assert klass("failed", "HTTP 401 unauthorized: Access token is invalid") == "HTTP 401 unauthorized"
    assert klass("error", "DifyServerError: HTTP 502: Bad Gateway") == "HTTP 502"
    assert klass("error", "ConnectError: [Errno 111] Connection refused") == "ConnectError"
    assert klass("failed", "workflow failed: LLM returned an error") == "workflow failed"
    assert klass("failed", "expectation failed: output 'a' should contain 'b'") == "expectation"
    assert klass("timeout", "no complete answer within timeout_per_task (3 s)") == "timeout"
    assert klass("cancelled", "run cancelled") == "cancelled"
    assert klass("error", "ConfigurationError: environment variable K (the API key of workflow 'w') is not set in "
                          "this worker") == "API key not set"


def test_progress_lines_for_ci_logs() -> None:
    import io

    from dify_runner.producer.progress import ProgressReporter
    from dify_runner.worker.statistics import RunStatistics
    from dify_runner.worker.store import RunInfo
    from rich.console import Console

    out = io.StringIO()
    reporter = ProgressReporter(Console(file=out, force_terminal=False, width=200), workers_alive=lambda: 3)
    created = datetime.now(timezone.utc).replace(microsecond=0)
    info = RunInfo(run_id="r1", plan_name="p", total=100, batch_count=10, created_at=created)
    stats = RunStatistics(total_tasks=40, total_tokens=4000, total_cost=0.25, cost_unknown_tasks=2,
                          latency_p50=0.5, latency_p95=1.25)
    reporter(info, {"succeeded": 38, "failed": 2, "retries": 5, "retries_waiting": 2}, lambda: stats)
    line = out.getvalue().strip()
    assert line.startswith("progress r1: 40/100 succeeded=38  failed=2  retries_waiting=2  ")
    assert "/s  eta " in line and "p50 0.50s p95 1.25s  tokens 4000  cost 0.2500?  workers 3" in line


def test_time_waited_in_overloaded_workers_is_its_own_figure_and_line() -> None:
    """Latency is Dify's (from the request written); the time before it is local_wait, and the
    summary names the workers when it is large, so a slow run is not blamed on Dify."""
    from dify_runner.producer.console_summary import load_text
    from dify_runner.worker.statistics import BatchSummary, RunStatistics

    calm, busy = BatchSummary(), BatchSummary()
    for i in range(100):
        calm.add("succeeded", 5.0, 0, None, {"local_wait": 0.002})
        busy.add("succeeded", 5.0, 0, None, {"local_wait": 0.002 if i < 90 else 2.0})
    busy.add("timeout", 30.0, 0, None, {"local_wait": 9.0})  # not answered: not counted
    quiet = RunStatistics.from_summaries([calm])
    loaded = RunStatistics.from_summaries([busy])
    assert quiet.latency_p95 == loaded.latency_p95 == 5.0
    assert quiet.local_wait_p95 == 0.002 and loaded.local_wait_p95 == 2.0
    assert load_text(quiet) is None
    text = load_text(loaded)
    assert text is not None and text.startswith("workers: p95 2.000 s waited in the worker") and "overloaded" in text
