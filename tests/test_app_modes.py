"""Every kind of Dify app end to end: workflow, chatflow, agent, chatbot (three turns) and
completion apps, and a file input, on the embedded default and on a fleet of `celery worker`
processes, against the project's mock Dify (real HTTP, real Redis, real workers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import Fleet, MockDifyProcess, cli, write_plan

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64

KEYS = {"DIFY_FLOW_KEY": "app-mock", "DIFY_CHATFLOW_KEY": "app-chatflow", "DIFY_AGENT_KEY": "app-agent",
        "DIFY_CHAT_KEY": "app-chat", "DIFY_COMPLETION_KEY": "app-completion"}


def every_mode_plan(tmp_path: Path, base_url: str | None) -> Path:
    """``base_url`` None: the embedded default's mock (``base_url: mock`` with app_mode)."""
    (tmp_path / "cat.png").write_bytes(PNG)

    def workflow(wid: str, mode: str | None, env: str) -> dict[str, Any]:
        if base_url is None:
            return {"id": wid, "base_url": "mock", **({"app_mode": mode} if mode else {})}
        return {"id": wid, "base_url": base_url, "api_key_env": env}  # the mode comes from /info

    conversation = {"id": "three-turns", "turns": [
        {"query": "my name is Ada", "expect": {"contains": "Ada"}},
        {"query": "what is my name?", "expect": {"contains": "earlier: my name is Ada"}},
        {"query": "and this picture?", "files": [{"file": "cat.png"}],
         "expect": {"contains_all": ["turn 3", "cat.png"]}}],
        "expect": {"max_tokens": 1000}}
    plan = {
        "name": "every-mode",
        "workflows": [workflow("flow", None, "DIFY_FLOW_KEY"), workflow("chatflow", "chatflow", "DIFY_CHATFLOW_KEY"),
                      workflow("agent", "agent", "DIFY_AGENT_KEY"), workflow("support", "chat", "DIFY_CHAT_KEY"),
                      workflow("writer", "completion", "DIFY_COMPLETION_KEY")],
        "datasets": [
            {"name": "flow", "workflows": ["flow"], "cases": [{"id": "w1", "inputs": {"query": "hello"}}]},
            {"name": "chatflow", "workflows": ["chatflow"],
             "cases": [{"id": "c1", "query": "hi chatflow", "expect": {"equals": "mock answer: hi chatflow"}}]},
            {"name": "agent", "workflows": ["agent"], "cases": [{"id": "a1", "query": "search this"}]},
            {"name": "support", "workflows": ["support"], "cases": [
                conversation,
                {"id": "photo", "query": "describe", "files": [{"file": "cat.png"}], "expect": {"contains": "cat.png"}},
                {"id": "photo2", "query": "again", "files": [{"file": "cat.png"}]}]},
            {"name": "writer", "workflows": ["writer"],
             "cases": [{"id": "p1", "inputs": {"query": "a poem"}, "expect": {"contains": "mock completion"}}]},
        ],
        "execution": {"concurrency": 4, "retry_policy": {"max_attempts": 2, "backoff_seconds": 0.1},
                      "stop_conditions": {"timeout_per_task": 30}},
    }
    return write_plan(tmp_path, plan)


def only_run(runs: Path) -> Path:
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


def check_every_mode_report(out: Path) -> dict[str, Any]:
    report = json.loads((only_run(out) / "report.json").read_text())
    by_case = {r["metadata"]["case_id"]: r for r in report["results"]}
    assert {c: r["status"] for c, r in by_case.items()} == {c: "success" for c in
                                                             ("w1", "c1", "a1", "three-turns", "photo", "photo2", "p1")}
    talk = by_case["three-turns"]
    assert [t["index"] for t in talk["turns"]] == [1, 2, 3]
    assert len({t["conversation_id"] for t in talk["turns"]}) == 1  # one conversation, carried
    assert talk["outputs"]["answer"] == talk["turns"][-1]["answer"]
    assert talk["tokens_used"] == sum(t["tokens_used"] for t in talk["turns"]) > 0
    assert [c["turn"] for c in talk["checks"]] == [1, 2, 3, None]
    assert by_case["a1"]["metadata"]["agent_thoughts"][0]["tool"] == "mock_search"
    assert by_case["c1"]["cost"] > 0 and by_case["p1"]["outputs"]["answer"] == "mock completion: a poem"
    assert by_case["photo"]["outputs"]["answer"].endswith("[files: cat.png]")
    csv_text = (only_run(out) / "results.csv").read_text()
    assert "turns" in csv_text.splitlines()[0]
    junit = (only_run(out) / "junit.xml").read_text()
    assert junit.count("<testcase") == 7  # one per conversation, not per turn
    return report


def test_every_app_mode_on_the_embedded_default(tmp_path: Path) -> None:
    plan = every_mode_plan(tmp_path, None)
    done = cli("run", str(plan), "--out", str(tmp_path / "runs"), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    check_every_mode_report(tmp_path / "runs")
    html = (only_run(tmp_path / "runs") / "report.html").read_text()
    assert "<details" in html and "what is my name?" in html


def test_every_app_mode_on_a_fleet(tmp_path: Path, fleet: Fleet, mock_dify: MockDifyProcess) -> None:
    fleet.start(2, concurrency=4, env=KEYS)
    plan = every_mode_plan(tmp_path, mock_dify.base_url)
    done = cli("run", str(plan), "--broker", fleet.broker_url, "--out", str(tmp_path / "runs"), "--no-progress",
               env=KEYS)
    assert done.returncode == 0, done.stdout + done.stderr
    check_every_mode_report(tmp_path / "runs")
    stats = mock_dify.stats()
    # The file used by three cases went up once for the run; each turn is one message.
    assert stats["paths"]["/v1/files/upload"] == 1
    assert stats["paths"]["/v1/chat-messages"] == 3 + 2 + 1 + 1
    assert stats["paths"]["/v1/completion-messages"] == 1 and stats["paths"]["/v1/workflows/run"] == 1
    assert not any(key in (only_run(tmp_path / "runs") / "report.json").read_text() for key in KEYS.values()
                   if key != "app-mock")
