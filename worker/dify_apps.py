"""One attempt against a Dify app, whatever its mode: a workflow run, a message to a chat or
completion app, or the turns of a conversation; file inputs resolved to Dify's mappings first.

The app's API comes from its workflow entry's ``app_mode``: set in the plan, or learned by the
producer's preflight from ``GET /info``. When neither said and Dify answers a workflow run
with 400 ``not_workflow_app`` (``api/controllers/service_api/app/workflow.py``), the worker asks
``/info`` itself (once per process and key) and sends the case to the right API in the same
attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config.manifest import Task
from ..config.plan import RateControl
from .conversation import ConversationState, Grade, run_conversation
from .deadline import Deadline
from .dify.errors import ConfigurationError, DifyAPIError
from .dify.files import RunFiles
from .dify_client import DifyClient
from .exceptions import TaskCancelledException, TaskExecutionException
from .messages import CaseMessage


@dataclass
class SharedState:
    """The run's state in Redis that a case may need: its staged files, its conversation's progress."""

    files: RunFiles | None = None
    conversations: ConversationState = field(default_factory=lambda: ConversationState(None, 0))
    # Waits for the rate limit's next instant (RunGate.pace): a conversation's later turns are
    # requests too, and rate_control counts requests, not cases.
    pace: Callable[[str, RateControl | None, str, Callable[[], bool]], bool] | None = None

    @classmethod
    def in_redis(cls, client: Any, ttl: int, pace: Callable[..., bool] | None = None) -> SharedState:
        return cls(RunFiles(client, ttl), ConversationState(client, ttl), pace)


def call_app(message: CaseMessage, task: Task, api_key: str, deadline: Deadline, client: DifyClient,
             cancelled: Callable[[], bool] | None, shared: SharedState, grade: Grade) -> dict[str, Any]:
    """The execution dict of one attempt of ``task`` against its app (see the module's doc)."""
    workflow = message.workflow

    def resolve(value: Any) -> Any:
        if shared.files is None:
            return value
        return shared.files.resolve(message.run_id, workflow, api_key, value, deadline, client.upload_file)

    if workflow.api == "workflow" and not task.turns:
        try:
            return client.run_workflow(workflow, api_key, _inputs(task.parameters, resolve), deadline,
                                       should_stop=cancelled, files=resolve(task.files))
        except DifyAPIError as exc:
            mode = client.app_mode(workflow, api_key) if exc.code == "not_workflow_app" else None
            if workflow.app_mode is not None or mode in (None, "workflow"):
                raise
            workflow = workflow.model_copy(update={"app_mode": mode})
    elif task.turns and workflow.app_mode is None:
        mode = client.app_mode(workflow, api_key)
        workflow = workflow.model_copy(update={"app_mode": mode}) if mode else workflow
    if task.turns:
        if workflow.api != "chat":
            raise ConfigurationError(f"case {task.case_id!r} is a conversation (turns), but workflow {workflow.id!r} "
                                     f"is a {workflow.app_mode or 'workflow'} app: only chat apps keep conversations")
        inputs = _inputs(task.parameters, resolve)
        sent = [0]

        def send(turn: Any, conversation_id: str | None) -> dict[str, Any]:
            if sent[0] and shared.pace is not None and not shared.pace(
                    message.run_id, message.policy.rate_control, workflow.base_url, cancelled or (lambda: False)):
                raise TaskCancelledException("run cancelled between two turns of the conversation")
            sent[0] += 1
            return client.send_message(workflow, api_key, turn.query, {**inputs, **_inputs(turn.inputs, resolve)},
                                       deadline, files=resolve(turn.files), conversation_id=conversation_id,
                                       should_stop=cancelled)

        return run_conversation(message.run_id, task, task.attempt_count, shared.conversations, send, grade)
    inputs = _inputs(task.parameters, resolve)
    query = task.query
    if query is None and workflow.api == "chat" and isinstance(inputs.get("query"), str):
        query = inputs.pop("query")  # a dataset's `query` column is a chat app's message
    if workflow.api == "chat" and not query:
        raise TaskExecutionException(f"case {task.case_id!r}: a chat app needs a message; give the case a query "
                                     "(or a `query` input, or turns)", retryable=False)
    return client.send_message(workflow, api_key, query, inputs, deadline, files=resolve(task.files),
                               should_stop=cancelled)


def _inputs(inputs: dict[str, Any], resolve: Callable[[Any], Any]) -> dict[str, Any]:
    return {key: resolve(value) for key, value in inputs.items()}


