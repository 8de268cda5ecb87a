"""LLM as judge: a Dify workflow (``role: judge``) or an OpenAI-compatible endpoint grades an answer.

The judge receives the rubric, the question (the case's inputs), the answer and, when the
plan gives one, the expected answer; it returns a score in 0..1 and a reason.

- A Dify judge is called like any workflow, by the same client with the key from its
  ``api_key_env``, with inputs ``rubric``, ``query`` (the case's inputs as JSON), ``answer``
  and ``expected``; its outputs must hold ``score`` and ``reason``.
- An OpenAI-compatible judge gets one chat completion asking for ``{"score", "reason"}`` as
  JSON; its tokens come from ``usage`` and its cost from the plan's prices.

A judge call that fails (transport, 5xx, throttled, garbage) is tried again within the
attempt with the plan's retry policy, never by repeating the app's call; when every try
fails the case ends ERROR ("judge unavailable"), not FAILED: nothing was judged.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from ...config.checks import JudgeCheck, OpenAIJudge
from ...config.plan import RetryPolicy, WorkflowConfig
from ...config.settings import key_variable_refusal
from ..deadline import Deadline
from ..dify_client import DifyClient
from ..models import CheckResult
from .similarity import CheckUnavailable

JudgeTarget = WorkflowConfig | OpenAIJudge
SYSTEM_PROMPT = (
    "You grade an AI assistant's answer. You are given a JSON object with the rubric, the question, "
    "the answer and possibly the expected answer. Follow the rubric. Reply with one JSON object and "
    'nothing else: {"score": <a number from 0 to 1>, "reason": "<one sentence>"}.'
)
_OBJECT = re.compile(r"\{.*\}", re.S)
_http: httpx.Client | None = None
_http_lock = threading.Lock()


def judge_check(check: JudgeCheck, target: JudgeTarget, question: dict[str, Any], answer: str, deadline: Deadline,
                dify: Callable[[], DifyClient], policy: RetryPolicy,
                sleep: Callable[[float], None] = time.sleep) -> CheckResult:
    """Ask ``target`` to grade ``answer``; tries up to ``policy.max_attempts`` times."""
    api_key = _key(target)
    last = ""
    for attempt in range(1, policy.max_attempts + 1):
        try:
            if isinstance(target, OpenAIJudge):
                score, reason, tokens, cost = _ask_openai(target, api_key, check, question, answer, deadline)
            else:
                score, reason, tokens, cost = _ask_dify(target, api_key, check, question, answer, deadline, dify)
            passed = score >= check.pass_score
            return CheckResult(name="judge", passed=passed, score=score, tokens=tokens, cost=cost,
                               reason=f"judge {check.by}: {score:.2f} {'>=' if passed else '<'} "
                                      f"{check.pass_score:g}: {reason}")
        except CheckUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure of the judge's call is tried again
            last = f"{type(exc).__name__}: {exc}"
        wait = policy.countdown(attempt)
        if attempt == policy.max_attempts or deadline.remaining() <= wait:
            break
        sleep(wait)
    raise CheckUnavailable(f"judge {check.by!r} unavailable after {attempt} tries: {last}")


def _key(target: JudgeTarget) -> str:
    name = target.api_key_env
    if name is None:
        return ""
    refusal = key_variable_refusal(name, os.environ)
    if refusal is not None:
        raise CheckUnavailable(f"judge {target.id!r}: api_key_env {name!r} {refusal}")
    value = os.environ.get(name)
    if not value:
        raise CheckUnavailable(f"environment variable {name} (the API key of judge {target.id!r}) "
                               "is not set in this worker")
    return value


def parse_verdict(value: Any, where: str) -> tuple[float, str]:
    """(score, reason) from a judge's JSON object; ValueError naming what is wrong."""
    if isinstance(value, str):
        found = _OBJECT.search(value)
        try:
            value = json.loads(found.group()) if found else None
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, dict) or "score" not in value:
        raise ValueError(f"{where} is not a JSON object with a score: {str(value)[:200]!r}")
    try:
        score = float(value["score"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: score {value['score']!r} is not a number") from None
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"{where}: score {score:g} is outside 0..1")
    return score, str(value.get("reason") or "")


def _ask_dify(target: WorkflowConfig, api_key: str, check: JudgeCheck, question: dict[str, Any], answer: str,
              deadline: Deadline, dify: Callable[[], DifyClient]) -> tuple[float, str, int, float | None]:
    inputs = {"rubric": check.rubric, "query": json.dumps(question, ensure_ascii=False), "answer": answer,
              "expected": check.expected or ""}
    value = dify().run_workflow(target, api_key, inputs, deadline)
    if str(value.get("status") or "succeeded") not in ("succeeded", "partial-succeeded"):
        raise ValueError(f"the judge workflow ended {value.get('status')}: {value.get('error')}")
    score, reason = parse_verdict(value.get("outputs") or {}, f"judge workflow {target.id!r}'s outputs")
    return score, reason, int(value.get("total_tokens") or 0), value.get("cost")


def _client() -> httpx.Client:
    global _http
    with _http_lock:
        if _http is None:
            _http = httpx.Client(limits=httpx.Limits(max_connections=64))
        return _http


def _ask_openai(target: OpenAIJudge, api_key: str, check: JudgeCheck, question: dict[str, Any], answer: str,
                deadline: Deadline) -> tuple[float, str, int, float | None]:
    content = {"rubric": check.rubric, "question": question, "answer": answer}
    if check.expected is not None:
        content["expected"] = check.expected
    body = {"model": target.model, "temperature": target.temperature, "messages": [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": json.dumps(content, ensure_ascii=False)}]}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    remaining = max(0.1, deadline.remaining())
    response = _client().post(f"{target.base_url}/chat/completions", json=body, headers=headers,
                              timeout=httpx.Timeout(remaining, connect=min(10.0, remaining)))
    if response.status_code != 200:
        raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
    reply = response.json()
    try:
        text = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"not a chat completion: {response.text[:200]!r}") from None
    score, reason = parse_verdict(text, f"judge {target.id!r}'s reply")
    usage = reply.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cost = (prompt * target.price_per_million_input + completion * target.price_per_million_output) / 1e6
    return score, reason, int(usage.get("total_tokens") or prompt + completion), round(cost, 10)
