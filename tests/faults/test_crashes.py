"""Processes that die: the run goes on and every case ends with exactly one result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from dify_runner.worker.store import RunStore

from ..conftest import REPO, Fleet, cli, stub_plan, wait_finished, write_plan

pytestmark = [pytest.mark.faults, pytest.mark.fleet]




def test_the_producer_killed_after_submit(tmp_path: Path, fleet: Fleet, redis_url: str) -> None:
    fleet.start(2, concurrency=4)
    plan = stub_plan([{"id": f"c{i}"} for i in range(40)], stub={"simulated_delay": 0.1})
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFY_RUNNER_")}
    producer = subprocess.Popen([sys.executable, "-m", "dify_runner", "run", str(write_plan(tmp_path, plan)),
                                 "--broker", redis_url], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert producer.stdout is not None
    line = producer.stdout.readline()
    while not line.startswith("run "):  # "run <id>: 40 cases ...", printed before publishing
        line = producer.stdout.readline()
    run_id = line.split()[1].rstrip(":")
    store = RunStore(redis.Redis.from_url(redis_url))
    while (info := store.get_run(run_id)) is None or info.publish_state != "published":
        time.sleep(0.01)  # killed after publishing (test_publishing kills it while publishing)
    producer.send_signal(signal.SIGKILL)
    producer.wait()
    status = cli("status", run_id, "--broker", redis_url)
    assert status.returncode == 0 and run_id in status.stdout
    waited = cli("wait", run_id, "--broker", redis_url, "--out", str(tmp_path / "runs"))
    assert waited.returncode == 0, waited.stdout + waited.stderr
    report = json.loads((tmp_path / "runs" / run_id / "report.json").read_text())
    assert len({r["execution_id"] for r in report["results"]}) == 40 == report["run"]["statistics"]["succeeded_tasks"]


def test_a_worker_killed_with_retries_waiting_in_its_memory(tmp_path: Path, fleet: Fleet, redis_url: str) -> None:
    fleet.start(2, concurrency=4, env={"DIFY_RUNNER_VISIBILITY_TIMEOUT": "10"})
    behaviors = {f"c{i:02d}": "flaky:1" for i in range(30)}  # every case fails once, then waits 3 s
    plan = stub_plan([{"id": f"c{i:02d}"} for i in range(30)], stub={"task_behaviors": behaviors},
                     execution={"concurrency": 8, "retry_policy": {"max_attempts": 3, "backoff_seconds": 3}})
    submitted = cli("submit", str(write_plan(tmp_path, plan)), "--broker", redis_url, "--out", str(tmp_path / "runs"))
    run_id = submitted.stdout.strip().splitlines()[-1]
    store = RunStore(redis.Redis.from_url(redis_url))
    end = time.monotonic() + 20
    while store.progress(run_id).get("retries", 0) < 20 and time.monotonic() < end:
        time.sleep(0.05)
    fleet.procs[0].send_signal(signal.SIGKILL)
    # No `resume`: the fleet's sweep gives the dead worker's messages back (worker/recovery.py),
    # and publishes again any it lost between BRPOP and recording it as unacknowledged.
    wait_finished(store, run_id, timeout=180)
    info = store.get_run(run_id)
    assert info is not None
    results = list(store.iter_task_results(run_id, info.batch_count))
    assert len(results) == len({r.task_id for r in results}) == 30
    assert {r.task_status.value for r in results} == {"succeeded"}
    assert {r.attempt_count for r in results} == {2}  # each retry went on from its message's history


def test_a_backoff_longer_than_the_visibility_timeout_runs_once(tmp_path: Path, fleet: Fleet, redis_url: str) -> None:
    """kombu#337: an ETA past the visibility timeout would be delivered again and again."""
    fleet.start(1, concurrency=2, env={"DIFY_RUNNER_VISIBILITY_TIMEOUT": "10"})
    plan = stub_plan([{"id": "slow-retry"}], stub={"task_behaviors": {"slow-retry": "flaky:1"}},
                     execution={"retry_policy": {"max_attempts": 2, "backoff_seconds": 25}})
    submitted = cli("submit", str(write_plan(tmp_path, plan)), "--broker", redis_url)
    run_id = submitted.stdout.strip().splitlines()[-1]
    store = RunStore(redis.Redis.from_url(redis_url))
    wait_finished(store, run_id, timeout=90)
    progress = store.progress(run_id)
    assert progress.get("succeeded") == 1 and progress.get("retries") == 1, progress  # one retry, one ending
    [result] = list(store.iter_task_results(run_id, 1))
    assert result.attempt_count == 2 and result.attempts[0].retry_countdown == 25


def test_a_callback_redelivered_after_saving_its_batch_finishes_the_run(store: RunStore) -> None:
    """A worker killed between storing the last batch and finishing the run: the callback comes
    back (acks_late), finds its batch done, and must still finish the run."""
    from datetime import datetime, timezone

    from dify_runner.worker.batches import close_batch
    from dify_runner.worker.statistics import BatchSummary

    store.create_run("r", "plan", 0, 2, datetime.now(timezone.utc))
    for batch in (0, 1):
        store.save_batch("r", batch, [], [], BatchSummary())  # saved; the worker died before finalize
    info = store.get_run("r")
    assert info is not None and not info.finished
    assert close_batch(store, "r", 1, 2, []) is False  # the redelivered callback stores nothing again
    info = store.get_run("r")
    assert info is not None and info.finished
