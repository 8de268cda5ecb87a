"""Dify's message APIs: ``POST /chat-messages`` (chatbot, agent, chatflow) and
``POST /completion-messages``, blocking and streaming.

Shapes, in langgenius/dify: the request payloads ``ChatRequestPayload`` and
``CompletionRequestPayload`` (``api/controllers/service_api/app/completion.py``); the blocking
answers ``ChatbotAppBlockingResponse`` / ``CompletionAppBlockingResponse`` flattened by
``api/core/app/apps/chat/generate_response_converter.py`` (``event, task_id, id, message_id,
conversation_id, mode, answer, metadata, created_at``); the stream events of
``api/core/app/entities/task_entities.py`` (``StreamEvent``):

    message, agent_message        a chunk of the answer (``answer``): appended
    message_replace               the whole answer so far is replaced (output moderation)
    agent_thought                 an agent's step (thought, tool, tool_input, observation)
    message_file                  a file the app sent (type, url)
    message_end                   the end: ``metadata.usage`` (tokens, total_price, currency, latency)
    workflow_*/node_*             a chatflow's graph; its prices come again in message_end's usage
    error                         the message failed in Dify (``code``, ``message``, ``status``)
    ping, tts_message*            keep-alives and speech: ignored

Every event carries ``task_id`` (what ``/chat-messages/{task_id}/stop`` needs),
``message_id`` and, for chat apps, ``conversation_id``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import DifyServerError, json_object, stream_error

PATHS = {"chat": "/chat-messages", "completion": "/completion-messages"}
STOP_PATHS = {"chat": "/chat-messages/{task_id}/stop", "completion": "/completion-messages/{task_id}/stop"}
ANSWER_CHUNKS = frozenset({"message", "agent_message"})


def request_body(api: str, query: str | None, inputs: dict[str, Any], files: list[dict[str, Any]],
                 conversation_id: str | None, response_mode: str, user: str) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": inputs, "response_mode": response_mode, "user": user}
    if api == "chat":
        body["query"] = query or ""
        body["conversation_id"] = conversation_id or ""
        body["auto_generate_name"] = False  # a name costs Dify an LLM call per conversation
    elif query is not None:
        body["query"] = query  # a completion app's legacy `query`; its text usually comes in inputs
    if files:
        body["files"] = files
    return body


def parse_blocking(raw: bytes) -> dict[str, Any]:
    body = json_object(raw, "blocking response")
    if not isinstance(body.get("answer"), str):
        raise DifyServerError(f"blocking response has no answer: {raw[:200]!r}")
    result = _ids({}, body)
    result.update(status="succeeded", outputs={"answer": body["answer"]}, error=None)
    _usage(result, body.get("metadata"))
    return result


def parse_stream(
    stream: Iterator[dict[str, Any]], started: float, on_started: Callable[[str], None] | None,
    result: dict[str, Any],
) -> dict[str, Any]:
    """Read a message's events into ``result``: the answer assembled from its chunks, TTFT at the
    first chunk, tokens and cost from message_end."""
    answer: list[str] = []
    thoughts: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    for event in stream:
        now = time.monotonic()
        if result["time_to_first_event"] is None:
            result["time_to_first_event"] = round(now - started, 6)
        if not result.get("dify_task_id") and event.get("task_id"):
            result["dify_task_id"] = event["task_id"]
            if on_started is not None:
                on_started(str(event["task_id"]))
        _ids(result, event)
        kind = event.get("event")
        if kind in ANSWER_CHUNKS:
            chunk = event.get("answer")
            if isinstance(chunk, str) and chunk:
                if result["ttft"] is None:
                    result["ttft"] = round(now - started, 6)
                answer.append(chunk)
        elif kind == "message_replace":
            answer = [str(event.get("answer") or "")]
        elif kind == "agent_thought":
            thought = {k: event.get(k) for k in ("position", "thought", "tool", "tool_input", "observation")
                       if event.get(k) not in (None, "")}
            # Dify sends a step again as it grows: keep its latest state.
            thoughts = [t for t in thoughts if t.get("position") != thought.get("position")] + [thought]
        elif kind == "message_file":
            files.append({k: event.get(k) for k in ("id", "type", "belongs_to", "url") if event.get(k)})
        elif kind == "workflow_started":
            result["workflow_run_id"] = event.get("workflow_run_id")
        elif kind == "workflow_finished":
            data = event.get("data") if isinstance(event.get("data"), dict) else {}
            result["workflow_status"] = data.get("status")
            result["total_steps"] = data.get("total_steps") or 0
        elif kind == "error":
            result["ended"] = True
            raise stream_error(event)
        elif kind == "message_end":
            result.update(status="succeeded", outputs={"answer": "".join(answer)}, error=None)
            _usage(result, event.get("metadata"))
            if thoughts:
                result["agent_thoughts"] = sorted(thoughts, key=lambda t: t.get("position") or 0)
            if files:
                result["message_files"] = files
            return result
    raise DifyServerError("stream ended before message_end")


def _ids(result: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    for key in ("conversation_id", "message_id"):
        if event.get(key):
            result[key] = event[key]
    if event.get("task_id") and not result.get("dify_task_id"):
        result["dify_task_id"] = event["task_id"]
    return result


def _usage(result: dict[str, Any], metadata: Any) -> None:
    """Tokens, cost and Dify's latency from ``metadata.usage`` (``LLMUsage``: total_price is a
    decimal string). No usage: the cost is unknown, never 0."""
    usage = metadata.get("usage") if isinstance(metadata, dict) else None
    if not isinstance(usage, dict):
        result.update(total_tokens=0, cost=None, currency=None)
        return
    result["total_tokens"] = int(usage.get("total_tokens") or 0)
    result["prompt_tokens"] = int(usage.get("prompt_tokens") or 0)
    result["completion_tokens"] = int(usage.get("completion_tokens") or 0)
    price = usage.get("total_price")
    try:
        result["cost"] = float(Decimal(str(price))) if price is not None else None
    except InvalidOperation:
        raise DifyServerError(f"message_end has a price that is not a number: {price!r}") from None
    result["currency"] = usage.get("currency")
    if usage.get("latency") is not None:
        result["elapsed_time"] = usage.get("latency")
