"""A dead worker costs seconds: the fleet gives its cases back by itself, with no `resume`.

Each test runs separate `celery worker` processes with the default visibility timeout (an
hour), against the mock Dify server, and SIGKILLs workers while cases run, retry and
finish. What is asserted are counts: one result per case, how often each case called Dify
(the mock's per-query count). How long recovery took is printed, never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from dify_runner.worker.store import RunStore

from dify_runner.mockdify.process import MockDifyProcess

from ..conftest import REPO, Fleet, cli, stub_plan, wait_finished, write_plan

pytestmark = [pytest.mark.faults, pytest.mark.fleet]
KEY = "app-mock"


def mock_plan(mock: MockDifyProcess, count: int, latency_ms: int, **execution: Any) -> dict:
    cases = [{"id": f"c{i:04}", "inputs": {"query": f"q{i:04}", "_mock": {"latency_ms": latency_ms}}}
             for i in range(count)]
    plan = stub_plan(cases, execution=execution)
    plan["workflows"] = [{"id": "wf", "base_url": mock.base_url, "api_key_env": "MOCK_DIFY_KEY"}]
    return plan


def ended(store: RunStore, run_id: str) -> int:
    progress = store.progress(run_id)
    return sum(progress.get(s, 0) for s in ("succeeded", "failed", "timeout", "error", "cancelled", "skipped"))


def test_a_worker_sigkilled_mid_run_gives_its_cases_back(tmp_path: Path, fleet: Fleet, redis_url: str,
                                                         mock_dify: MockDifyProcess) -> None:
    fleet.start(3, concurrency=4, env={"MOCK_DIFY_KEY": KEY})
    plan = mock_plan(mock_dify, 90, 300, concurrency=12, batch_size=30)
    submitted = cli("submit", str(write_plan(tmp_path, plan)), "--broker", redis_url, env={"MOCK_DIFY_KEY": KEY})
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip().splitlines()[-1]
    store = RunStore(redis.Redis.from_url(redis_url))
    while ended(store, run_id) < 20:
        time.sleep(0.02)
    fleet.procs[0].send_signal(signal.SIGKILL)  # its cases in flight are in kombu's unacked hash
    killed = time.monotonic()
    info = wait_finished(store, run_id, timeout=300)  # a hang guard: the visibility timeout is an hour
    print(f"\nkill to run finished: {time.monotonic() - killed:.1f} s")
    results = list(store.iter_task_results(run_id, info.batch_count))
    assert len(results) == len({r.task_id for r in results}) == 90
    assert {r.task_status.value for r in results} == {"succeeded"}
    calls = mock_dify.stats()["queries"]
    assert len(calls) == 90 and max(calls.values()) <= 2
    # Only the cases the killed worker held (4 threads, 4 prefetched) called Dify twice.
    assert sum(calls.values()) - 90 <= 8, calls


@pytest.mark.parametrize("pool", ["threads", "prefork", "gevent"])
def test_workers_killed_again_and_again_need_no_resume(tmp_path: Path, fleet: Fleet, redis_url: str, pool: str,
                                                       mock_dify: MockDifyProcess) -> None:
    """Three workers, one SIGKILLed and replaced every ~1.5 s while cases start, run, retry
    (every 7th fails once) and batches finalize; the producer waits with its defaults."""
    fleet.start(3, concurrency=4, pool=pool, env={"MOCK_DIFY_KEY": KEY})
    plan = mock_plan(mock_dify, 600, 200, concurrency=12, batch_size=50,
                     retry_policy={"max_attempts": 3, "backoff_seconds": 0.5})
    for index, case in enumerate(plan["datasets"][0]["cases"]):
        if index % 7 == 0:
            case["inputs"]["_mock"]["fail_times"] = 1
    plan_file = write_plan(tmp_path, plan)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFY_RUNNER_")}
    producer = subprocess.Popen([sys.executable, "-m", "dify_runner", "run", str(plan_file), "--broker", redis_url,
                                 "--out", str(tmp_path / "runs"), "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**env, "MOCK_DIFY_KEY": KEY}, cwd=REPO)
    kills = 0
    while producer.poll() is None and kills < 40:
        time.sleep(1.5)
        victim = fleet.procs[kills % 3 - 3]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        kills += 1
        fleet.start(1, concurrency=4, pool=pool, env={"MOCK_DIFY_KEY": KEY})
    out, err = producer.communicate(timeout=600)
    calls = mock_dify.stats()["queries"]
    print(f"\n{kills} workers killed; {sum(calls.values()) - 600} extra calls to Dify")
    assert producer.returncode in (0, 1), out + err  # 1: a case may fail twice; never 3 (stalled)
    [run_dir] = list((tmp_path / "runs").iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    ids = [r["execution_id"] for r in report["results"]]
    assert len(ids) == len(set(ids)) == 600
    assert report["run"]["statistics"]["total_tasks"] == 600
    assert len(calls) == 600


def test_a_case_killed_by_the_hard_time_limit_ends_timeout_and_its_batch_finishes(
        tmp_path: Path, fleet: Fleet, redis_url: str, mock_dify: MockDifyProcess) -> None:
    """prefork enforces Celery's hard limit: the case ends TIMEOUT, the chord and the run finish."""
    fleet.start(1, concurrency=1, pool="prefork", env={"MOCK_DIFY_KEY": KEY})
    plan = mock_plan(mock_dify, 6, 100, concurrency=1, batch_size=6, stop_conditions={"timeout_per_task": 2})
    plan["datasets"][0]["cases"][0]["inputs"]["_mock"]["latency_ms"] = 1500
    submitted = cli("submit", str(write_plan(tmp_path, plan)), "--broker", redis_url,
                    env={"MOCK_DIFY_KEY": KEY, "DIFY_RUNNER_ADMISSION_WAIT": "1"})
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip().splitlines()[-1]
    while "q0000" not in mock_dify.stats()["queries"]:
        time.sleep(0.02)
    [child] = [p for p in psutil.Process(fleet.procs[0].pid).children() if "celery" in " ".join(p.cmdline())]
    child.suspend()  # stuck: past its own deadline, only Celery's hard limit can end it
    store = RunStore(redis.Redis.from_url(redis_url))
    info = wait_finished(store, run_id, timeout=120)
    statuses = {r.case_id: r.task_status.value for r in store.iter_task_results(run_id, info.batch_count)}
    assert statuses == {"c0000": "timeout", **{f"c{i:04}": "succeeded" for i in range(1, 6)}}
    [stuck] = [r for r in store.iter_task_results(run_id, 1) if r.case_id == "c0000"]
    assert "hard time limit" in (stuck.error_message or "")
    assert "Hard time limit" not in fleet.logs() or "ends TIMEOUT" in fleet.logs()


