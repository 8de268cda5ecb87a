"""Dify's workflow API: ``POST /workflows/run``, blocking and streaming.

Shapes: ``WorkflowAppBlockingResponse`` and the workflow stream events in
``api/core/app/entities/task_entities.py`` (langgenius/dify); ``workflow_paused`` is the newest
Dify's Human Input pause.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import DifyPausedError, DifyServerError, DifyStoppedError, json_object, stream_error

PATH = "/workflows/run"
STOP_PATH = "/workflows/tasks/{task_id}/stop"


def check_final_status(parsed: dict[str, Any]) -> None:
    """Statuses that end the case here, whatever the plan expects."""
    status = parsed.get("status")
    run = parsed.get("workflow_run_id") or "?"
    if status == "paused":
        raise DifyPausedError(
            f"workflow paused: it waits for human input (Dify run {run}); dify-runner cannot answer a Human "
            "Input node, so the case ends here and is not retried (a retry would leave another paused run)")
    if status == "stopped":
        raise DifyStoppedError(
            f"Dify stopped the run although dify-runner did not ask ({parsed.get('error') or 'no reason given'}): "
            "Dify reports its own time limit (APP_MAX_EXECUTION_TIME) as a user stop; not retried, the next "
            "attempt would run as long")




def parse_blocking(raw: bytes) -> dict[str, Any]:
    body = json_object(raw, "blocking response")
    data = body.get("data")
    if not isinstance(data, dict) or "status" not in data:
        raise DifyServerError(f"blocking response has no data.status: {raw[:200]!r}")
    return {
        "workflow_run_id": body.get("workflow_run_id"),
        "dify_task_id": body.get("task_id"),
        "status": data.get("status"),
        "outputs": data.get("outputs") or {},
        "error": data.get("error"),
        "elapsed_time": data.get("elapsed_time"),
        "total_tokens": data.get("total_tokens") or 0,
        "total_steps": data.get("total_steps") or 0,
        # The blocking API carries no price: the cost is unknown, not zero.
        "cost": None,
        "currency": None,
    }


def parse_stream(
    stream: Iterator[dict[str, Any]], started: float, on_started: Callable[[str], None] | None,
    result: dict[str, Any],
) -> dict[str, Any]:
    """Read a workflow run's events (WorkflowAppStreamResponse) into ``result``."""
    cost = Decimal(0)
    priced = False
    for event in stream:
        if result["time_to_first_event"] is None:
            result["time_to_first_event"] = round(time.monotonic() - started, 6)
        kind = event.get("event")
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        if kind == "workflow_started":
            result["workflow_run_id"] = event.get("workflow_run_id")
            result["dify_task_id"] = event.get("task_id")
            if on_started is not None and result["dify_task_id"]:
                on_started(str(result["dify_task_id"]))
        elif kind == "text_chunk" and result["ttft"] is None:
            result["ttft"] = round(time.monotonic() - started, 6)
        elif kind == "node_finished":
            metadata = data.get("execution_metadata") or {}
            price = metadata.get("total_price")
            if price is not None:
                try:
                    cost += Decimal(str(price))
                except InvalidOperation:
                    raise DifyServerError(f"node_finished has a price that is not a number: {price!r}") from None
                priced = True
                result["currency"] = metadata.get("currency") or result["currency"]
        elif kind == "error":  # the run ended in Dify with this error
            result["ended"] = True
            raise stream_error(event)
        elif kind == "workflow_paused":  # newest Dify: the stream ends here, no workflow_finished
            result.update(workflow_run_id=event.get("workflow_run_id") or result.get("workflow_run_id"),
                          status="paused", outputs=data.get("outputs") or {}, error=None,
                          total_tokens=data.get("total_tokens") or 0, total_steps=data.get("total_steps") or 0)
            result["cost"] = float(cost) if priced else 0.0
            return result
        elif kind == "workflow_finished":
            result.update(
                workflow_run_id=event.get("workflow_run_id") or result.get("workflow_run_id"),
                status=data.get("status"),
                outputs=data.get("outputs") or {},
                error=data.get("error"),
                elapsed_time=data.get("elapsed_time"),
                total_tokens=data.get("total_tokens") or 0,
                total_steps=data.get("total_steps") or 0,
            )
            result["cost"] = float(cost) if priced else 0.0
            return result
    raise DifyServerError("stream ended before workflow_finished")
