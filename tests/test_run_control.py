"""Fleet-wide run control with 3 separate `celery worker` processes, the test Redis and the
mock Dify server, whose /_mock/stats is the witness of what the fleet really did."""

from __future__ import annotations

import itertools
import json
import math
import signal
import threading
import time
from pathlib import Path

import pytest
import redis
from dify_runner.config.plan import RateControl
from dify_runner.worker.run_control import RunGate
from dify_runner.worker.store import RunStore, run_key

from dify_runner.mockdify.process import MockDifyProcess

from .conftest import Fleet, cli, stub_plan, wait_finished, write_plan

pytestmark = pytest.mark.fleet
WORKER_ENV = {"MOCK_DIFY_KEY": "app-mock"}


def mock_plan(mock: MockDifyProcess, n: int, behaviour: dict, **execution: object) -> dict:
    plan = stub_plan([{"id": f"c{i:03d}", "inputs": {"q": i, "_mock": behaviour}} for i in range(n)],
                     execution={"batch_size": 20, **execution})
    plan["workflows"] = [{"id": "wf", "base_url": mock.base_url, "api_key_env": "MOCK_DIFY_KEY"}]
    return plan


def ended_at_least(store: RunStore, run_id: str, count: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while sum(store.progress(run_id).get(s, 0) for s in ("succeeded", "failed", "error", "timeout")) < count:
        assert time.monotonic() < end, store.progress(run_id)
        time.sleep(0.02)


def run_plan(tmp_path: Path, fleet: Fleet, plan: dict) -> dict:
    done = cli("run", str(write_plan(tmp_path, plan)), "--broker", fleet.broker_url, "--out", str(tmp_path / "runs"),
               cwd=tmp_path)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    [run_dir] = list((tmp_path / "runs").iterdir())
    return json.loads((run_dir / "report.json").read_text())




@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_concurrency_is_capped_across_the_fleet(tmp_path: Path, fleet: Fleet, mock_dify: MockDifyProcess,
                                                pool: str) -> None:
    fleet.start(3, concurrency=8, pool=pool, env=WORKER_ENV)
    report = run_plan(tmp_path, fleet, mock_plan(mock_dify, 48, {"latency_ms": 250}, concurrency=4))
    assert report["run"]["statistics"]["succeeded_tasks"] == 48
    stats = mock_dify.stats()
    print("max in flight:", stats["max_in_flight"], "of", 3 * 8, "worker threads")
    assert stats["max_in_flight"] <= 4
    assert stats["max_in_flight"] >= 3  # the cap is used, not just respected


def test_rate_limit_holds_across_the_fleet(tmp_path: Path, fleet: Fleet, mock_dify: MockDifyProcess) -> None:
    """End to end, counted in seconds the mock saw: 130 requests at 20/s cannot fit in fewer
    than 7 distinct seconds. (Arrivals lag their reserved instants by however long a loaded
    machine makes a thread wait, so per-window counts are checked on the reservations, in
    test_rate_limit_reservations, not here.)"""
    fleet.start(3, concurrency=10, env=WORKER_ENV)
    limit, cases = 20, 130
    report = run_plan(tmp_path, fleet, mock_plan(mock_dify, cases, {"latency_ms": 10}, concurrency=30,
                                                  rate_control={"requests_per_second": limit}))
    assert report["run"]["statistics"]["succeeded_tasks"] == cases
    per_second = mock_dify.stats()["requests_per_second"]
    print("requests per 1-s window:", [n for _, n in sorted(per_second.items())], "limit", limit)
    assert sum(per_second.values()) == cases
    assert len(per_second) >= math.ceil((cases - 1) / limit)  # unlimited, it took 1-2 seconds


@pytest.mark.parametrize("burst", [1, 5])
def test_rate_limit_reservations(redis_url: str, burst: int) -> None:
    """Every reserved instant, read back from the limiter's own state in the same transaction:
    consecutive instants are one interval apart (after the burst), and no 1-s window of
    reservations holds more than limit + burst - 1, whatever the threads' timing."""
    limit, threads, each = 20, 4, 40
    client = redis.Redis.from_url(redis_url)
    gate = RunGate(client, 3600)
    rate = RateControl(requests_per_second=limit, burst=burst)
    key, interval = run_key("r", "rate") + ":second", 1000.0 / limit
    instants: list[float] = []
    lock = threading.Lock()

    def reserve() -> None:
        for _ in range(each):
            pipe = client.pipeline(transaction=True)  # the script and the read, with nothing between
            gate._rate(keys=[key], args=[interval, (burst - 1) * interval], client=pipe)
            pipe.get(key)
            wait, tat = pipe.execute()
            with lock:
                instants.append(float(tat) - interval)  # the TAT moved one interval past the instant

    workers = [threading.Thread(target=reserve) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    instants.sort()
    assert len(instants) == threads * each
    assert gate._reserve_ms("r", rate, "x") >= 0  # the real entry point agrees with the script
    for low_index, low in enumerate(instants):
        in_window = sum(1 for t in instants[low_index:] if t < low + 1000.0)
        assert in_window <= limit + burst - 1, (low_index, in_window)
    gaps = [b - a for a, b in itertools.pairwise(instants)]
    assert min(gaps[burst:]) >= interval - 0.01


def test_max_failures_stops_the_fleet(tmp_path: Path, fleet: Fleet, mock_dify: MockDifyProcess) -> None:
    fleet.start(3, concurrency=4, env=WORKER_ENV)
    plan = mock_plan(mock_dify, 80, {"status": "failed", "latency_ms": 50}, concurrency=3,
                     retry_policy={"max_attempts": 2, "backoff_seconds": 0.5},
                     stop_conditions={"max_failures": 5})
    report = run_plan(tmp_path, fleet, plan)
    stats = report["run"]["statistics"]
    assert report["run"]["stop_reason"] == "stopped: max_failures (5) reached"
    assert stats["total_tasks"] == 80 == len({r["execution_id"] for r in report["results"]})
    assert 5 <= stats["failed_tasks"] <= 5 + 3 + 3  # those in flight when the fifth failed may end too
    assert stats["cancelled_tasks"] == 80 - stats["failed_tasks"]
    assert mock_dify.stats()["runs"] < 2 * 80  # the rest never reached Dify


@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_cancel_from_another_terminal(tmp_path: Path, fleet: Fleet, mock_dify: MockDifyProcess,
                                      redis_url: str, pool: str) -> None:
    """Calls of 20 s, so the six in flight when the cancel lands can only end by being stopped
    in Dify (by the worker's call watcher): counted at the mock, whatever the machine's load."""
    fleet.start(3, concurrency=4, pool=pool, env=WORKER_ENV)
    plan = mock_plan(mock_dify, 60, {"latency_ms": 20_000}, concurrency=6)
    submitted = cli("submit", str(write_plan(tmp_path, plan)), "--broker", fleet.broker_url)
    run_id = submitted.stdout.strip().splitlines()[-1]
    store = RunStore(redis.Redis.from_url(redis_url))
    end = time.monotonic() + 120
    while mock_dify.stats()["in_flight"] < 6:  # every slot holds a call in Dify
        assert time.monotonic() < end, mock_dify.stats()
        time.sleep(0.05)
    cancelled_at = time.monotonic()
    done = cli("cancel", run_id, "--broker", fleet.broker_url, "--reason", "test")
    assert done.returncode == 0, done.stderr
    info = wait_finished(store, run_id)
    print(f"from cancel to the run's last result: {time.monotonic() - cancelled_at:.2f} s")
    stats = mock_dify.stats()
    # Once the flag is set no slot is granted: the six calls in flight are all Dify saw.
    assert stats["runs"] == 6 and stats["stops"] == 6  # each stopped in Dify, none left running
    assert info.stop_reason == "cancelled with `dify-runner cancel`: test"
    results = list(store.iter_task_results(run_id, info.batch_count))
    assert len(results) == len({r.task_id for r in results}) == 60
    assert {r.task_status.value for r in results} == {"cancelled"}


def test_a_killed_worker_does_not_stall_the_run(tmp_path: Path, fleet: Fleet, mock_dify: MockDifyProcess,
                                                redis_url: str) -> None:
    env = {**WORKER_ENV, "DIFY_RUNNER_VISIBILITY_TIMEOUT": "10"}
    fleet.start(3, concurrency=4, env=env)
    plan = mock_plan(mock_dify, 40, {"latency_ms": 600}, concurrency=6)
    submitted = cli("submit", str(write_plan(tmp_path, plan)), "--broker", fleet.broker_url,
                    "--out", str(tmp_path / "runs"))
    run_id = submitted.stdout.strip().splitlines()[-1]
    store = RunStore(redis.Redis.from_url(redis_url))
    ended_at_least(store, run_id, 6)
    fleet.procs[0].send_signal(signal.SIGKILL)  # dies holding slots and unacknowledged cases
    killed_at = time.monotonic()
    try:
        info = wait_finished(store, run_id, timeout=60)
        print(f"run finished {time.monotonic() - killed_at:.1f} s after the kill (visibility timeout 10 s)")
    except TimeoutError:
        # A message lost in kombu's BRPOP-to-unacked window (README, Reliability): resume it.
        resumed = cli("resume", run_id, "--broker", fleet.broker_url, "--out", str(tmp_path / "runs"))
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        info = wait_finished(store, run_id, timeout=60)
    results = list(store.iter_task_results(run_id, info.batch_count))
    assert len(results) == len({r.task_id for r in results}) == 40
    not_ok = [(r.task_id, r.task_status.value, r.error_message) for r in results if r.task_status.value != "succeeded"]
    assert not_ok == []
    # No slot is still held: the killed worker's leases have lapsed (they stay in the set,
    # expired, until the next admission sweeps them; a finished run has none).
    client = redis.Redis.from_url(redis_url)
    seconds, micros = client.time()
    assert client.zcount(f"dify-runner:run:{run_id}:slots", seconds * 1000 + micros // 1000, "+inf") == 0