def test_a_worker_sigkilled_mid_conversation_resumes_at_the_next_turn(tmp_path: Path, fleet: Fleet, redis_url: str,
                                                                      mock_dify: MockDifyProcess) -> None:
    """The turns Dify answered are kept in Redis: a redelivered conversation goes on with its
    next turn in the same conversation (worker/conversation.py), it does not start again."""
    env = {"DIFY_CHAT_KEY": "app-chat"}
    fleet.start(1, concurrency=2, env=env)
    plan = write_plan(tmp_path, {
        "name": "talk", "workflows": [{"id": "bot", "base_url": mock_dify.base_url, "api_key_env": "DIFY_CHAT_KEY",
                                       "app_mode": "chat"}],
        "datasets": [{"name": "d", "cases": [{"id": "talk", "turns": [
            {"query": "one"}, {"query": "two", "inputs": {"_mock": {"latency_ms": 1500}}},
            {"query": "three", "expect": {"contains": "earlier: one | two"}}]}]}]})
    submitted = cli("submit", str(plan), "--broker", redis_url, env=env)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip().splitlines()[-1]
    while mock_dify.stats()["queries"].get("two", 0) < 1:  # turn 2 is in flight
        time.sleep(0.02)
    fleet.procs[0].send_signal(signal.SIGKILL)
    fleet.start(1, concurrency=2, env=env)
    store = RunStore(redis.Redis.from_url(redis_url))
    info = wait_finished(store, run_id, timeout=300)
    (result,) = list(store.iter_test_results(run_id, info.batch_count))
    assert result.status.value == "success", result.error_message
    turns = result.turns
    assert [t.index for t in turns] == [1, 2, 3] and len({t.conversation_id for t in turns}) == 1
    # Turn 1 reached Dify once; turn 2 again (the killed worker never saw its answer).
    assert mock_dify.stats()["queries"] == {"one": 1, "two": 2, "three": 1}
