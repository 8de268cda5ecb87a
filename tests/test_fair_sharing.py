"""Runs on one fleet share it: a case waiting for its rate-limit instant holds no worker thread."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from dify_runner.worker.store import RunStore

from .conftest import Fleet, cli, stub_plan, write_plan

pytestmark = pytest.mark.fleet


def test_a_rate_limited_run_does_not_starve_another(tmp_path: Path, fleet: Fleet, redis_url: str) -> None:
    fleet.start(2, concurrency=4)
    slow = stub_plan([{"id": f"s{i:02}"} for i in range(30)], stub={"simulated_delay": 0.01},
                     execution={"concurrency": 8, "rate_control": {"requests_per_minute": 6}})
    slow["name"] = "slow"
    submitted = cli("submit", str(write_plan(tmp_path, slow, "slow.yaml")), "--broker", redis_url)
    assert submitted.returncode == 0, submitted.stderr
    slow_id = submitted.stdout.strip().splitlines()[-1]
    store = RunStore(redis.Redis.from_url(redis_url))
    while store.progress(slow_id).get("succeeded", 0) < 1:  # its first case ran: the others wait
        time.sleep(0.05)
    fast = stub_plan([{"id": f"f{i:02}"} for i in range(60)], stub={"simulated_delay": 0.05},
                     execution={"concurrency": 8})
    done = cli("run", str(write_plan(tmp_path, fast, "fast.yaml")), "--broker", redis_url, "--no-progress",
               "--out", str(tmp_path / "runs"), "--stall-timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr  # before: no case started for 120 s, exit 3
    # Meanwhile the slow run kept to its limit (6 a minute, the first at once).
    slow_done = store.progress(slow_id).get("succeeded", 0)
    assert slow_done < 30
    info = store.get_run(slow_id)
    assert info is not None and not info.finished
    cli("cancel", slow_id, "--broker", redis_url)
