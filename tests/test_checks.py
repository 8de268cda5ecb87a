"""Graded checks, one by one: normalised matching, numbers, row templates, similarity on the
real model, the judge's answer parsing, and the plan errors a user can make with them."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from dify_runner.config.expectations import Expectations
from dify_runner.config.templates import TemplateError, names_in, render
from dify_runner.worker.checks import evaluate
from dify_runner.worker.checks.judge import parse_verdict
from dify_runner.worker.checks.similarity import similarity
from dify_runner.worker.models import TestResult, TestStatus

from .conftest import cli, write_plan


def result(answer: object) -> TestResult:
    return TestResult(workflow_id="wf", execution_id="wf/ds/a", timestamp=datetime.now(timezone.utc),
                      status=TestStatus.SUCCESS, outputs={"answer": answer})


@pytest.mark.parametrize(
    ("expect", "answer", "passed"),
    [
        ({"equals": "Paris"}, "  paris. ", False),
        ({"equals": "Paris", "normalize": True}, "  paris. ", True),
        ({"equals": "Hello world", "normalize": ["whitespace"]}, "Hello \n  world", True),
        ({"equals": "Hello world", "normalize": ["whitespace"]}, "hello world", False),
        ({"equals": "ﬁne", "normalize": ["unicode"]}, "fine", True),  # the ligature, NFKC
        ({"equals": "Ça va!", "normalize": ["case", "punctuation"]}, "ça va", True),
        ({"any_of": ["yes", "yep"], "normalize": "case"}, "YES", True),
        ({"any_of": ["yes", "yep"]}, "no", False),
        ({"contains_all": ["red", "blue"]}, "red and blue", True),
        ({"contains_all": ["red", "blue"]}, "red and green", False),
        ({"contains_any": ["red", "blue"], "normalize": ["case"]}, "BLUE sky", True),
        ({"contains_any": ["red", "blue"]}, "green", False),
        ({"approx": {"value": 42, "tolerance": 0.5}}, "The answer is 42.3 units", True),
        ({"approx": {"value": 42, "tolerance": 0.5}}, "The answer is 43", False),
        ({"approx": {"value": 1000, "tolerance": 0.01, "relative": True}}, "about 1,005", True),
        ({"approx": {"value": 3.5}}, 3.5, True),
        ({"approx": {"value": 3.5}}, "no number here", False),
    ],
)
def test_tolerant_matching(expect: dict, answer: object, passed: bool) -> None:
    [check] = evaluate(Expectations.model_validate(expect), result(answer), latency=0.1)
    assert check.passed is passed, check
    assert check.score == (1.0 if passed else 0.0)
    assert (check.reason is None) is passed


def test_every_check_is_recorded_even_after_one_fails() -> None:
    expect = Expectations.model_validate({"equals": "x", "contains": "Bon", "max_latency": 1.0})
    checks = evaluate(expect, result("Bonjour"), latency=2.0)
    assert [(c.name, c.passed) for c in checks] == [("equals", False), ("contains", True), ("max_latency", False)]


def test_a_row_template_takes_the_column_and_keeps_its_type() -> None:
    row = {"expected": "Paris", "n": 3, "empty": " "}
    assert render({"equals": "{{ expected }}", "approx": {"value": "{{n}}"}, "contains": "in {{ expected }}!"},
                  row) == {"equals": "Paris", "approx": {"value": 3}, "contains": "in Paris!"}
    assert names_in({"a": ["{{ x }} {{y}}"], "b": 1}) == {"x", "y"}
    with pytest.raises(TemplateError, match="the row has no column 'answer'"):
        render("{{ answer }}", row)
    with pytest.raises(TemplateError, match="column 'empty' is empty"):
        render("{{ empty }}", row)


def test_similarity_on_the_real_model_ranks_a_paraphrase_above_an_unrelated_answer() -> None:
    paraphrase = similarity("The capital of France is Paris.", "Paris is France's capital city.",
                            "multilingual-e5-small")
    unrelated = similarity("The capital of France is Paris.", "I had pasta for lunch yesterday.",
                           "multilingual-e5-small")
    assert 0.0 <= unrelated < paraphrase <= 1.0
    expect = Expectations.model_validate({"similarity": {"expected": "Paris is France's capital city.",
                                                         "threshold": round(paraphrase - 0.01, 3)}})
    [check] = evaluate(expect, result("The capital of France is Paris."), latency=0.1)
    assert check.name == "similarity" and check.passed and check.score == paraphrase
    assert check.reason is not None and check.reason.startswith("similarity ")
    print(f"similarity: paraphrase {paraphrase:.3f}, unrelated {unrelated:.3f}")


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ('{"score": 0.8, "reason": "ok"}', None),
        ('Sure! ```json\n{"score": 1, "reason": "fine"}\n```', None),
        ("I think it is good", "is not a JSON object with a score"),
        ('{"score": "high"}', "score 'high' is not a number"),
        ('{"score": 7}', "score 7 is outside 0..1"),
    ],
)
def test_a_judges_reply_is_read_strictly(reply: str, error: str | None) -> None:
    if error is None:
        score, _ = parse_verdict(reply, "reply")
        assert 0 <= score <= 1
    else:
        with pytest.raises(ValueError, match=error):
            parse_verdict(reply, "reply")


def golden_plan(tmp_path: Path, rows: list[str], expect: dict, **dataset: object) -> Path:
    (tmp_path / "golden.csv").write_text("id,query,expected\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return write_plan(tmp_path, {
        "name": "golden",
        "workflows": [{"id": "app", "base_url": "mock"}, {"id": "grader", "base_url": "mock", "role": "judge"}],
        "datasets": [{"name": "golden", "file": "golden.csv", "id_column": "id", "expect_columns": ["expected"],
                      "expect": expect, **dataset}],
    })


@pytest.mark.parametrize(
    ("rows", "expect", "message"),
    [
        (["a,q1,x", "b,q2,"], {"equals": "{{ expected }}"}, "golden.csv): line 3: case 'b': expect column "
                                                             "'expected' is empty"),
        (["a,q1,x"], {"equals": "{{ answer }}"}, "datasets[0] (golden) case 'a': expect: {{ answer }}: the row has "
                                                 "no column 'answer' (its columns: expected, query)"),
        (["a,q1,x"], {"approx": {"value": "{{ expected }}"}}, "case 'a': expect: approx.value: approx.value must "
                                                              "be a number"),
        (["a,q1,x"], {"judge": {"by": "nobody", "rubric": "r"}}, "datasets[0].expect.judge.by: 'nobody' is not a "
                                                                 "judge of this plan (judges: grader)"),
        (["a,q1,x"], {"similarity": {"expected": "{{ expected }}", "model": "bert-huge"}},
         "unknown similarity model 'bert-huge' (known: multilingual-e5-small)"),
        (["a,q1,x"], {"regex": "{{ expected }}("}, "case 'a': expect: regex"),
    ],
)
def test_bad_golden_rows_and_templates_are_plan_errors(tmp_path: Path, rows: list[str], expect: dict,
                                                       message: str) -> None:
    done = cli("validate", str(golden_plan(tmp_path, rows, expect)))
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_expect_column_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "query": "q", "expected": "x"}\n{"id": "b", "query": "q"}\n',
                                         encoding="utf-8")
    plan = write_plan(tmp_path, {"name": "p", "workflows": [{"id": "app", "base_url": "mock"}], "datasets": [
        {"name": "ds", "file": "rows.jsonl", "id_column": "id", "expect_columns": ["expected"],
         "expect": {"equals": "{{ expected }}"}}]})
    done = cli("validate", str(plan))
    assert done.returncode == 2 and "line 2: case 'b': expect column 'expected' is missing" in done.stderr


def test_jsonl_rows_carry_their_own_expectations_and_dry_run_shows_them(tmp_path: Path) -> None:
    lines = [{"id": "a", "query": "two plus two", "expect": {"approx": {"value": 4, "tolerance": 0}}},
             {"id": "b", "query": "capital", "expected": "Paris"}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    lines[0]["expected"] = "4"  # a row with its own expect ignores the dataset's; every row has the column
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    plan = write_plan(tmp_path, {"name": "p", "workflows": [{"id": "app", "base_url": "mock"}], "datasets": [
        {"name": "ds", "file": "rows.jsonl", "id_column": "id", "expect_columns": ["expected"],
         "expect": {"contains": "{{ expected }}", "normalize": True}}]})
    done = cli("run", str(plan), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert 'app/ds/a\n  inputs: {"query": "two plus two"}\n  expect: {"approx": {"value": 4.0' in done.stdout
    assert 'app/ds/b\n  inputs: {"query": "capital"}\n  expect: {"contains": "Paris", "normalize": ["case", ' \
           '"whitespace", "punctuation", "unicode"]}' in done.stdout
    assert "dry run: 2 case(s) of plan 'p' in 1 dataset(s) (ds); nothing was published" in done.stdout


def test_only_and_tags_pick_a_subset(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, {"name": "p", "workflows": [{"id": "wf", "base_url": "stub"}], "datasets": [
        {"name": "smoke", "tags": ["fast"], "cases": [{"id": "s1"}, {"id": "s2"}]},
        {"name": "golden", "cases": [{"id": "g1", "tags": ["fast"]}, {"id": "g2"}, {"id": "g3"}]},
        {"name": "load", "cases": [{"id": "l1"}]}]})
    counts = {}
    for args in (["--only", "golden"], ["--only", "golden,load"], ["--tag", "fast"], ["--only", "golden", "--tag",
                                                                                       "fast"]):
        done = cli("run", str(plan), "--dry-run", *args)
        assert done.returncode == 0, done.stderr
        counts[" ".join(args)] = done.stdout.count("\n  inputs:")
    assert counts == {"--only golden": 3, "--only golden,load": 4, "--tag fast": 3, "--only golden --tag fast": 1}
    wrong = cli("run", str(plan), "--only", "golden,nope")
    assert wrong.returncode == 2 and "--only: no dataset named 'nope' (datasets: smoke, golden, load)" in wrong.stderr
    none = cli("run", str(plan), "--tag", "slow")
    assert none.returncode == 2 and "--tag slow: no dataset or case has this tag" in none.stderr


def test_a_missing_model_package_is_a_plan_error_and_a_worker_error(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from dify_runner.config import checks as check_models
    from dify_runner.config.errors import PlanError
    from dify_runner.config.loader import load_plan
    from dify_runner.worker.checks import CheckUnavailable

    monkeypatch.setitem(check_models.SIMILARITY_MODELS, "tiny-missing", ("no_such_package_for_dify_runner", "v"))
    plan = golden_plan(tmp_path, ["a,q1,x"], {"similarity": {"expected": "{{ expected }}", "model": "tiny-missing"}})
    with pytest.raises(PlanError) as caught:
        load_plan(plan)
    assert caught.value.problems == [
        "dataset 'golden': expect.similarity.model: similarity model 'tiny-missing' needs the package "
        "'no_such_package_for_dify_runner', which is not installed here: pip install 'dify-runner[similarity]' "
        "(on the producer and on every worker)"]
    expect = Expectations.model_validate({"similarity": {"expected": "x", "model": "tiny-missing"}})
    with pytest.raises(CheckUnavailable, match="pip install 'dify-runner\\[similarity\\]'"):
        evaluate(expect, result("x"), latency=0.1)


def test_a_judges_url_and_key_variable_follow_the_workflows_rules(tmp_path: Path) -> None:
    base = {"name": "p", "workflows": [{"id": "app", "base_url": "mock"}],
            "datasets": [{"name": "ds", "cases": [{"id": "a", "inputs": {"query": "q"}}]}]}
    secret = write_plan(tmp_path, {**base, "judges": [{"id": "gpt", "base_url": "https://user:s3cret@llm.example/v1",
                                                        "model": "m", "api_key_env": "OPENAI_DIFY_KEY"}]})
    done = cli("validate", str(secret))
    assert done.returncode == 2 and "must not hold credentials (user:password@), got 'https://***@llm.example/v1'" \
        in done.stderr and "s3cret" not in done.stderr
    foreign = write_plan(tmp_path, {**base, "judges": [{"id": "gpt", "base_url": "https://llm.example/v1",
                                                         "model": "m", "api_key_env": "HOME"}]})
    done = cli("validate", str(foreign))
    assert done.returncode == 2 and "judges[0].api_key_env = 'HOME': is not a variable meant to hold" in done.stderr
