"""Many slow calls at once (issue 17), at test scale: concurrency 200 over two `celery worker`
processes against the mock Dify server, on the threads pool and on gevent.

What is asserted is counted: one success per case, no internal error, never more calls in
flight than the plan's concurrency, a latency never below what the mock served (it is
measured from the request written, so waiting in the worker is not in it) and a local wait
on every answered case. How close the measured latency is to the served one is printed
(`pytest -s`), not asserted: CI shares its machine. bench/bench_concurrency.py measures it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from dify_runner.producer.embedded import InProcessWorker
from dify_runner.worker.models import TaskStatus
from dify_runner.worker.statistics import percentile
from dify_runner.worker.store import RunStore

from dify_runner.mockdify.process import MockDifyProcess

from .conftest import Fleet, cli, manifest_for, run_manifest, stub_plan, write_plan

CASES, CONCURRENCY, SERVED_MS = 600, 200, 1000


@pytest.mark.fleet
@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_200_slow_calls_at_once_over_two_workers(tmp_path: Path, fleet: Fleet, redis_url: str,
                                                 mock_dify: MockDifyProcess, pool: str) -> None:
    fleet.start(2, concurrency=CONCURRENCY // 2, pool=pool, env={"MOCK_DIFY_KEY": "app-mock"})
    plan = {"name": "many", "workflows": [{"id": "wf", "base_url": mock_dify.base_url, "api_key_env": "MOCK_DIFY_KEY",
                                           "response_mode": "blocking"}],
            "datasets": [{"name": "ds", "cases": [{"id": f"c{i:03d}", "inputs": {
                "query": f"q{i}", "_mock": {"latency_ms": SERVED_MS}}} for i in range(CASES)]}],
            "execution": {"concurrency": CONCURRENCY, "batch_size": 50}}
    done = cli("run", str(write_plan(tmp_path, plan)), "--broker", redis_url, "--out", str(tmp_path / "runs"),
               "--no-progress", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr + fleet.logs()[-3000:]
    [report_file] = (tmp_path / "runs").glob("*/report.json")
    results = json.loads(report_file.read_text())["results"]
    assert len({r["execution_id"] for r in results}) == len(results) == CASES
    assert {r["status"] for r in results} == {"success"}
    assert not [r for r in results if "internal error" in (r["error_message"] or "")]
    assert "internal error" not in fleet.logs()
    stats = mock_dify.stats()
    assert stats["runs"] == CASES and stats["max_in_flight"] <= CONCURRENCY
    served = SERVED_MS / 1000
    latencies = sorted(r["execution_time"] for r in results)
    waits = sorted(r["metadata"]["local_wait"] for r in results)
    assert min(latencies) >= served  # the request was out before the mock's clock started
    p95 = percentile(latencies, 95) or 0.0
    print(f"\n{pool}: served {served:.3f} s; measured p50 {percentile(latencies, 50):.3f} p95 {p95:.3f} "
          f"({p95 / served:.3f}x); local_wait p95 {percentile(waits, 95):.3f} s; "
          f"max in flight {stats['max_in_flight']}")


def test_a_redis_error_inside_a_case_is_not_its_result(tmp_path: Path, app: Celery, store: RunStore,
                                                        worker: InProcessWorker,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's own Redis failing (a pool run dry, a dropped connection) is its trouble,
    not the case's: the message goes back to the queue and the case runs again, instead of
    ending ERROR "dify-runner internal error" as 146 cases did at concurrency 1,000."""
    from dify_runner.worker.run_control import RunGate

    real_admit = RunGate.admit
    failed: list[str] = []

    def admit_once_broken(self: RunGate, run_id: str, task_id: str, *args: Any, **kwargs: Any) -> Any:
        if task_id.endswith("/c1") and not failed:
            failed.append(task_id)
            raise redis.ConnectionError("Too many connections")
        return real_admit(self, run_id, task_id, *args, **kwargs)

    monkeypatch.setattr(RunGate, "admit", admit_once_broken)
    manifest = manifest_for(tmp_path, stub_plan([{"id": f"c{i}"} for i in range(4)]))
    info = run_manifest(app, store, manifest)
    results = list(store.iter_task_results(manifest.run_id, info.batch_count))
    assert failed == ["wf/ds/c1"]
    assert sorted(r.case_id for r in results) == ["c0", "c1", "c2", "c3"]
    assert {r.task_status for r in results} == {TaskStatus.SUCCEEDED}
    assert all(r.attempt_count == 1 for r in results)  # the broken delivery was no attempt
