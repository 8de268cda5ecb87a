"""The run store's lifecycle and its exact counters, against the test Redis."""

from __future__ import annotations

import json
import socket
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis
from dify_runner.worker.converter import ResultConverter
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


def test_live_messages_are_found_in_every_slice_of_the_queue_and_in_unacked(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from dify_runner.worker import live_messages as module

    monkeypatch.setattr(module, "SLICE", 3)  # many slices, and one cut at the list's end
    client = redis.Redis.from_url(redis_url)
    queued = [json.dumps({"body": "QUFB" * 50, "headers": {"id": f"r1:wf/ds/c{i}:{i // 4}"}}) for i in range(10)]
    client.lpush("dify-runner", *queued, json.dumps({"body": "", "headers": {"id": "r2:wf/ds/other:0"}}))
    client.lpush("dify-runner\x06\x163", json.dumps({"body": "", "headers": {"id": "r1:finish:9"}}))
    running = json.dumps({"body": "", "headers": {"id": "r1:wf/ds/running:5:r1"}})
    client.hset("unacked", "tag", json.dumps([json.loads(running), "", "dify-runner"]))
    app = SimpleNamespace(conf=SimpleNamespace(broker_url=redis_url, task_default_queue="dify-runner"))
    live = module.live_messages(app, "r1")
    assert live.cases == {f"wf/ds/c{i}" for i in range(10)} | {"wf/ds/running"}
    assert live.batches == {0, 1, 2, 5, 9}


def test_every_report_names_missing_results_and_the_exit_code_is_3(tmp_path: Path, store: RunStore,
                                                                  redis_url: str) -> None:
    from dify_runner.worker.models import TaskResult, TaskStatus
    from dify_runner.worker.statistics import BatchSummary
    from junitparser import JUnitXml

    from .conftest import cli

    store.create_run("short", "plan", 3, 1, datetime.now(timezone.utc))
    task = TaskResult(task_id="wf/ds/a", workflow_id="wf", task_status=TaskStatus.SUCCEEDED, run_id="short")
    summary = BatchSummary()
    summary.add("succeeded", 0.1, 0, 0.0)
    store.save_batch("short", 0, [task], [ResultConverter.convert(task)], summary)
    assert store.finalize("short")
    done = cli("report", "short", "--broker", redis_url, "--out", str(tmp_path))
    assert done.returncode == 3 and "2 of the plan's 3 cases have no result; no verdict" in done.stdout, done.stdout
    report = json.loads((tmp_path / "short" / "report.json").read_text())
    assert report["run"]["missing_results"] == 2 and report["run"]["passed"] is False
    assert "incomplete: 2 of 3 cases have no result" in (tmp_path / "short" / "report.html").read_text()
    junit = JUnitXml.fromfile(str(tmp_path / "short" / "junit.xml"))
    assert junit.errors == 1 and junit.tests == 2
    assert any(case.name == "missing results" for suite in junit for case in suite)


def test_a_batch_left_live_by_resume_finishes_the_run_only_with_the_resumed_batches(store: RunStore) -> None:
    """Its chord was published when the run had 2 batches; resume made it 3. Finishing
    batches 0 and 1 must not finish the run: the count in Redis decides, not the message's."""
    from dify_runner.worker.batches import close_batch

    store.create_run("grown", "plan", 0, 2, datetime.now(timezone.utc))
    store.reopen("grown", 3, set())  # what resume does when it adds a batch
    close_batch(store, "grown", 2, 3, [])  # the resumed batch ends first
    close_batch(store, "grown", 0, 2, [])
    close_batch(store, "grown", 1, 2, [])  # the batch resume left live ends last
    info = store.get_run("grown")
    assert info is not None and info.finished and info.batch_count == 3
    store.create_run("grown2", "plan", 0, 2, datetime.now(timezone.utc))
    store.reopen("grown2", 3, set())
    close_batch(store, "grown2", 0, 2, [])
    close_batch(store, "grown2", 1, 2, [])  # old count reached, the resumed batch still runs
    info = store.get_run("grown2")
    assert info is not None and not info.finished


def test_a_finisher_that_read_the_batch_count_before_a_resume_does_not_finish_the_run(store: RunStore) -> None:
    """CI caught this: the fleet sweep read a run (1,170 batches), a resume closed the dead ones
    and reopened it with 1,640, then the sweep saw 1,170 done and finished the run: 260 results,
    940 cases missing, and the resume's wait ended at once. The count is read with the done set."""
    from dify_runner.worker.statistics import BatchSummary

    store.create_run("stale", "plan", 0, 1, datetime.now(timezone.utc))
    stale = store.get_run("stale")  # what the sweep read
    store.save_batch("stale", 0, [], [], BatchSummary())
    store.reopen("stale", 2, set())  # the resume adds a batch
    assert stale is not None and store.batches_done("stale") >= stale.batch_count
    assert not store.finalize("stale")
    store.save_batch("stale", 1, [], [], BatchSummary())
    assert store.finalize("stale") and not store.finalize("stale")  # once


def test_a_resume_that_reopens_a_run_being_finished_voids_that_finish(store: RunStore,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from dify_runner.worker.statistics import BatchSummary

    store.create_run("race", "plan", 0, 1, datetime.now(timezone.utc))
    store.save_batch("race", 0, [], [], BatchSummary())
    summaries = store.iter_summaries

    def reopened_meanwhile(run_id: str, batch_count: int):  # type: ignore[no-untyped-def]
        store.reopen("race", 2, set())  # between the claim and the statistics being written
        return summaries(run_id, batch_count)

    monkeypatch.setattr(store, "iter_summaries", reopened_meanwhile)
    assert not store.finalize("race")
    info = store.get_run("race")
    assert info is not None and not info.finished and info.statistics is None and info.batch_count == 2


def test_a_finisher_killed_half_way_is_taken_over(store: RunStore) -> None:
    """Its claim (the time it began) stands for a minute, then the next finalize takes it over."""
    import time

    from dify_runner.worker.statistics import BatchSummary
    from dify_runner.worker.store import FINISH_CLAIM_MS

    store.create_run("dead", "plan", 0, 1, datetime.now(timezone.utc))
    store.save_batch("dead", 0, [], [], BatchSummary())
    now_ms = int(time.time() * 1000)
    store.redis.hset("dify-runner:run:dead", "finishing", now_ms)  # alive: left to finish
    assert not store.finalize("dead")
    store.redis.hset("dify-runner:run:dead", "finishing", now_ms - FINISH_CLAIM_MS - 1)  # died
    assert store.finalize("dead")
    info = store.get_run("dead")
    assert info is not None and info.finished and info.finished_at is not None


def test_reopen_counts_progress_afresh_from_the_final_statuses_in_one_step(store: RunStore) -> None:
    store.create_run("again", "plan", 4, 1, datetime.now(timezone.utc))
    for case, status in (("a", "succeeded"), ("b", "failed"), ("c", "timeout"), ("d", "succeeded")):
        store.record_end("again", 0, case, "{}", status, status != "succeeded")
    store.retry_scheduled("again", "lost")
    store.redis.hset("dify-runner:run:again:progress", "succeeded", 99)  # counts gone wrong
    store.reopen("again", 2, {"lost"})
    assert store.progress("again") == {"succeeded": 2, "failed": 1, "timeout": 1, "failures": 2, "retries": 1,
                                       "retries_waiting": 0}
    info = store.get_run("again")
    assert info is not None and info.resumed_done == 4 and info.batch_count == 2 and info.state == "running"
