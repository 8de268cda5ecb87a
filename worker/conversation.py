"""A conversation case: its turns go in order to one chat app, each with the conversation_id
Dify returned for the first; the case passes when every turn's checks (and the case's own,
over the last answer and the conversation's totals) pass.

Retries, and why: each turn that Dify answered is kept in the run's Redis state
(``run:{id}:conversation:{task_id}``) as it ends. A turn that fails (a 5xx, a timeout, a
throttle) fails the attempt, and the next attempt (Celery's retry, or a redelivery after a
worker died) sends **that turn again in the same conversation**: the earlier turns are
already in Dify's memory, and sending them again would give the app a conversation the plan
never wrote. When Dify no longer has the conversation (404 "Conversation Not Exists.", 400
``conversation_completed``: ``api/controllers/service_api/app/completion.py``), the kept turns
are dropped and the next attempt **starts the whole conversation again**; the result says so
(``metadata.conversation_restarts``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
from pydantic import BaseModel, Field

from ..config.expectations import Expectations
from ..config.manifest import Task
from ..config.plan import TurnConfig
from .dify.errors import DifyAPIError
from .exceptions import TaskExecutionException
from .models import CheckResult, TestResult, TestStatus, TurnResult, utcnow
from .store import run_key

# Dify's answers when the conversation is gone (NotFound, ConversationCompletedError).
GONE_CODES = frozenset({"not_found", "conversation_completed"})

SendTurn = Callable[[TurnConfig, str | None], dict[str, Any]]
Grade = Callable[[Expectations, TestResult, float], list[CheckResult]]


class ConversationProgress(BaseModel):
    conversation_id: str | None = None
    turns: list[TurnResult] = Field(default_factory=list)
    restarts: int = 0
    restart_reason: str | None = None


class ConversationState:
    """Where a conversation's progress is kept between attempts (None: in this attempt only)."""

    def __init__(self, client: redis.Redis | None, ttl: int) -> None:
        self.redis = client
        self.ttl = ttl

    def load(self, run_id: str, task_id: str) -> ConversationProgress:
        raw = self.redis.get(run_key(run_id, "conversation", task_id)) if self.redis is not None else None
        return ConversationProgress.model_validate_json(raw) if raw else ConversationProgress()

    def save(self, run_id: str, task_id: str, progress: ConversationProgress) -> None:
        if self.redis is not None:
            self.redis.set(run_key(run_id, "conversation", task_id), progress.model_dump_json(), ex=self.ttl)

    def clear(self, run_id: str, task_id: str) -> None:
        if self.redis is not None:
            self.redis.delete(run_key(run_id, "conversation", task_id))


def run_conversation(run_id: str, task: Task, attempt: int, state: ConversationState, send: SendTurn,
                     grade: Grade) -> dict[str, Any]:
    """Send the turns not sent yet, grade each, and return the case's execution dict (the last
    answer's outputs, the turns' summed figures, ``turns``)."""
    assert task.turns
    progress = state.load(run_id, task.task_id)
    for index in range(len(progress.turns), len(task.turns)):
        turn = task.turns[index]
        try:
            answer = send(turn, progress.conversation_id)
        except BaseException as exc:
            # The turns that passed stay in the case's result if this attempt is its last.
            exc.turns = list(progress.turns)  # type: ignore[attr-defined]
            if not (isinstance(exc, DifyAPIError) and progress.conversation_id and exc.code in GONE_CODES):
                raise
            reason = (f"turn {index + 1}: Dify no longer has conversation {progress.conversation_id} "
                      f"({exc}); the next attempt starts the whole conversation again")
            state.save(run_id, task.task_id, ConversationProgress(restarts=progress.restarts + 1,
                                                                  restart_reason=reason))
            gone = TaskExecutionException(reason, retryable=True)
            gone.turns = exc.turns  # type: ignore[attr-defined]
            raise gone from None
        result = _turn_result(index + 1, turn, answer, attempt)
        if turn.expect is not None:
            inputs = {**task.parameters, **turn.inputs, "query": turn.query}
            checked = TestResult(workflow_id=task.workflow_id, execution_id=task.task_id, timestamp=utcnow(),
                                 status=TestStatus.SUCCESS, tokens_used=result.tokens_used, cost=result.cost,
                                 inputs=inputs, outputs=answer.get("outputs") or {})
            result.checks = [c.model_copy(update={"turn": index + 1})
                             for c in grade(turn.expect, checked, result.latency)]
            result.passed = all(c.passed for c in result.checks)
        progress.conversation_id = progress.conversation_id or result.conversation_id
        progress.turns.append(result)
        state.save(run_id, task.task_id, progress)
    state.clear(run_id, task.task_id)
    return _case_result(progress)


def partial_result(task: Task, status: TestStatus, started_at: datetime, turns: list[TurnResult]) -> TestResult:
    """The result of a case that returned nothing: its inputs, so reports show what was sent, and
    for a conversation the turns Dify answered before it failed (their tokens and cost were spent)."""
    return TestResult(workflow_id=task.workflow_id, execution_id=task.task_id, timestamp=started_at, status=status,
                      inputs=task.parameters, turns=turns, tokens_used=sum(t.tokens_used for t in turns),
                      cost=_total_cost(turns))


def _turn_result(index: int, turn: TurnConfig, answer: dict[str, Any], attempt: int) -> TurnResult:
    outputs = answer.get("outputs") or {}
    metadata = {k: answer[k] for k in ("agent_thoughts", "message_files", "workflow_run_id", "dify_task_id")
                if answer.get(k)}
    return TurnResult(index=index, query=turn.query, answer=outputs.get("answer"), latency=answer.get("latency") or 0.0,
                      ttft=answer.get("ttft"), tokens_used=int(answer.get("total_tokens") or 0),
                      cost=answer.get("cost"), conversation_id=answer.get("conversation_id"),
                      message_id=answer.get("message_id"), attempt=attempt, metadata=metadata)


def _case_result(progress: ConversationProgress) -> dict[str, Any]:
    turns = progress.turns
    last = turns[-1]
    cost = _total_cost(turns)
    result: dict[str, Any] = {
        "status": "succeeded",
        "outputs": {"answer": last.answer or ""},
        "total_tokens": sum(t.tokens_used for t in turns),
        "cost": None if cost is None else round(cost, 10),
        "latency": round(sum(t.latency for t in turns), 6),
        "ttft": turns[0].ttft,
        "conversation_id": progress.conversation_id,
        "turns": [t.model_dump(mode="json") for t in turns],
    }
    if progress.restarts:
        result["conversation_restarts"] = progress.restarts
        result["conversation_restart_reason"] = progress.restart_reason
    return result


def _total_cost(turns: list[TurnResult]) -> float | None:
    """The turns' summed cost; unknown (None) when one turn's is, never counted as free."""
    costs = [t.cost for t in turns]
    return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)
