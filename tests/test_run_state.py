"""The run store's lifecycle and its exact counters, against the test Redis."""

from __future__ import annotations

import socket
from datetime import datetime, timezone

import redis
from dify_runner.worker.run_control import Admission, RunGate
from dify_runner.worker.store import PUBLISHED, PUBLISHING, RunStore


def test_a_case_ends_once_however_often_it_is_delivered(store: RunStore, redis_url: str) -> None:
    store.create_run("r", "plan", 2, 1, datetime.now(timezone.utc))
    store.retry_scheduled("r", "wf/ds/a")
    assert store.progress("r")["retries_waiting"] == 1
    first = store.record_end("r", 0, "wf/ds/a", '{"first": true}', "failed", True)
    again = store.record_end("r", 0, "wf/ds/a", '{"second": true}', "succeeded", False)  # a redelivery
    assert first == 1 and again is None
    progress = store.progress("r")
    assert progress == {"failed": 1, "failures": 1, "retries": 1, "retries_waiting": 0}
    assert store.ended_results("r", 0) == {"wf/ds/a": b'{"first": true}'}
    assert store.final_statuses("r") == {"wf/ds/a": "failed"}
    gate = RunGate(redis.Redis.from_url(redis_url), 60)
    with gate.admit("r", "wf/ds/a", 5, None, "x", lambda: False, 1.0) as admission:
        assert admission is Admission.ENDED  # never a second call to Dify
    with gate.admit("r", "wf/ds/b", 5, None, "x", lambda: False, 1.0) as admission:
        assert admission is Admission.ADMITTED


def test_publishing_is_tracked_and_a_dead_publisher_is_seen(store: RunStore) -> None:
    store.create_run("r", "plan", 100, 10, datetime.now(timezone.utc))
    info = store.get_run("r")
    assert info is not None and info.publish_state == PUBLISHING and not info.publishing_incomplete
    store.mark_published("r", 4, 40)
    info = store.get_run("r")
    assert info is not None and (info.published_batches, info.published_cases) == (4, 40)
    # The mark of a process of this host that is gone (above pid_max): nobody publishes any more.
    store.redis.set("dify-runner:run:r:publisher", f"{socket.gethostname()}:{2**22 + 12345}")
    info = store.get_run("r")
    assert info is not None and info.publishing_incomplete
    store.end_publishing("r", PUBLISHED)
    info = store.get_run("r")
    assert info is not None and not info.publishing_incomplete and info.publisher is None
