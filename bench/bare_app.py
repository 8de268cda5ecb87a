"""The baseline: a bare Celery app with the same settings as dify-runner's, and tasks that
do the least a case can do (nothing, or one HTTP POST). Workers run it with
``celery -A bench.bare_app worker``; bench/bare_producer.py publishes to it.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from celery import Celery

BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("bare", broker=BROKER, backend=BROKER)
# dify-runner's delivery settings, so the two differ only in what a task does.
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)

_client: httpx.Client | None = None


def client() -> httpx.Client:
    global _client
    if _client is None:
        size = int(os.environ.get("BENCH_POOL", "100"))
        _client = httpx.Client(limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                               timeout=30)
    return _client


@app.task(name="bare.noop")
def noop(case: dict[str, Any]) -> dict[str, Any]:
    return {"id": case["id"], "status": "succeeded"}


@app.task(name="bare.post")
def post(case: dict[str, Any], url: str, key: str) -> dict[str, Any]:
    response = client().post(url, json={"inputs": case["inputs"], "user": "bench", "response_mode": "blocking"},
                             headers={"Authorization": f"Bearer {key}"})
    data = response.json()["data"]
    return {"id": case["id"], "status": data["status"], "tokens": data.get("total_tokens")}
