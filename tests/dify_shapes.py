"""The response shapes of ../shared/dify-api.md, as models: field names and types.

Used to check that the mock answers like Dify. Unknown fields are allowed (Dify adds
fields between versions); documented ones must be present with the documented types.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

RunStatus = Literal["running", "succeeded", "failed", "stopped", "partial-succeeded", "paused"]


class Shape(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ErrorBody(Shape):  # section 4.1
    code: str
    message: str
    status: int


class FinishedData(Shape):  # section 2.2 / WorkflowFinishedData
    id: str
    workflow_id: str
    status: RunStatus
    outputs: dict[str, Any] | None
    error: str | None
    elapsed_time: float
    total_tokens: int
    total_steps: int
    created_at: int
    finished_at: int | None


class BlockingResponse(Shape):
    task_id: str
    workflow_run_id: str
    data: FinishedData


class WorkflowStartedData(Shape):
    id: str
    workflow_id: str
    inputs: dict[str, Any]
    created_at: int


class NodeStartedData(Shape):
    id: str
    node_id: str
    node_type: str
    title: str
    index: int
    predecessor_node_id: str | None
    inputs: dict[str, Any] | None
    created_at: int
    extras: dict[str, Any]


class ExecutionMetadata(Shape):
    total_tokens: int | None
    total_price: float | str
    currency: str


class NodeFinishedData(NodeStartedData):
    process_data: dict[str, Any] | None
    outputs: dict[str, Any] | None
    status: Literal["running", "succeeded", "failed", "stopped", "exception", "paused"]
    error: str | None
    elapsed_time: float
    execution_metadata: ExecutionMetadata | None
    finished_at: int
    files: list[Any]


class TextChunkData(Shape):
    text: str
    from_variable_selector: list[str]


class WorkflowFinishedData(FinishedData):
    created_by: dict[str, Any]
    exceptions_count: int | None
    files: list[Any]


class StreamEvent(Shape):  # section 3.2: the common envelope
    event: str
    task_id: str
    workflow_run_id: str
    data: dict[str, Any]


class StreamErrorEvent(Shape):  # `error`: no data, no task_id
    event: Literal["error"]
    workflow_run_id: str
    code: str
    status: int
    message: str


EVENT_DATA = {
    "workflow_started": WorkflowStartedData,
    "node_started": NodeStartedData,
    "node_finished": NodeFinishedData,
    "text_chunk": TextChunkData,
    "workflow_finished": WorkflowFinishedData,
}


class RunDetail(Shape):  # section 5
    id: str
    workflow_id: str
    status: RunStatus
    inputs: str | None  # a JSON string
    outputs: dict[str, Any] | None
    error: str | None
    total_steps: int
    total_tokens: int
    created_at: int
    finished_at: int | None
    elapsed_time: float


class Info(Shape):
    name: str
    description: str
    tags: list[str]
    mode: Literal["completion", "chat", "agent-chat", "advanced-chat", "workflow", "agent"]


class Parameters(Shape):
    user_input_form: list[dict[str, Any]]
    file_upload: dict[str, Any]
    system_parameters: dict[str, Any]
