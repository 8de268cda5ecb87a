"""Expectations (`expect:`) and the plan's pass-rate gate."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from celery import Celery
from dify_runner.config.expectations import Expectations
from dify_runner.producer.embedded import InProcessWorker
from dify_runner.worker.checks import check
from dify_runner.worker.models import TaskStatus, TestResult, TestStatus
from dify_runner.worker.store import RunStore
from pydantic import ValidationError

from .conftest import cli, manifest_for, run_manifest, stub_plan, write_plan


def result(outputs: dict, tokens: int = 100, cost: float | None = 0.001) -> TestResult:
    return TestResult(workflow_id="wf", execution_id="wf/ds/a", timestamp=datetime.now(timezone.utc),
                      status=TestStatus.SUCCESS, tokens_used=tokens, cost=cost, outputs=outputs)


ANSWER = {"answer": "Bonjour le monde", "meta": {"lang": "fr", "score": 0.9}}


@pytest.mark.parametrize(
    ("expect", "problem"),
    [
        ({"output": "answer", "equals": "Bonjour le monde"}, None),
        ({"output": "answer", "equals": "Hello"}, "output 'answer' should equal 'Hello', got 'Bonjour le monde'"),
        ({"output": "answer", "contains": ["Bonjour", "monde"]}, None),
        ({"output": "answer", "contains": "Hola"}, "should contain 'Hola'"),
        ({"output": "answer", "not_contains": "monde"}, "should not contain 'monde'"),
        ({"output": "answer", "regex": r"^Bon\w+"}, None),
        ({"output": "answer", "regex": r"^\d+$"}, "should match /^\\d+$/"),
        ({"contains": "x"}, "a single output (set expect.output)"),
        ({"output": "missing", "contains": "x"}, "expected output 'missing'"),
        ({"json_schema": {"type": "object", "required": ["answer"]}}, None),
        ({"json_schema": {"type": "object", "properties": {"meta": {"properties": {"score": {"maximum": 0.5}}}}}},
         "outputs do not match the JSON schema at meta/score"),
        ({"jsonpath": {"$.meta.lang": "fr"}}, None),
        ({"jsonpath": {"$.meta.lang": "de"}}, "JSONPath $.meta.lang should be 'de', got 'fr'"),
        ({"jsonpath": {"$.nothing": 1}}, "JSONPath $.nothing found nothing"),
        ({"max_latency": 0.5}, "latency 0.700 s is over max_latency 0.5 s"),
        ({"max_tokens": 50}, "100 tokens is over max_tokens 50"),
        ({"max_cost": 0.0001}, "cost 0.001 is over max_cost 0.0001"),
    ],
)
def test_each_expectation(expect: dict, problem: str | None) -> None:
    problems = check(Expectations.model_validate(expect), result(ANSWER), latency=0.7)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems


def test_status_failed_is_a_negative_test() -> None:
    failed = result({}).model_copy(update={"metadata": {"workflow_status": "failed",
                                                        "workflow_error": "input too long"}})
    assert check(Expectations(status="failed", error_contains="too long"), failed, latency=0.1) == []
    assert "error should contain 'quota'" in check(Expectations(status="failed", error_contains="quota"),
                                                   failed, latency=0.1)[0]
    assert check(Expectations(status="failed"), result(ANSWER), latency=0.1) == [
        "the workflow run should fail, it ended succeeded"]
    with pytest.raises(ValidationError, match="error_contains needs status: failed"):
        Expectations(error_contains="x")


def test_unknown_cost_cannot_pass_max_cost() -> None:
    problems = check(Expectations(max_cost=1.0), result(ANSWER, cost=None), latency=0.1)
    assert "cost is unknown" in problems[0]


@pytest.mark.parametrize("bad", [{"regex": "("}, {"json_schema": {"type": "nope"}}, {"jsonpath": {"$[": 1}},
                                 {"contians": "x"}])
def test_bad_expectations_are_plan_errors(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Expectations.model_validate(bad)


def test_expectations_and_the_gate_in_a_run(tmp_path: Path) -> None:
    """Against the mock (which answers 'mock answer: <inputs>'), on the embedded default."""
    cases = [
        {"id": "right", "inputs": {"q": "Bonjour"}, "expect": {"contains": "Bonjour"}},
        {"id": "wrong", "inputs": {"q": "Hello"}, "expect": {"contains": "Bonjour"}},
        {"id": "fast-enough", "inputs": {"q": "x"},
         "expect": {"max_latency": 10, "jsonpath": {"$.answer": "mock answer: x"}}},
        {"id": "plain", "inputs": {"q": "y"}},
        # Negative tests: the workflow must fail, and say why.
        {"id": "must-fail", "inputs": {"q": "z", "_mock": {"status": "failed"}},
         "expect": {"status": "failed", "error_contains": "failed"}},
        {"id": "should-have-failed", "inputs": {"q": "z"}, "expect": {"status": "failed"}},
        {"id": "refused", "inputs": {"q": "z", "_mock": {"error": {"http_status": 400}}},
         "expect": {"status": "failed"}},
    ]
    plan = stub_plan(cases, gates={"pass_rate": 4 / 7})
    plan["workflows"] = [{"id": "wf", "base_url": "mock"}]
    done = cli("run", str(write_plan(tmp_path, plan)), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr  # 4 of 7 passed: meets the gate
    assert "gate: pass rate 57.1% passes gates.pass_rate 57.1%" in done.stdout
    [run_dir] = list((tmp_path / "runs").iterdir())
    results = {r["metadata"]["case_id"]: r for r in json.loads((run_dir / "report.json").read_text())["results"]}
    wrong = results["wrong"]
    assert wrong["status"] == "failed" and wrong["metadata"]["attempt_count"] == 1  # judged, not retried
    assert "expectation failed: output 'answer' should contain 'Bonjour', got 'mock answer: Hello'" \
        == wrong["error_message"]
    assert wrong["outputs"] == {"answer": "mock answer: Hello"}  # what came back is kept
    assert results["must-fail"]["status"] == "success"
    assert results["must-fail"]["metadata"]["workflow_status"] == "failed"
    assert results["should-have-failed"]["error_message"] == \
        "expectation failed: the workflow run should fail, it ended succeeded"
    # Dify refusing the call is not the workflow failing: a negative test cannot pass on it.
    assert results["refused"]["status"] == "failed" and "HTTP 400" in results["refused"]["error_message"]

    plan["gates"] = {"pass_rate": 0.9}
    strict = cli("run", str(write_plan(tmp_path, plan)), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert strict.returncode == 1 and "fails gates.pass_rate 90.0%" in strict.stdout


def test_a_catastrophic_regex_cannot_hang_the_worker(tmp_path: Path, app: Celery, store: RunStore,
                                                     worker: InProcessWorker) -> None:
    """`(a+)+$` on 40 `a`s and `!` backtracks for hours in Python's re; on RE2 it is linear."""
    evil = {"id": "evil", "inputs": {"q": "a" * 40 + "!"}, "expect": {"regex": "(a+)+$"}}
    schema = {"id": "schema", "inputs": {"q": "a" * 40 + "!"},
              "expect": {"json_schema": {"properties": {"text": {"pattern": "(a+)+$"}}}}}
    plan = stub_plan([evil, schema, *({"id": f"ok{i}"} for i in range(4))],
                     execution={"retry_policy": {"max_attempts": 1}})
    info = run_manifest(app, store, manifest_for(tmp_path, plan))
    results = {r.case_id: r for r in store.iter_task_results(info.run_id, info.batch_count)}
    assert results["evil"].task_status is TaskStatus.FAILED and "should match" in (results["evil"].error_message or "")
    assert results["schema"].task_status is TaskStatus.FAILED and "does not match" in results["schema"].error_message
    assert [results[f"ok{i}"].task_status for i in range(4)] == [TaskStatus.SUCCEEDED] * 4


@pytest.mark.parametrize("expect, message", [
    ({"regex": "(a)\\1"}, "is not supported"),
    ({"json_schema": {"properties": {"x": {"pattern": "(?=a)b"}}}}, "is not supported"),
    ({"jsonpath": {"$.items[?(@.name =~ 'a+')]": 1}}, "regular expressions inside JSONPath"),
])
def test_unbounded_patterns_are_refused_by_validate(tmp_path: Path, expect: dict, message: str) -> None:
    done = cli("validate", str(write_plan(tmp_path, stub_plan([{"id": "a", "expect": expect}]))))
    assert done.returncode == 2 and message in done.stderr and "datasets[0].cases[0].expect" in done.stderr, \
        done.stderr
