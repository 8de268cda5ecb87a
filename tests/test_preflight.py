"""Preflight and the key rule, through the CLI as a user runs it, against the mock Dify server.

Dify sources followed: api/controllers/service_api/app/app.py (/info, /parameters and its
user_input_form), api/controllers/service_api/wraps.py (401 for a wrong key),
api/core/app/apps/base_app_generator.py (_validate_inputs: required, select options, number,
max_length)."""

from __future__ import annotations

import json
from pathlib import Path

from dify_runner.mockdify.process import MockDifyProcess

from .conftest import cli, stub_plan, write_plan

KEY = "app-mock"
FORM = [
    {"paragraph": {"label": "Query", "variable": "query", "required": True}},
    {"select": {"label": "Language", "variable": "lang", "required": False, "options": ["French", "German"]}},
    {"number": {"label": "N", "variable": "n", "required": False}},
    {"text-input": {"label": "Title", "variable": "title", "required": False, "max_length": 5}},
]


def plan_for(mock: MockDifyProcess, cases: list[dict], key_env: str = "MOCK_DIFY_KEY") -> dict:
    plan = stub_plan(cases)
    plan["workflows"] = [{"id": "wf", "base_url": mock.base_url, "api_key_env": key_env}]
    return plan


def test_a_rejected_key_is_named_before_anything_is_published(tmp_path: Path) -> None:
    with MockDifyProcess("--api-key", KEY) as mock:
        path = write_plan(tmp_path, plan_for(mock, [{"id": "c1", "inputs": {"query": "x"}}]))
        done = cli("validate", str(path), "--remote", env={"MOCK_DIFY_KEY": "app-wrong-secret"})
        stats = mock.stats()
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert f"workflow 'wf': Dify at {mock.base_url} rejected the key in MOCK_DIFY_KEY (HTTP 401" in out
    assert "app-wrong-secret" not in out and "Traceback" not in out
    assert stats["paths"] == {"/v1/info": 1} and stats["runs"] == 0


def test_a_url_that_is_not_a_dify_api(tmp_path: Path) -> None:
    with MockDifyProcess("--api-key", KEY) as mock:
        plan = plan_for(mock, [{"id": "c1", "inputs": {"query": "x"}}])
        plan["workflows"][0]["base_url"] = mock.base_url.replace("/v1", "/console")
        done = cli("validate", str(write_plan(tmp_path, plan)), "--remote", env={"MOCK_DIFY_KEY": KEY})
    assert done.returncode == 2
    assert "/console is not a Dify API: GET /info answered HTTP 404" in done.stdout + done.stderr


def test_an_app_of_another_mode_is_learned_unless_the_plan_says_otherwise(tmp_path: Path) -> None:
    with MockDifyProcess("--api-key", KEY, "--app-mode", "advanced-chat") as mock:
        plan = plan_for(mock, [{"id": "c1", "inputs": {"query": "x"}}])
        learned = cli("validate", str(write_plan(tmp_path, plan)), "--remote", env={"MOCK_DIFY_KEY": KEY})
        plan["workflows"][0]["app_mode"] = "workflow"
        done = cli("validate", str(write_plan(tmp_path, plan)), "--remote", env={"MOCK_DIFY_KEY": KEY})
    assert learned.returncode == 0, learned.stdout + learned.stderr  # a chatflow: sent to /chat-messages
    out = done.stdout + done.stderr
    assert done.returncode == 2
    assert "is a 'advanced-chat' app, but the plan says app_mode: workflow; it answers on /chat-messages" in out


def test_every_case_is_checked_against_the_apps_input_form(tmp_path: Path) -> None:
    cases = [
        {"id": "ok", "inputs": {"query": "x", "lang": "French", "n": "3", "title": "short"}},
        {"id": "no-query", "inputs": {"lang": "German"}},
        {"id": "klingon", "inputs": {"query": "x", "lang": "Klingon"}},
        {"id": "nan", "inputs": {"query": "x", "n": "many"}},
        {"id": "long", "inputs": {"query": "x", "title": "far too long"}},
        {"id": "extra", "inputs": {"query": "x", "colour": "red"}},
    ]
    with MockDifyProcess("--api-key", KEY, "--input-form", json.dumps(FORM)) as mock:
        path = write_plan(tmp_path, plan_for(mock, cases))
        done = cli("validate", str(path), "--remote", env={"MOCK_DIFY_KEY": KEY})
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "required input 'query' is missing in 1 case(s): 'no-query'" in out
    assert "input 'lang' = 'Klingon' is not one of the app's options ['French', 'German']" in out
    assert "input 'n' = 'many' is not a number in 1 case(s): 'nan'" in out
    assert "input 'title' is longer than the app's max_length (5 characters)" in out
    assert "warning:" in out and "does not declare input 'colour'" in out


def test_the_embedded_default_refuses_an_unset_key_and_a_rejected_one(tmp_path: Path) -> None:
    with MockDifyProcess("--api-key", KEY, "--latency-ms", "10") as mock:
        path = write_plan(tmp_path, plan_for(mock, [{"id": f"c{i}", "inputs": {"query": "x"}} for i in range(20)]))
        unset = cli("run", str(path), "--out", str(tmp_path / "runs"), "--no-progress", cwd=tmp_path)
        wrong = cli("run", str(path), "--out", str(tmp_path / "runs"), "--no-progress", cwd=tmp_path,
                    env={"MOCK_DIFY_KEY": "app-wrong"})
        before = mock.stats()
        skipped = cli("run", str(path), "--out", str(tmp_path / "runs"), "--no-preflight", "--no-progress",
                      cwd=tmp_path, env={"MOCK_DIFY_KEY": "app-wrong"})
        after = mock.stats()
    assert unset.returncode == 2 and "MOCK_DIFY_KEY is not set, so no case of it could run" in unset.stderr
    assert wrong.returncode == 2 and "rejected the key in MOCK_DIFY_KEY" in wrong.stderr
    assert before["paths"].get("/v1/workflows/run", 0) == 0  # nothing was published
    # Without preflight the run goes out, and the workers' fail-fast stops it after 3 calls.
    assert skipped.returncode == 1, skipped.stdout + skipped.stderr
    assert "was refused on its first 3 attempts" in skipped.stdout
    assert after["paths"]["/v1/workflows/run"] <= 3 + 4  # plus the cases already in flight (concurrency)


def test_validate_refuses_a_variable_that_is_not_a_key(tmp_path: Path) -> None:
    with MockDifyProcess("--api-key", KEY) as mock:
        plan = plan_for(mock, [{"id": "c1"}], key_env="DIFY_RUNNER_BROKER_URL")
        done = cli("validate", str(write_plan(tmp_path, plan)), env={"DIFY_RUNNER_BROKER_URL": "redis://x:1/0"})
        other = cli("validate", str(write_plan(tmp_path, plan_for(mock, [{"id": "c1"}], key_env="AWS_SECRET_KEY"))))
        allowed = cli("validate", str(write_plan(tmp_path, plan_for(mock, [{"id": "c1"}], key_env="TEAM_TOKEN"))),
                      env={"DIFY_RUNNER_KEY_VARIABLES": "TEAM_*, *DIFY*KEY*"})
    assert done.returncode == 2
    assert "workflows[0].api_key_env = 'DIFY_RUNNER_BROKER_URL': is one of dify-runner's own settings" in done.stderr
    assert "variables matching *DIFY*KEY* (DIFY_RUNNER_KEY_VARIABLES on the workers)" in done.stderr
    assert other.returncode == 2 and "'AWS_SECRET_KEY': is not a variable meant to hold a Dify API key" in other.stderr
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
