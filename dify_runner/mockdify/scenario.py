"""What one mocked workflow run does, and the Dify-shaped JSON it produces.

A case steers the mock through the reserved input key ``_mock`` (removed before the
inputs are echoed), for example ``{"_mock": {"status": "failed"}}`` or
``{"_mock": {"error": {"http_status": 429, "code": "too_many_requests"}, "retry_after": 2}}``.
Shapes follow ../shared/dify-api.md (sections 2.2, 3.2-3.4 and 4).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RESERVED_KEY = "_mock"

ERROR_MESSAGES = {
    "invalid_param": "Arg user must be provided.",
    "not_workflow_app": "Please check if your app mode matches the right API route.",
    "app_unavailable": "App unavailable, please check your app configurations.",
    "provider_not_initialize": "No valid model provider credentials found. Please go to Settings -> Model Provider "
    "to complete your provider credentials.",
    "provider_quota_exceeded": "Your quota for Dify Hosted OpenAI has been exhausted. Please go to Settings -> "
    "Model Provider to complete your own provider credentials.",
    "model_currently_not_support": "Dify Hosted OpenAI trial currently not support the GPT-4 model.",
    "completion_request_error": "Completion request failed.",
    "unauthorized": "Access token is invalid",
    "not_found": "Workflow run not found.",
    "too_many_requests": "Too many requests. Please try again later.",
    "rate_limit_error": "Workflow execution quota limit reached for tenant 5d2f6a4e-mock",
    "internal_server_error": "Internal Server Error.",
}


class MockError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    http_status: int = Field(400, ge=400, le=599)
    code: str = "invalid_param"
    message: str | None = None

    def body(self) -> dict[str, Any]:
        return error_body(self.http_status, self.code, self.message)


class Behaviour(BaseModel):
    """How a case's run behaves; every field optional."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float | None = Field(None, ge=0)
    # paused: the run waits at a Human Input node (newest Dify): the stream ends with
    # workflow_paused, a blocking call answers data.status "paused".
    status: Literal["succeeded", "failed", "stopped", "partial-succeeded", "paused"] | None = None
    error: MockError | None = None  # an HTTP error before any run starts
    stream_error: MockError | None = None  # an `error` event after the run started
    retry_after: float | None = Field(None, ge=0)
    hang: bool = False  # accept, then never answer
    # The first N runs of this case (its input `query`) answer HTTP 500 before starting.
    fail_times: int = Field(0, ge=0)
    # Chat apps: the first N messages with this query are answered, then their conversation is
    # forgotten (its next turn gets 404 "Conversation Not Exists.").
    forget_times: int = Field(0, ge=0)
    trickle: bool = False  # answer one byte at a time, forever
    garbage: bool = False  # a 200 whose body is not Dify's protocol
    truncate: bool = False  # the stream stops before workflow_finished
    reset: bool = False  # the connection breaks mid-stream (no end of the chunked body)
    price_format: Literal["string", "number"] | None = None
    llm_nodes: int = Field(1, ge=0, le=50)
    tokens_per_node: int = Field(120, ge=0)
    price_per_node: str = "0.0003260"
    outputs: dict[str, Any] | None = None


# api/core/app/entities/queue_entities.py: QueueStopEvent.StopBy.USER_MANUAL's reason, which
# Dify also publishes when a run outlives APP_MAX_EXECUTION_TIME
# (api/core/app/apps/base_app_queue_manager.py, listen()).
STOPPED_BY_USER = "Stopped by user."


def error_body(http_status: int, code: str, message: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message or ERROR_MESSAGES.get(code, code), "status": http_status}


def new_id() -> str:
    return str(uuid.uuid4())


