"""The mock's chat and completion apps: ``POST /v1/chat-messages``, ``/v1/completion-messages``
and their ``/{task_id}/stop``, as langgenius/dify answers them.

- Routing by app mode (``api/controllers/service_api/app/completion.py``): a key whose app is
  not a chat app gets 400 ``not_chat_app`` on /chat-messages, not a completion app 400
  ``app_unavailable`` on /completion-messages; an unknown conversation_id 404 ``not_found``
  "Conversation Not Exists."; an agent app refuses blocking mode.
- Blocking answers: ``api/core/app/apps/chat/generate_response_converter.py`` (``event,
  task_id, id, message_id, conversation_id, mode, answer, metadata, created_at``).
- Stream events: ``api/core/app/entities/task_entities.py``: chat ``message`` chunks; agent
  ``agent_thought`` and ``agent_message`` chunks; chatflow ``workflow_started``, ``node_*``,
  ``message`` chunks, ``workflow_finished``; every one ends with ``message_end`` whose
  ``metadata.usage`` holds tokens, ``total_price`` (a decimal string), currency and latency.

The apps remember each conversation's earlier queries, and say so in their answer
(``mock answer: Q (turn 2; earlier: Q1)``), so a test can see that a conversation carried.
A file the run names (in ``files`` or an input) is checked and named in the answer.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .http import json_body
from .scenario import RESERVED_KEY, Behaviour, error_body

if TYPE_CHECKING:
    from .server import MockDify

CHAT_MODES = ("chat", "agent-chat", "advanced-chat")
PRICE_PER_TOKEN = 0.000002


@dataclass
class Conversation:
    id: str
    user: str
    queries: list[str] = field(default_factory=list)


@dataclass
class Message:
    """One message being answered: what the stream and the blocking body are made of."""

    mode: str
    query: str
    answer: str
    conversation_id: str | None
    task_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: int = field(default_factory=lambda: int(time.time()))
    stop_requested: bool = False

    def usage(self, latency: float) -> dict[str, Any]:
        prompt = 10 + len(self.query.split())
        completion = len(self.answer.split())
        total = prompt + completion
        return {"prompt_tokens": prompt, "prompt_unit_price": "0.002", "prompt_price_unit": "0.001",
                "prompt_price": f"{prompt * PRICE_PER_TOKEN:.7f}", "completion_tokens": completion,
                "completion_unit_price": "0.002", "completion_price_unit": "0.001",
                "completion_price": f"{completion * PRICE_PER_TOKEN:.7f}", "total_tokens": total,
                "total_price": f"{total * PRICE_PER_TOKEN:.7f}", "currency": "USD", "latency": round(latency, 6)}

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        head: dict[str, Any] = {"event": kind}
        if self.conversation_id is not None:
            head["conversation_id"] = self.conversation_id
        head.update(message_id=self.message_id, created_at=self.created_at, task_id=self.task_id)
        return {**head, **fields}

    def blocking_body(self, latency: float) -> dict[str, Any]:
        body = {"event": "message", "task_id": self.task_id, "id": self.message_id, "message_id": self.message_id,
                "mode": self.mode, "answer": self.answer, "metadata": {"usage": self.usage(latency)},
                "created_at": self.created_at}
        if self.conversation_id is not None:
            body["conversation_id"] = self.conversation_id
        return body


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class MessageApps:
    """The chat and completion routes over the mock's shared state (keys, stats, uploads)."""

    def __init__(self, mock: MockDify) -> None:
        self.mock = mock
        self.conversations: dict[str, Conversation] = {}
        self.by_task: dict[str, Message] = {}

    def _error(self, status: int, code: str, message: str | None = None) -> Response:
        return self.mock.reply(JSONResponse(error_body(status, code, message), status_code=status))

    async def chat(self, request: Request) -> Response:
        return await self._message(request, "chat")

    async def completion(self, request: Request) -> Response:
        return await self._message(request, "completion")

    async def _message(self, request: Request, api: str) -> Response:
        key, denied = self.mock.authorize(request)
        if denied is not None:
            return denied
        mode = self.mock.mode_of(key)
        if api == "chat" and mode not in CHAT_MODES:
            return self._error(400, "not_chat_app", "Please check if your app mode matches the right API route.")
        if api == "completion" and mode != "completion":
            return self._error(400, "app_unavailable")
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict):
            return self._error(400, "invalid_param", "inputs is required in input form")
        user, query, response_mode = body.get("user"), body.get("query"), body.get("response_mode") or "blocking"
        if not isinstance(user, str) or not user:
            return self._error(400, "invalid_param", "Arg user must be provided.")
        if api == "chat" and (not isinstance(query, str) or not query):
            return self._error(400, "invalid_param", "query is required")
        if mode == "agent-chat" and response_mode != "streaming":
            return self._error(400, "invalid_param", "Agent Chat App does not support blocking mode")
        inputs = dict(body["inputs"])
        try:
            behaviour = Behaviour.model_validate(inputs.pop(RESERVED_KEY, None) or {})
            names = self.mock.uploads.names(body.get("files") or [], *inputs.values())
        except (ValidationError, ValueError) as exc:
            return self._error(400, "invalid_param", str(exc))
        if behaviour.error is not None:
            return self._error(behaviour.error.http_status, behaviour.error.code, behaviour.error.message)
        throttled = self.mock.throttled()
        if throttled is not None:
            return throttled
        text = query if isinstance(query, str) and query else str(inputs.get("query") or "")
        if behaviour.fail_times and self.mock.failed[text] < behaviour.fail_times:
            self.mock.failed[text] += 1
            return self._error(500, "internal_server_error", "mock: fail_times")
        conversation = None
        if api == "chat":
            conversation, problem = self._conversation(body.get("conversation_id"), user)
            if problem is not None:
                return problem
        self.mock.stats.queries[text] += 1
        answer = self._answer(api, text, conversation, names)
        message = Message(mode, text, answer, conversation.id if conversation else None)
        if conversation is not None:
            conversation.queries.append(text)
            if behaviour.forget_times and self.mock.forgotten[text] < behaviour.forget_times:
                self.mock.forgotten[text] += 1
                self.forget(conversation.id)
        self.by_task[message.task_id] = message
        latency = self.mock.latency(behaviour)
        if response_mode == "blocking":
            self.mock.stats.enter_run()
            try:
                await asyncio.sleep(latency)
            finally:
                self.mock.stats.leave_run()
            return self.mock.reply(JSONResponse(message.blocking_body(latency)))
        return self.mock.reply(StreamingResponse(self._stream(message, latency, behaviour),
                                                 media_type="text/event-stream"))

    def _conversation(self, conversation_id: Any, user: str) -> tuple[Conversation | None, Response | None]:
        if not conversation_id:
            conversation = Conversation(str(uuid.uuid4()), user)
            self.conversations[conversation.id] = conversation
            return conversation, None
        conversation = self.conversations.get(str(conversation_id))
        if conversation is None or conversation.user != user:
            return None, self._error(404, "not_found", "Conversation Not Exists.")
        return conversation, None

    def forget(self, conversation_id: str) -> bool:
        """Drop a conversation (as a Dify user deleting it would): its next turn gets 404."""
        return self.conversations.pop(conversation_id, None) is not None

    @staticmethod
    def _answer(api: str, text: str, conversation: Conversation | None, files: list[str]) -> str:
        if api == "completion":
            answer = f"mock completion: {text}"
        else:
            answer = f"mock answer: {text}"
            if conversation is not None and conversation.queries:
                earlier = " | ".join(conversation.queries)
                answer += f" (turn {len(conversation.queries) + 1}; earlier: {earlier})"
        if files:
            answer += f" [files: {', '.join(files)}]"
        return answer[:4000]

    async def _stream(self, message: Message, latency: float, behaviour: Behaviour) -> AsyncIterator[bytes]:
        self.mock.stats.enter_run()
        started = time.monotonic()
        try:
            yield b"event: ping\n\n"
            chatflow = message.mode == "advanced-chat"
            run_id = str(uuid.uuid4())
            if chatflow:
                yield _sse(message.event("workflow_started", workflow_run_id=run_id,
                                         data={"id": run_id, "workflow_id": str(uuid.uuid4()), "inputs": {},
                                               "created_at": message.created_at}))
                yield _sse(message.event("node_started", workflow_run_id=run_id, data=_node("llm", "LLM")))
            if message.mode == "agent-chat":
                thought_id = str(uuid.uuid4())
                yield _sse(message.event("agent_thought", id=thought_id, position=1, thought="I should look it up",
                                         observation="", tool="mock_search", tool_labels={},
                                         tool_input=json.dumps({"mock_search": {"q": message.query}}),
                                         message_files=[]))
                yield _sse(message.event("agent_thought", id=thought_id, position=1, thought="I should look it up",
                                         observation="mock result", tool="mock_search", tool_labels={},
                                         tool_input=json.dumps({"mock_search": {"q": message.query}}),
                                         message_files=[]))
            await asyncio.sleep(latency)
            if message.stop_requested:
                return  # Dify ends a stopped message's stream after message_end; the client left anyway
            if behaviour.stream_error is not None:
                yield _sse(message.event("error", **error_body(behaviour.stream_error.http_status,
                                                              behaviour.stream_error.code,
                                                              behaviour.stream_error.message)))
                return
            chunk_event = "agent_message" if message.mode == "agent-chat" else "message"
            for index, word in enumerate(message.answer.split(" ")):
                yield _sse(message.event(chunk_event, id=message.message_id, answer=(" " if index else "") + word,
                                         from_variable_selector=None))
            if chatflow:
                yield _sse(message.event("node_finished", workflow_run_id=run_id,
                                         data={**_node("llm", "LLM"), "status": "succeeded", "elapsed_time": latency,
                                               "finished_at": int(time.time())}))
                yield _sse(message.event("workflow_finished", workflow_run_id=run_id,
                                         data={"id": run_id, "workflow_id": str(uuid.uuid4()), "status": "succeeded",
                                               "outputs": {"answer": message.answer}, "error": None,
                                               "elapsed_time": latency, "total_tokens": 0, "total_steps": 3,
                                               "created_at": message.created_at, "finished_at": int(time.time()),
                                               "files": []}))
            elapsed = time.monotonic() - started
            yield _sse(message.event("message_end", id=message.message_id,
                                     metadata={"usage": message.usage(elapsed)}, files=[]))
        finally:
            self.mock.stats.leave_run()

    async def stop(self, request: Request) -> Response:
        _, denied = self.mock.authorize(request)
        if denied is not None:
            return denied
        message = self.by_task.get(request.path_params["task_id"])
        self.mock.stats.stops += 1
        if message is not None:
            message.stop_requested = True
            self.mock.stats.stopped_runs += 1
        return self.mock.reply(JSONResponse({"result": "success"}))


def _node(node_type: str, title: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "node_id": "1734941806040", "node_type": node_type, "title": title,
            "index": 2, "predecessor_node_id": "1734941806039", "inputs": None, "created_at": int(time.time()),
            "extras": {}}
