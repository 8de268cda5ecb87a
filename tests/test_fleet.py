"""Fleet mode: separate `celery worker` processes against the test Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import Fleet, cli, stub_plan, write_plan

pytestmark = pytest.mark.fleet


def test_a_200_case_run_on_two_worker_processes(tmp_path: Path, fleet: Fleet) -> None:
    fleet.start(2, concurrency=8)
    behaviors = {f"c{i:03d}": "failure" for i in range(0, 200, 25)}  # 8 failing cases
    plan = stub_plan([{"id": f"c{i:03d}", "inputs": {"n": i}} for i in range(200)],
                     stub={"simulated_delay": 0.01, "task_behaviors": behaviors},
                     execution={"batch_size": 50, "retry_policy": {"max_attempts": 2, "backoff_seconds": 0.01}})
    done = cli("run", str(write_plan(tmp_path, plan)), "--broker", fleet.broker_url, "--out", str(tmp_path / "runs"),
               cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the fleet at redis://127.0.0.1" in done.stdout
    [run_dir] = list((tmp_path / "runs").iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    stats = report["run"]["statistics"]
    assert (stats["total_tasks"], stats["succeeded_tasks"], stats["failed_tasks"]) == (200, 192, 8)
    ids = [r["execution_id"] for r in report["results"]]
    assert len(ids) == len(set(ids)) == 200
    # Both processes did work.
    logs = fleet.logs()
    assert logs.count("w0-") and logs.count("w1-")


def test_submit_then_status_wait_and_report_from_new_processes(tmp_path: Path, fleet: Fleet) -> None:
    fleet.start(1, concurrency=4)
    plan = stub_plan([{"id": f"c{i}"} for i in range(20)], stub={"simulated_delay": 0.02})
    submitted = cli("submit", str(write_plan(tmp_path, plan)), "--broker", fleet.broker_url)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip().splitlines()[-1]

    waited = cli("wait", run_id, "--broker", fleet.broker_url, "--out", str(tmp_path / "runs"))
    assert waited.returncode == 0, waited.stdout + waited.stderr
    status = cli("status", run_id, "--broker", fleet.broker_url)
    assert status.returncode == 0 and "finished" in status.stdout and "20/20" in status.stdout
    report = cli("report", run_id, "--broker", fleet.broker_url, "--out", str(tmp_path / "again"))
    assert report.returncode == 0
    assert json.loads((tmp_path / "again" / run_id / "report.json").read_text())["run"]["run_id"] == run_id
    assert {p.name for p in (tmp_path / "again" / run_id).iterdir()} == \
        {"report.json", "results.jsonl", "results.csv", "junit.xml", "report.html"}
    only = cli("report", run_id, "--broker", fleet.broker_url, "--out", str(tmp_path / "only"), "--format", "csv,junit")
    assert only.returncode == 0 and {p.name for p in (tmp_path / "only" / run_id).iterdir()} == \
        {"results.csv", "junit.xml"}
    wrong = cli("report", run_id, "--broker", fleet.broker_url, "--format", "pdf")
    assert wrong.returncode == 2 and "--format 'pdf': unknown format pdf" in wrong.stderr
    unknown = cli("wait", "no-such-run", "--broker", fleet.broker_url)
    assert unknown.returncode == 2 and "no run 'no-such-run'" in unknown.stderr


def test_a_slow_case_ends_timeout_on_prefork_workers_too(tmp_path: Path, fleet: Fleet) -> None:
    fleet.start(1, concurrency=2, pool="prefork")
    plan = stub_plan([{"id": "case"}], execution={"retry_policy": {"max_attempts": 1},
                                                  "stop_conditions": {"timeout_per_task": 0.5}})
    plan["workflows"] = [{"id": "slow", "base_url": "stub", "stub": {"simulated_delay": 5}},
                         {"id": "fast", "base_url": "stub"}]
    done = cli("run", str(write_plan(tmp_path, plan)), "--broker", fleet.broker_url, "--out", str(tmp_path / "r"))
    assert done.returncode == 1, done.stdout + done.stderr
    [run_dir] = list((tmp_path / "r").iterdir())
    results = {r["workflow_id"]: r for r in json.loads((run_dir / "report.json").read_text())["results"]}
    assert results["slow"]["status"] == "timeout" and results["fast"]["status"] == "success"
    assert 0.5 <= results["slow"]["execution_time"] < 1.5


@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_dify_runner_worker_passes_celery_options_through(tmp_path: Path, redis_url: str, pool: str) -> None:
    """`dify-runner worker` is the README's way to start a worker: celery's own options reach it
    (on gevent it runs as `celery` itself, which patches the standard library first)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from dify_runner.config.settings import Settings
    from dify_runner.producer.embedded import stop_processes
    from dify_runner.worker.app import create_app

    from .conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFY_RUNNER_")}
    log = tmp_path / "worker.log"
    proc = subprocess.Popen([sys.executable, "-m", "dify_runner", "worker", "--broker", redis_url, "--concurrency", "2",
                             "--pool", pool, "-n", "cli-worker@%h", "--loglevel", "DEBUG", "--without-mingle"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        app = create_app(redis_url, Settings())
        name = f"cli-worker@{socket.gethostname()}"
        for _ in range(200):  # counted tries, each waiting up to 0.5 s for replies
            if any(name in reply for reply in app.control.ping(timeout=0.5)):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(log.read_text())
        stats = app.control.inspect(destination=[name], timeout=2).stats() or {}
        assert stats[name]["pool"]["max-concurrency"] == 2
    finally:
        stop_processes([proc], timeout=20)
    text = log.read_text()
    assert "task events: ON" in text  # by default: Flower sees the worker's tasks
    assert "DEBUG" in text
    assert f"concurrency: 2 ({'gevent' if pool == 'gevent' else 'thread'})" in text, text[:3000]
