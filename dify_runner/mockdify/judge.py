"""The mock as an LLM judge, deterministic for tests and the demo.

As a Dify judge workflow: a run whose inputs hold ``rubric`` and ``answer`` outputs
``score`` and ``reason``. As an OpenAI-compatible judge: ``POST /v1/chat/completions``
answers the same grade as JSON in the assistant's message. The grade is the share of the
expected answer's words found in the answer (1.0 without an expected answer, 0.0 for an
empty answer): no model, the same score every time.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .http import json_body

_WORD = re.compile(r"\w+")


def grade(answer: str, expected: str | None) -> tuple[float, str]:
    words = set(_WORD.findall(answer.lower()))
    if not words:
        return 0.0, "mock judge: the answer is empty"
    wanted = set(_WORD.findall((expected or "").lower()))
    if not wanted:
        return 1.0, "mock judge: an answer was given (no expected answer to compare)"
    found = len(words & wanted)
    return round(found / len(wanted), 4), f"mock judge: {found} of {len(wanted)} expected words in the answer"


def is_judge_run(inputs: dict[str, Any]) -> bool:
    return "rubric" in inputs and "answer" in inputs


def judge_outputs(inputs: dict[str, Any]) -> dict[str, Any]:
    score, reason = grade(str(inputs.get("answer") or ""), str(inputs.get("expected") or ""))
    return {"score": score, "reason": reason}


def chat_completion(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion grading the JSON in the last user message."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    text = str(user.get("content") or "")
    try:
        asked = json.loads(text)
    except ValueError:
        asked = {"answer": text}
    asked = asked if isinstance(asked, dict) else {"answer": str(asked)}
    score, reason = grade(str(asked.get("answer") or ""), asked.get("expected"))
    content = json.dumps({"score": score, "reason": reason})
    prompt = sum(len(_WORD.findall(str(m.get("content") or ""))) for m in messages)
    completion = len(_WORD.findall(content))
    return {
        "id": f"chatcmpl-mock-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
        "model": str(body.get("model") or "mock-judge"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


# The mock's key check: (the key, None) or (None, the refusal to send).
Authorize = Callable[[Request], tuple[str | None, Response | None]]


def judge_routes(authorize: Authorize) -> list[Route]:
    """``POST /v1/chat/completions`` and ``GET /v1/models``, OpenAI-compatible (not Dify APIs)."""

    async def completions(request: Request) -> Response:
        _, denied = authorize(request)
        if denied is not None:
            return denied
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return JSONResponse({"error": {"message": "messages is required", "type": "invalid_request_error"}}, 400)
        return JSONResponse(chat_completion(body))

    async def models(request: Request) -> Response:
        _, denied = authorize(request)
        return denied or JSONResponse({"object": "list", "data": [{"id": "mock-judge", "object": "model"}]})

    return [Route("/v1/chat/completions", completions, methods=["POST"]), Route("/v1/models", models, methods=["GET"])]
