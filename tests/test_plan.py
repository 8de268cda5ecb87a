"""Plan models, data files and expansion into a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dify_runner.config.errors import PlanError
from dify_runner.config.loader import load_plan
from dify_runner.config.plan import ExecutionPolicy, RetryPolicy
from dify_runner.producer.expansion import expand

from .conftest import REPO, stub_plan, write_plan


def test_demo_plan_loads_and_expands() -> None:
    loaded = load_plan(REPO / "config/plans/demo.yaml")
    manifest = expand(loaded)
    assert loaded.case_count == len(manifest.cases) == 22
    assert manifest.cases[0].task_id == "translator/smoke/hello"
    assert {t.dataset for t in manifest.cases} == {"smoke", "questions", "golden", "conversation"}
    # grader is a judge: it grades the golden set and runs no dataset itself.
    assert {t.workflow_id for t in manifest.cases} == {"translator", "offline", "support"}
    golden = [t for t in manifest.cases if t.dataset == "golden"]
    assert golden[0].expect is not None and golden[0].expect.equals == "Mock answer: good morning French"
    assert "expected" not in golden[0].parameters


def test_seed_defaults() -> None:
    policy = ExecutionPolicy()
    assert (policy.concurrency, policy.batch_size) == (5, 10)
    assert (policy.retry_policy.max_attempts, policy.retry_policy.backoff_seconds,
            policy.retry_policy.backoff_multiplier) == (3, 2.0, 1.5)
    assert policy.stop_conditions.timeout_per_task == 300.0
    assert policy.rate_control is None


def test_backoff_formula() -> None:
    retry = RetryPolicy(max_attempts=4, backoff_seconds=2.0, backoff_multiplier=1.5)
    assert [retry.countdown(a) for a in (1, 2, 3)] == [2.0, 3.0, 4.5]


def test_stop_conditions_read_and_written_like_a_dict() -> None:
    policy = ExecutionPolicy()
    policy.stop_conditions["timeout_per_task"] = 1.0
    assert policy.stop_conditions["timeout_per_task"] == 1.0
    with pytest.raises(KeyError):
        policy.stop_conditions["nope"]


def test_expansion_is_deterministic_and_covers_workflow_case_repeat(tmp_path: Path) -> None:
    plan = stub_plan([{"id": "a", "inputs": {"q": 1}}, {"inputs": {"q": 2}}], repeat=2)
    plan["workflows"].append({"id": "wf2", "base_url": "stub"})
    path = write_plan(tmp_path, plan)
    first, second = expand(load_plan(path)), expand(load_plan(path))
    ids = [t.task_id for t in first.cases]
    assert ids == [t.task_id for t in second.cases]
    assert first.run_id != second.run_id
    assert ids == ["wf/ds/a#1", "wf/ds/a#2", "wf2/ds/a#1", "wf2/ds/a#2",
                   "wf/ds/ds-2#1", "wf/ds/ds-2#2", "wf2/ds/ds-2#1", "wf2/ds/ds-2#2"]


def test_dataset_can_target_some_workflows(tmp_path: Path) -> None:
    plan = stub_plan([{"id": "a"}])
    plan["workflows"].append({"id": "wf2", "base_url": "stub"})
    plan["datasets"][0]["workflows"] = ["wf2"]
    assert [t.workflow_id for t in expand(load_plan(write_plan(tmp_path, plan))).cases] == ["wf2"]


def test_cases_from_csv_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("id,query,lang\nc1,hello,fr\nc2,\"a, b\",de\n", encoding="utf-8")
    rows = [json.dumps({"query": "x", "n": 3}), "", json.dumps({"query": "y"})]
    (tmp_path / "rows.jsonl").write_text("\n".join(rows) + "\n")
    plan = stub_plan([{"id": "inline"}])
    plan["datasets"] += [
        {"name": "csv", "file": "rows.csv", "id_column": "id"},
        {"name": "jsonl", "file": "rows.jsonl"},
    ]
    manifest = expand(load_plan(write_plan(tmp_path, plan)))
    by_id = {t.task_id: t for t in manifest.cases}
    assert by_id["wf/csv/c2"].parameters == {"query": "a, b", "lang": "de"}
    assert by_id["wf/jsonl/jsonl-1"].parameters == {"query": "x", "n": 3}
    assert len(manifest.cases) == 5


def test_batches_follow_batch_size(tmp_path: Path) -> None:
    plan = stub_plan([{"id": f"c{i}"} for i in range(25)], execution={"batch_size": 10})
    manifest = expand(load_plan(write_plan(tmp_path, plan)))
    assert [len(b) for b in manifest.batches()] == [10, 10, 5]
    assert manifest.batch_count == 3


def test_manifest_carries_no_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_DIFY_KEY_VAR", "app-very-secret-value")
    plan = stub_plan([{"id": "a"}])
    plan["workflows"] = [{"id": "wf", "base_url": "https://dify.example/v1", "api_key_env": "SECRET_DIFY_KEY_VAR"}]
    manifest = expand(load_plan(write_plan(tmp_path, plan)))
    assert "app-very-secret-value" not in manifest.model_dump_json()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p: p.update(unknown=1), "unknown: unknown field"),
        (lambda p: p["execution"].update(concurrency="many"), "execution.concurrency = 'many'"),
        (lambda p: p["execution"].update(stop_conditions={"timeout_per_task": -5}),
         "execution.stop_conditions.timeout_per_task = -5: Input should be greater than 0"),
        (lambda p: p["datasets"][0].update(workflows=["ghost"]), "unknown workflow 'ghost'"),
        (lambda p: p["workflows"][0].update(base_url="ftp://x"), "workflows[0].base_url"),
        (lambda p: p["workflows"].append({"id": "real", "base_url": "https://x.io/v1"}), "needs api_key_env"),
        (lambda p: p["datasets"][0].update(file="missing.csv"), "data file not found"),
    ],
)
def test_bad_plans_name_the_field_and_value(tmp_path: Path, change, expected: str) -> None:
    plan = stub_plan([{"id": "a"}])
    change(plan)
    with pytest.raises(PlanError) as caught:
        load_plan(write_plan(tmp_path, plan))
    assert expected in str(caught.value)
    assert str(tmp_path / "plan.yaml") in str(caught.value)


def test_app_modes_conversations_and_files_in_a_plan(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(b"png")
    plan = stub_plan([{"id": "talk", "inputs": {"photo": {"file": "cat.png"}, "docs": [{"file": "https://x.io/a.pdf"}]},
                       "turns": [{"query": "hi"},
                                 {"query": "and?", "files": [{"file": "cat.png", "type": "custom"}]}]}])
    plan["workflows"] = [{"id": "wf", "base_url": "mock", "app_mode": "chatflow"}]
    loaded = load_plan(write_plan(tmp_path, plan))
    manifest = expand(loaded)
    assert manifest.workflows[0].app_mode == "advanced-chat" and manifest.workflows[0].api == "chat"
    (task,) = manifest.cases
    photo = task.parameters["photo"]["$file"]
    assert photo["type"] == "image" and photo["name"] == "cat.png" and photo["size"] == 3
    assert task.parameters["docs"] == [{"$file": {"type": "document", "url": "https://x.io/a.pdf"}}]
    assert task.turns[1].files[0]["$file"]["type"] == "custom"
    assert list(manifest.files) == [photo["sha256"]]  # staged once, however many cases use it
    plan["workflows"][0].update(app_mode="agent", response_mode="blocking")
    with pytest.raises(PlanError, match="only in streaming mode"):
        load_plan(write_plan(tmp_path, plan))
