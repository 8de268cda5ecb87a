"""Contract of the chat, agent, chatflow and completion APIs, file uploads and conversations,
each shape checked against the langgenius/dify source file that defines it:

- api/controllers/service_api/app/completion.py: ChatRequestPayload / CompletionRequestPayload,
  not_chat_app, app_unavailable, 404 "Conversation Not Exists.", the /stop routes
- api/core/app/apps/chat/generate_response_converter.py: the flattened blocking answer
- api/core/app/entities/task_entities.py: StreamEvent and each event's fields
- api/controllers/service_api/app/file.py: POST /files/upload, 201 with the UploadFile's id
- api/factories/file_factory.py: {type, transfer_method, upload_file_id | url} mappings
- api/controllers/service_api/app/workflow.py: 400 not_workflow_app for a non-workflow key
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from dify_runner.config.plan import WorkflowConfig
from dify_runner.worker.dify import messages
from dify_runner.worker.dify_client import DifyAPIError, DifyClient, DifyServerError
from pydantic import BaseModel, ConfigDict

from tests.conftest import MockDifyProcess, cli, write_plan


class Shape(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ChatBlocking(Shape):  # generate_response_converter.py, convert_blocking_full_response
    event: str
    task_id: str
    id: str
    message_id: str
    conversation_id: str
    mode: str
    answer: str
    metadata: dict[str, Any]
    created_at: int


class Usage(Shape):  # LLMUsage (api/core/model_runtime/entities/llm_entities.py): prices are decimal strings
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    total_price: str
    currency: str
    latency: float


class StreamHead(Shape):  # ChatbotAppStreamResponse: every chunk has these
    event: str
    task_id: str
    message_id: str
    conversation_id: str
    created_at: int


class AgentThought(StreamHead):  # AgentThoughtStreamResponse
    id: str
    position: int
    thought: str | None
    observation: str | None
    tool: str | None
    tool_input: str | None


class UploadAnswer(Shape):  # file.py -> fields/file_fields.py
    id: str
    name: str
    size: int
    extension: str
    mime_type: str | None
    created_at: int


def sse(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]


def post(mock: MockDifyProcess, path: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{mock.base_url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_mock_chat_shapes_blocking_and_streaming(mock_dify: MockDifyProcess) -> None:
    body = {"inputs": {}, "query": "hi", "user": "u", "response_mode": "blocking"}
    answer = ChatBlocking.model_validate(post(mock_dify, "/chat-messages", "app-chat", body).json())
    Usage.model_validate(answer.metadata["usage"])
    events = sse(post(mock_dify, "/chat-messages", "app-agent", {**body, "response_mode": "streaming"}))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "agent_thought" and "agent_message" in kinds and kinds[-1] == "message_end"
    for event in events:
        StreamHead.model_validate(event)
    AgentThought.model_validate(events[0])
    Usage.model_validate(events[-1]["metadata"]["usage"])
    flow = [e["event"] for e in sse(post(mock_dify, "/chat-messages", "app-chatflow",
                                         {**body, "response_mode": "streaming"}))]
    assert flow[0] == "workflow_started" and "workflow_finished" in flow and flow[-1] == "message_end"


def test_mock_routes_by_app_mode_like_dify(mock_dify: MockDifyProcess) -> None:
    body = {"inputs": {}, "query": "hi", "user": "u", "response_mode": "blocking"}
    refused = post(mock_dify, "/workflows/run", "app-chat", body)
    assert (refused.status_code, refused.json()["code"]) == (400, "not_workflow_app")
    assert post(mock_dify, "/chat-messages", "app-mock", body).json()["code"] == "not_chat_app"
    assert post(mock_dify, "/completion-messages", "app-chat", body).json()["code"] == "app_unavailable"
    assert post(mock_dify, "/chat-messages", "app-agent", body).json()["code"] == "invalid_param"  # blocking
    gone = post(mock_dify, "/chat-messages", "app-chat", {**body, "conversation_id": "3f6f1a52-0000-4000-8000-1"})
    assert (gone.status_code, gone.json()["message"]) == (404, "Conversation Not Exists.")


def test_upload_answer_and_file_mappings(mock_dify: MockDifyProcess) -> None:
    upload = httpx.post(f"{mock_dify.base_url}/files/upload", files={"file": ("a.png", b"png", "image/png")},
                        data={"user": "u"}, headers={"Authorization": "Bearer app-chat"}, timeout=10)
    assert upload.status_code == 201
    file_id = UploadAnswer.model_validate(upload.json()).id
    body = {"inputs": {}, "query": "hi", "user": "u", "response_mode": "blocking",
            "files": [{"type": "image", "transfer_method": "local_file", "upload_file_id": file_id}]}
    assert post(mock_dify, "/chat-messages", "app-chat", body).json()["answer"].endswith("[files: a.png]")
    body["files"] = [{"type": "image", "transfer_method": "local_file", "upload_file_id": "nope"}]
    assert post(mock_dify, "/chat-messages", "app-chat", body).json()["message"] == "Invalid upload file"


def test_client_reads_every_chat_event_dify_sends() -> None:
    """Events the mock never sends, as task_entities.py defines them: message_replace replaces
    the answer, message_file is kept, tts and unknown events are ignored, usage prices are strings."""
    head = {"task_id": "t", "message_id": "m", "conversation_id": "c", "created_at": 1}
    stream = [
        {**head, "event": "message", "id": "m", "answer": "bad"},
        {**head, "event": "message_replace", "answer": "moderated"},
        {**head, "event": "tts_message", "audio": "AAAA"},
        {**head, "event": "message_file", "id": "f", "type": "image", "belongs_to": "assistant", "url": "/f.png"},
        {**head, "event": "iteration_started", "data": {}},
        {**head, "event": "message_end", "id": "m",
         "metadata": {"usage": {"total_tokens": 7, "total_price": "0.0000140", "currency": "USD", "latency": 0.5}}},
    ]
    result = messages.parse_stream(iter(stream), 0.0, None,
                                   {"cost": None, "currency": None, "time_to_first_event": None, "ttft": None})
    assert result["outputs"] == {"answer": "moderated"} and result["cost"] == pytest.approx(1.4e-5)
    assert result["message_files"][0]["url"] == "/f.png" and result["conversation_id"] == "c"
    no_usage = messages.parse_blocking(json.dumps({**head, "event": "message", "answer": "x",
                                                   "metadata": {}}).encode())
    assert no_usage["cost"] is None  # unknown, never free
    with pytest.raises(DifyAPIError):
        messages.parse_stream(iter([{**head, "event": "error", "status": 400, "code": "completion_request_error",
                                     "message": "bad"}]), 0.0, None, {"time_to_first_event": None, "ttft": None})
    with pytest.raises(DifyServerError, match="message_end"):
        messages.parse_stream(iter([{**head, "event": "message", "answer": "x"}]), 0.0, None,
                              {"time_to_first_event": None, "ttft": None})


def test_stop_a_streaming_message(mock_dify: MockDifyProcess) -> None:
    workflow = WorkflowConfig(id="c", base_url=mock_dify.base_url, api_key_env="DIFY_KEY", app_mode="chat")
    client = DifyClient()
    client.stop(workflow, "app-chat", "some-task")  # Dify answers success for any task id
    assert mock_dify.stats()["paths"]["/v1/chat-messages/some-task/stop"] == 1
    client.close()


def conversation_plan(tmp_path: Path, mock: MockDifyProcess, turn_two: dict[str, Any], **workflow: Any) -> Path:
    return write_plan(tmp_path, {
        "name": "talk", "workflows": [{"id": "bot", "base_url": mock.base_url, "api_key_env": "DIFY_CHAT_KEY",
                                       **workflow}],
        "datasets": [{"name": "d", "cases": [{"id": "talk", "turns": [
            {"query": "one"}, {"query": "two", **turn_two},
            {"query": "three", "expect": {"contains": "earlier: one"}}]}]}],
        "execution": {"retry_policy": {"max_attempts": 3, "backoff_seconds": 0.05}}})


def run_report(tmp_path: Path, plan: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    done = cli("run", str(plan), "--out", str(tmp_path / "runs"), "--no-progress", *extra,
               env={"DIFY_CHAT_KEY": "app-chat"})
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()] if (tmp_path / "runs").exists() else []
    assert runs, done.stdout + done.stderr
    return done.returncode, json.loads((runs[0] / "report.json").read_text())["results"][0]


def test_a_failed_turn_is_retried_in_the_same_conversation(tmp_path: Path, mock_dify: MockDifyProcess) -> None:
    plan = conversation_plan(tmp_path, mock_dify, {"inputs": {"_mock": {"fail_times": 1}}})
    code, result = run_report(tmp_path, plan)
    assert code == 0 and result["status"] == "success"
    assert mock_dify.stats()["queries"] == {"one": 1, "two": 1, "three": 1}  # the 500 was refused before a run
    assert [t["attempt"] for t in result["turns"]] == [1, 2, 2]
    assert len({t["conversation_id"] for t in result["turns"]}) == 1


def test_a_conversation_dify_lost_starts_again(tmp_path: Path, mock_dify: MockDifyProcess) -> None:
    code, result = run_report(tmp_path, conversation_plan(tmp_path, mock_dify,
                                                          {"inputs": {"_mock": {"forget_times": 1}}}))
    assert code == 0 and result["status"] == "success"
    assert result["metadata"]["conversation_restarts"] == 1
    assert "no longer has conversation" in result["metadata"]["conversation_restart_reason"]
    assert mock_dify.stats()["queries"] == {"one": 2, "two": 2, "three": 1}


def test_the_worker_learns_the_mode_without_preflight(tmp_path: Path, mock_dify: MockDifyProcess) -> None:
    code, result = run_report(tmp_path, conversation_plan(tmp_path, mock_dify, {}), "--no-preflight")
    assert code == 0 and len(result["turns"]) == 3
    assert mock_dify.stats()["paths"].get("/v1/info") == 1


def test_preflight_refuses_what_the_app_cannot_take(tmp_path: Path, mock_dify: MockDifyProcess) -> None:
    wrong = conversation_plan(tmp_path, mock_dify, {}, app_mode="completion")
    done = cli("validate", str(wrong), "--remote", env={"DIFY_CHAT_KEY": "app-chat"})
    assert done.returncode == 2
    assert "is a 'chat' app, but the plan says app_mode: completion" in done.stdout + done.stderr
    agent = write_plan(tmp_path, {"name": "a", "workflows": [
        {"id": "a", "base_url": mock_dify.base_url, "api_key_env": "DIFY_CHAT_KEY", "app_mode": "agent",
         "response_mode": "blocking"}], "datasets": [{"name": "d", "cases": [{"query": "q"}]}]}, "agent.yaml")
    done = cli("validate", str(agent))
    assert done.returncode == 2 and "only in streaming mode" in done.stdout + done.stderr


def test_file_inputs_are_checked_against_the_apps_parameters(tmp_path: Path) -> None:
    form = [{"file": {"variable": "photo", "label": "Photo", "required": True, "allowed_file_types": ["image"],
                      "allowed_file_upload_methods": ["local_file"], "allowed_file_extensions": []}}]
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4")
    plan = write_plan(tmp_path, {"name": "f", "workflows": [
        {"id": "w", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "DIFY_KEY"}],
        "datasets": [{"name": "d", "cases": [{"id": "pdf", "inputs": {"photo": {"file": "doc.pdf"}}},
                                             {"id": "gone", "inputs": {"photo": {"file": "nope.png"}}}]}]})
    done = cli("validate", str(plan))
    assert done.returncode == 2 and "inputs.photo: file: 'nope.png' does not exist" in done.stdout + done.stderr
    with MockDifyProcess("--api-key", "app-form", "--input-form", json.dumps(form)) as mock:
        text = plan.read_text().replace("http://127.0.0.1:1/v1", mock.base_url).replace("nope.png", "doc.pdf")
        plan.write_text(text)
        done = cli("validate", str(plan), "--remote", env={"DIFY_KEY": "app-form"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "input 'photo': 'doc.pdf' is a document file; the app takes image" in done.stdout + done.stderr


def test_a_conversation_that_fails_keeps_the_turns_dify_answered(tmp_path: Path, mock_dify: MockDifyProcess) -> None:
    plan = conversation_plan(tmp_path, mock_dify, {"inputs": {"_mock": {"fail_times": 10}}})
    code, result = run_report(tmp_path, plan)
    assert code == 1 and result["status"] == "error"
    assert [t["query"] for t in result["turns"]] == ["one"]
    assert result["tokens_used"] == result["turns"][0]["tokens_used"] > 0


def test_rate_control_counts_every_turn_of_a_conversation(tmp_path: Path, mock_dify: MockDifyProcess) -> None:
    """rate_control limits requests: a conversation's later turns wait for their instants too
    (worker/run_control.py, RunGate.pace). Unpaced, six 30-ms turns land in one second."""
    plan = write_plan(tmp_path, {
        "name": "paced", "workflows": [{"id": "bot", "base_url": mock_dify.base_url, "api_key_env": "DIFY_CHAT_KEY",
                                        "app_mode": "chat"}],
        "datasets": [{"name": "d", "cases": [{"id": "talk", "turns": [{"query": f"t{i}"} for i in range(6)]}]}],
        "execution": {"rate_control": {"requests_per_second": 2}}})
    code, result = run_report(tmp_path, plan, "--no-preflight")
    assert code == 0 and len(result["turns"]) == 6
    per_second = mock_dify.stats()["requests_per_second"]
    assert sum(per_second.values()) == 6 and max(per_second.values()) <= 3, per_second