class MockRun:
    """One workflow run: ids, inputs, the outcome and its timings."""

    def __init__(self, inputs: dict[str, Any], user: str, behaviour: Behaviour, status: str, price_format: str) -> None:
        self.task_id = new_id()
        self.run_id = new_id()
        self.workflow_id = "7c3e33d4-2a8b-4e5f-9b1a-d3c6e8f12345"
        self.inputs = inputs
        self.user = user
        self.behaviour = behaviour
        self.status = status
        self.price_format = behaviour.price_format or price_format
        self.created_at = int(time.time())
        self.finished_at: int | None = None
        self.elapsed = 0.0
        self.stop_requested = False
        # When the run ends in "Dify" whether or not a client still listens (Dify goes on
        # running a workflow whose caller went away); None: never (hang, paused).
        self.started = time.monotonic()
        self.ends_at: float | None = None
        # When the server's max_execution_time stops it, as Dify's APP_MAX_EXECUTION_TIME does.
        self.stops_at: float | None = None
        text = " ".join(str(v) for v in inputs.values())
        self.answer = f"mock answer: {text}"[:2000]

    @property
    def outputs(self) -> dict[str, Any]:
        if self.status == "failed":
            return {}
        return self.behaviour.outputs if self.behaviour.outputs is not None else {"answer": self.answer}

    @property
    def error(self) -> str | None:
        return "mock node failed: LLM returned an error" if self.status == "failed" else (
            STOPPED_BY_USER if self.status == "stopped" else None)

    def time_limited(self) -> bool:
        """The run outlived the time limit: "Dify" stops it itself, as a user stop."""
        return self.stops_at is not None and time.monotonic() >= self.stops_at

    def running(self, now: float) -> bool:
        """Whether the run still goes on in the mock's "Dify" (a client may have left)."""
        if self.stop_requested or self.finished_at is not None or self.status == "paused":
            return False
        return self.ends_at is None or now < self.ends_at

    @property
    def total_tokens(self) -> int:
        return self.behaviour.llm_nodes * self.behaviour.tokens_per_node

    @property
    def total_steps(self) -> int:
        return self.behaviour.llm_nodes + 2

    def finish(self, started: float) -> None:
        self.elapsed = round(time.monotonic() - started, 6)
        self.finished_at = int(time.time())

    def price(self) -> str | float:
        return self.behaviour.price_per_node if self.price_format == "string" else float(self.behaviour.price_per_node)

    def finished_data(self) -> dict[str, Any]:
        return {
            "id": self.run_id, "workflow_id": self.workflow_id, "status": self.status, "outputs": self.outputs,
            "error": self.error, "elapsed_time": self.elapsed, "total_tokens": self.total_tokens,
            "total_steps": self.total_steps, "created_at": self.created_at, "finished_at": self.finished_at,
        }

    def blocking_body(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "workflow_run_id": self.run_id, "data": self.finished_data()}

    def detail_body(self) -> dict[str, Any]:
        data = self.finished_data()
        data["inputs"] = json.dumps(self.inputs)  # a JSON *string* in Dify's run detail
        return {key: data[key] for key in ("id", "workflow_id", "status", "inputs", "outputs", "error",
                                           "total_steps", "total_tokens", "created_at", "finished_at",
                                           "elapsed_time")}

    # -- streaming events --------------------------------------------------------------

    def envelope(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"event": event, "task_id": self.task_id, "workflow_run_id": self.run_id, "data": data}

    def workflow_started(self) -> dict[str, Any]:
        sys_inputs = {"sys.files": [], "sys.user_id": self.user, "sys.app_id": new_id(),
                      "sys.workflow_id": self.workflow_id, "sys.workflow_run_id": self.run_id}
        return self.envelope("workflow_started", {
            "id": self.run_id, "workflow_id": self.workflow_id, "inputs": {**self.inputs, **sys_inputs},
            "created_at": self.created_at, "reason": "initial"})

    def node(self, index: int, node_type: str, title: str) -> dict[str, Any]:
        return {"id": new_id(), "node_id": str(1734941806037 + index), "node_type": node_type, "title": title,
                "index": index, "predecessor_node_id": str(1734941806036 + index) if index > 1 else None,
                "inputs": None, "inputs_truncated": False, "created_at": int(time.time()), "extras": {},
                "iteration_id": None, "loop_id": None}

    def node_finished(self, node: dict[str, Any], llm: bool, failed: bool = False) -> dict[str, Any]:
        metadata = None
        outputs: dict[str, Any] = {}
        if llm:
            metadata = {"total_tokens": self.behaviour.tokens_per_node, "total_price": self.price(), "currency": "USD"}
            outputs = {"text": self.answer, "usage": {"total_tokens": self.behaviour.tokens_per_node,
                                                      "total_price": self.price(), "currency": "USD"}}
        return self.envelope("node_finished", {
            **node, "inputs": {}, "process_data": None, "process_data_truncated": False, "outputs": outputs,
            "outputs_truncated": False, "status": "failed" if failed else "succeeded",
            "error": self.error if failed else None, "elapsed_time": 0.01, "execution_metadata": metadata,
            "finished_at": int(time.time()), "files": []})

    def text_chunk(self, text: str, node: dict[str, Any]) -> dict[str, Any]:
        return self.envelope("text_chunk", {"text": text, "from_variable_selector": [node["node_id"], "text"]})

    def workflow_finished(self) -> dict[str, Any]:
        data = self.finished_data()
        data.update(created_by={"id": new_id(), "user": self.user}, exceptions_count=0, files=[])
        return self.envelope("workflow_finished", data)

    def workflow_paused(self) -> dict[str, Any]:
        node = self.node(2, "human-input", "Human Input")
        return self.envelope("workflow_paused", {
            "workflow_run_id": self.run_id, "status": "paused", "paused_nodes": [node["node_id"]],
            "reasons": [{"type": "human_input", "node_id": node["node_id"]}], "outputs": {},
            "elapsed_time": self.elapsed, "total_tokens": 0, "total_steps": 2, "created_at": self.created_at})

    def stream_error(self, error: MockError) -> dict[str, Any]:
        # Dify's error event carries no `data` and no `task_id`.
        return {"event": "error", "workflow_run_id": self.run_id, **error.body()}
