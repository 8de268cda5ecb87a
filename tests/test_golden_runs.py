"""Golden datasets end to end: every row checked against its own value, similarity and judge
scores in every report, a judge that cannot be reached, score gates in compare, and the same
checks on a fleet worker process. Real redis-server, real workers, the real mock Dify server."""

from __future__ import annotations

import csv
import io
import json
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from .conftest import Fleet, MockDifyProcess, cli, write_plan

RUBRIC = "The answer must say what the expected answer says."


def golden_csv(path: Path, count: int, wrong: set[int]) -> None:
    """Rows the mock answers ``mock answer: question N``; the rows in ``wrong`` expect otherwise."""
    lines = ["id,query,expected"]
    for n in range(count):
        lines.append(f"r{n:03d},question {n},mock answer: {'other' if n in wrong else 'question'} {n}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def only_run(runs: Path) -> Path:
    [run_dir] = list(runs.iterdir())
    return run_dir


def test_a_500_row_golden_csv_checks_every_row_against_its_own_value(tmp_path: Path) -> None:
    wrong = {7, 123, 256, 400, 499}
    golden_csv(tmp_path / "golden.csv", 500, wrong)
    plan = write_plan(tmp_path, {
        "name": "golden", "workflows": [{"id": "app", "base_url": "mock"}],
        "datasets": [{"name": "golden", "file": "golden.csv", "id_column": "id", "expect_columns": ["expected"],
                      "expect": {"equals": "{{ expected }}"}}],
        "execution": {"concurrency": 50, "batch_size": 50}})
    done = cli("run", str(plan), "--out", str(tmp_path / "runs"), "--no-progress", timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    run_dir = only_run(tmp_path / "runs")
    report = json.loads((run_dir / "report.json").read_text())
    results = {r["metadata"]["case_id"]: r for r in report["results"]}
    assert len(results) == 500
    failed = {case for case, r in results.items() if r["status"] != "success"}
    assert failed == {f"r{n:03d}" for n in wrong}
    assert report["run"]["statistics"]["checks"]["equals"] == {"total": 500, "passed": 495, "pass_rate": 0.99,
                                                               "mean_score": 0.99}
    # The expected column only feeds the check: Dify never saw it.
    assert all(set(r["inputs"]) == {"query"} for r in results.values())
    r007 = results["r007"]
    assert r007["checks"] == [{"name": "equals", "passed": False, "score": 0.0, "reason":
                               "output 'answer' should equal 'mock answer: other 7', got 'mock answer: question 7'",
                               "tokens": 0, "cost": None, "turn": None}]
    rows = list(csv.DictReader(io.StringIO((run_dir / "results.csv").read_text())))
    assert len(rows) == 500 and {(r["check_equals"], r["score_equals"]) for r in rows} == {("pass", "1.0000"),
                                                                                          ("fail", "0.0000")}
    assert "checks: equals 495/500 (99.0%)" in done.stdout


def test_similarity_and_judges_give_scores_in_every_report(tmp_path: Path) -> None:
    golden_csv(tmp_path / "golden.csv", 6, wrong={2})
    plan = write_plan(tmp_path, {
        "name": "graded",
        "workflows": [{"id": "app", "base_url": "mock"}, {"id": "grader", "base_url": "mock", "role": "judge"}],
        "judges": [{"id": "gpt", "base_url": "mock", "model": "judge-1", "price_per_million_input": 2.0,
                    "price_per_million_output": 8.0}],
        "datasets": [
            {"name": "golden", "file": "golden.csv", "id_column": "id", "expect_columns": ["expected"],
             "expect": {"similarity": {"expected": "{{ expected }}", "threshold": 0.5},
                        "judge": {"by": "grader", "rubric": RUBRIC, "expected": "{{ expected }}", "pass_score": 0.9}}},
            {"name": "open", "cases": [{"id": "hello", "inputs": {"query": "hello"}, "expect": {
                "judge": {"by": "gpt", "rubric": RUBRIC, "expected": "mock answer hello"}}}]}],
        "execution": {"concurrency": 4}})
    done = cli("run", str(plan), "--out", str(tmp_path / "runs"), "--no-progress")
    assert done.returncode == 1, done.stdout + done.stderr
    run_dir = only_run(tmp_path / "runs")
    report = json.loads((run_dir / "report.json").read_text())
    by_case = {r["metadata"]["case_id"]: r for r in report["results"]}
    checks = {case: {c["name"]: c for c in r["checks"]} for case, r in by_case.items()}
    # The mock judge grades by the expected words found: 3 of 4 for the row that expects "other 2".
    assert checks["r002"]["judge"]["score"] == 0.75 and not checks["r002"]["judge"]["passed"]
    assert checks["r002"]["judge"]["reason"] == "judge grader: 0.75 < 0.9: mock judge: 3 of 4 expected words in " \
                                                "the answer"
    assert by_case["r002"]["status"] == "failed"
    assert all(checks[f"r00{n}"]["judge"]["score"] == 1.0 for n in (0, 1, 3, 4, 5))
    assert all(0.5 <= checks[f"r00{n}"]["similarity"]["score"] <= 1.0 for n in range(6))
    hello = checks["hello"]["judge"]
    assert hello["passed"] and hello["tokens"] > 0 and hello["cost"] > 0
    stats = report["run"]["statistics"]
    assert stats["checks"]["judge"]["total"] == 7 and stats["checks"]["similarity"]["total"] == 6
    # The judges' own use is counted apart from the app's.
    judge_tokens = sum(c["judge"]["tokens"] for c in checks.values())
    assert stats["judge_tokens"] == judge_tokens > 0 and stats["total_tokens"] == 7 * 120
    assert stats["judge_cost"] > 0
    # results.jsonl: the same checks per line.
    lines = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert {line["execution_id"]: line["checks"] for line in lines} == \
        {r["execution_id"]: r["checks"] for r in report["results"]}
    # results.csv: a column per check.
    rows = {r["case_id"]: r for r in csv.DictReader(io.StringIO((run_dir / "results.csv").read_text()))}
    assert rows["r002"]["check_judge"] == "fail" and rows["r002"]["score_judge"] == "0.7500"
    assert rows["hello"]["check_similarity"] == "" and rows["r000"]["check_similarity"] == "pass"
    # JUnit: the failing check's reason is the failure message.
    suite = ET.parse(run_dir / "junit.xml").getroot()
    failure = next(case for case in suite.iter("testcase") if case.get("name") == "app/golden/r002").find("failure")
    assert failure is not None and failure.get("type") == "check:judge"
    assert failure.get("message") == checks["r002"]["judge"]["reason"]
    # HTML: per-check cells, the failed check's reason, mean scores per group and a Checks table.
    html = (run_dir / "report.html").read_text()
    assert '<table id=checks>' in html and "judge fail 0.750" in html and "3 of 4 expected words" in html
    assert "similarity " in html and "judge 1.000" in html  # the open group's mean judge score
    # Console: pass rate per check type, mean scores, and the judges' figures.
    assert "checks: judge 6/7 (85.7%) mean 0.964, similarity 6/6 (100.0%) mean" in done.stdout
    assert f"judges: {judge_tokens} tokens, cost" in done.stdout
    assert "time to first token: p50" in done.stdout


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_judge_ends_the_case_error_not_failed(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, {
        "name": "nojudge", "workflows": [{"id": "app", "base_url": "mock"}],
        "judges": [{"id": "gone", "base_url": f"http://127.0.0.1:{closed_port()}/v1", "model": "m"}],
        "datasets": [{"name": "ds", "cases": [{"id": "a", "inputs": {"query": "q"}, "expect": {
            "judge": {"by": "gone", "rubric": RUBRIC}}}]}],
        "execution": {"retry_policy": {"max_attempts": 2, "backoff_seconds": 0.05}}})
    # Preflight asks the judge before anything is published: exit 2, no run.
    refused = cli("run", str(plan), "--out", str(tmp_path / "runs"), "--no-progress")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "judge 'gone': cannot reach http://127.0.0.1:" in refused.stderr and not (tmp_path / "runs").exists()
    # Past preflight (the judge went away later), the case ends ERROR: nothing was judged.
    done = cli("run", str(plan), "--out", str(tmp_path / "runs"), "--no-progress", "--no-preflight")
    assert done.returncode == 1, done.stdout + done.stderr
    [result] = json.loads((only_run(tmp_path / "runs") / "report.json").read_text())["results"]
    assert result["status"] == "error"
    assert "judge 'gone' unavailable after 2 tries: ConnectError" in result["error_message"]
    assert result["metadata"]["attempt_count"] == 1  # the app was called once: only the judge was tried again


def test_compare_shows_score_changes_and_gates_on_a_drop(tmp_path: Path) -> None:
    def run(wrong: set[int], out: str) -> Path:
        golden_csv(tmp_path / "golden.csv", 10, wrong)
        plan = write_plan(tmp_path, {
            "name": "g", "workflows": [{"id": "app", "base_url": "mock"},
                                       {"id": "grader", "base_url": "mock", "role": "judge"}],
            "datasets": [{"name": "golden", "file": "golden.csv", "id_column": "id", "expect_columns": ["expected"],
                          "expect": {"judge": {"by": "grader", "rubric": RUBRIC, "expected": "{{ expected }}",
                                               "pass_score": 0.5}}}]})
        done = cli("run", str(plan), "--out", str(tmp_path / out), "--no-progress")
        assert done.returncode == 0, done.stdout + done.stderr
        return only_run(tmp_path / out) / "report.json"

    before, after = run(set(), "a"), run({1, 2, 3, 4}, "b")
    shown = cli("compare", str(before), str(after))
    assert shown.returncode == 0, shown.stdout + shown.stderr  # no gate on scores by default
    assert "judge score" in shown.stdout and "-0.100" in shown.stdout
    assert "judge 1.000 → 0.750  app/golden/r001" in shown.stdout
    gated = cli("compare", str(before), str(after), "--max-score-drop", "0.05")
    assert gated.returncode == 1
    assert "mean judge score fell from 1.000 to 0.900 (allowed drop: 0.05)" in gated.stdout


def test_similarity_and_a_judge_on_a_fleet_worker(tmp_path: Path, fleet: Fleet, mock_dify: MockDifyProcess) -> None:
    fleet.start(1, concurrency=4, env={"MOCK_DIFY_KEY": "app-mock"})
    golden_csv(tmp_path / "golden.csv", 8, wrong={5})
    plan = write_plan(tmp_path, {
        "name": "fleet-graded",
        "workflows": [{"id": "app", "base_url": mock_dify.base_url, "api_key_env": "MOCK_DIFY_KEY"},
                      {"id": "grader", "base_url": mock_dify.base_url, "api_key_env": "MOCK_DIFY_KEY",
                       "role": "judge"}],
        "judges": [{"id": "gpt", "base_url": mock_dify.base_url, "model": "m", "api_key_env": "MOCK_DIFY_KEY"}],
        "datasets": [{"name": "golden", "file": "golden.csv", "id_column": "id", "expect_columns": ["expected"],
                      "expect": {"similarity": {"expected": "{{ expected }}", "threshold": 0.5},
                                 "judge": {"by": "grader", "rubric": RUBRIC, "expected": "{{ expected }}",
                                           "pass_score": 0.9}}},
                     {"name": "open", "cases": [{"id": "o", "inputs": {"query": "o"}, "expect": {
                         "judge": {"by": "gpt", "rubric": RUBRIC}}}]}]})
    done = cli("run", str(plan), "--broker", fleet.broker_url, "--out", str(tmp_path / "runs"), "--no-progress",
               env={"MOCK_DIFY_KEY": "app-mock"})
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((only_run(tmp_path / "runs") / "report.json").read_text())
    statuses = {r["metadata"]["case_id"]: r["status"] for r in report["results"]}
    assert statuses == {**{f"r00{n}": "success" for n in range(8) if n != 5}, "r005": "failed", "o": "success"}
    assert report["run"]["statistics"]["checks"]["similarity"]["total"] == 8
    stats = mock_dify.stats()
    # One app run per case, one judge run per golden row, one chat completion for the open case.
    assert stats["paths"]["/v1/workflows/run"] == 9 + 8 and stats["paths"]["/v1/chat/completions"] == 1
    assert "app-mock" not in (only_run(tmp_path / "runs") / "report.json").read_text()


def test_a_blocking_dify_judge_has_an_unknown_cost_not_a_free_one(tmp_path: Path) -> None:
    golden_csv(tmp_path / "golden.csv", 3, wrong=set())
    plan = write_plan(tmp_path, {
        "name": "blocking-judge",
        "workflows": [{"id": "app", "base_url": "mock"},
                      {"id": "grader", "base_url": "mock", "role": "judge", "response_mode": "blocking"}],
        "datasets": [{"name": "golden", "file": "golden.csv", "id_column": "id", "expect_columns": ["expected"],
                      "expect": {"judge": {"by": "grader", "rubric": RUBRIC, "expected": "{{ expected }}"}}}]})
    done = cli("run", str(plan), "--out", str(tmp_path / "runs"), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((only_run(tmp_path / "runs") / "report.json").read_text())
    assert all(r["checks"][0]["cost"] is None and r["checks"][0]["tokens"] == 120 for r in report["results"])
    stats = report["run"]["statistics"]
    assert (stats["judge_tokens"], stats["judge_cost"], stats["judge_cost_unknown"]) == (360, 0.0, 3)
    assert "judges: 360 tokens, cost 0.0000? (3 judge calls reported no price: a Dify judge on the blocking API)" \
        in done.stdout.replace("\n", " ")
    assert "cost 0.0000? (3 judge calls" in (only_run(tmp_path / "runs") / "report.html").read_text()
