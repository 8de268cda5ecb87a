"""Resume, and Redis that restarts: with persistence results survive; without, the loss is
said plainly and `resume` runs the unfinished cases again from the run's manifest."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from dify_runner.producer.embedded import EmbeddedRedis
from dify_runner.worker.store import RunStore

from dify_runner.mockdify.process import MockDifyProcess

from ..conftest import Fleet, cli, stub_plan, wait_finished, write_plan

pytestmark = [pytest.mark.faults, pytest.mark.fleet]




def report_of(out: Path, run_id: str) -> dict:
    return json.loads((out / run_id / "report.json").read_text())


def submit(tmp_path: Path, url: str, plan: dict) -> str:
    done = cli("submit", str(write_plan(tmp_path, plan)), "--broker", url, "--out", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(params=[False, True], ids=["no-persistence", "appendonly"])
def own_redis(request: pytest.FixtureRequest) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(appendonly=request.param).start()
    yield server
    server.stop()


def test_resume_a_cancelled_run(tmp_path: Path, fleet: Fleet, redis_url: str) -> None:
    fleet.start(2, concurrency=4)
    # 40 cases of 0.5 s, two at a time: 10 s of run, so the cancel lands in it however loaded
    # the machine is; it is sent once two cases have ended (a count, not a sleep).
    plan = stub_plan([{"id": f"c{i:02d}"} for i in range(40)], stub={"simulated_delay": 0.5},
                     execution={"concurrency": 2})
    run_id = submit(tmp_path, redis_url, plan)
    store = RunStore(redis.Redis.from_url(redis_url))
    while store.progress(run_id).get("succeeded", 0) < 2:
        time.sleep(0.02)
    assert cli("cancel", run_id, "--broker", redis_url).returncode == 0
    wait_finished(store, run_id)
    info = store.get_run(run_id)
    assert info is not None and info.statistics is not None and 0 < info.statistics.cancelled_tasks < 40

    resumed = cli("resume", run_id, "--broker", redis_url, "--out", str(tmp_path / "runs"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{info.statistics.cancelled_tasks} case(s) submitted again" in resumed.stdout
    report = report_of(tmp_path / "runs", run_id)
    assert report["run"]["statistics"]["succeeded_tasks"] == 40 and report["run"]["stop_reason"] is None
    assert len({r["execution_id"] for r in report["results"]}) == len(report["results"]) == 40


def test_resume_retry_failed_runs_failed_cases_again(tmp_path: Path, fleet: Fleet, redis_url: str) -> None:
    fleet.start(1, concurrency=4)
    plan = stub_plan([{"id": "ok"}, {"id": "bad"}], stub={"task_behaviors": {"bad": "failure"}},
                     execution={"retry_policy": {"max_attempts": 1}})
    run_id = submit(tmp_path, redis_url, plan)
    store = RunStore(redis.Redis.from_url(redis_url))
    wait_finished(store, run_id)
    before = {r.case_id: r.finished_at for r in store.iter_task_results(run_id, 1)}
    plain = cli("resume", run_id, "--broker", redis_url, "--out", str(tmp_path / "runs"))
    assert plain.returncode == 1 and "0 case(s) submitted again" in plain.stdout  # FAILED is final
    again = cli("resume", run_id, "--broker", redis_url, "--out", str(tmp_path / "runs"), "--retry-failed")
    assert again.returncode == 1 and "1 case(s) submitted again" in again.stdout
    info = store.get_run(run_id)
    assert info is not None
    after = {r.case_id: r.finished_at for r in store.iter_task_results(run_id, info.batch_count)}
    assert after["ok"] == before["ok"] and after["bad"] > before["bad"]
    assert len(report_of(tmp_path / "runs", run_id)["results"]) == 2


def test_a_redis_restart(tmp_path: Path, own_redis: EmbeddedRedis) -> None:
    fleet = Fleet(own_redis.url, tmp_path)
    try:
        fleet.start(2, concurrency=2)
        plan = stub_plan([{"id": f"c{i:02d}"} for i in range(24)], stub={"simulated_delay": 0.25},
                         execution={"concurrency": 2, "batch_size": 6})
        run_id = submit(tmp_path, own_redis.url, plan)
        store = RunStore(redis.Redis.from_url(own_redis.url))
        while store.progress(run_id).get("succeeded", 0) < 2:  # some cases done, most still queued
            time.sleep(0.02)
        own_redis.restart()
        waited = cli("wait", run_id, "--broker", own_redis.url, "--out", str(tmp_path / "runs"), timeout=120)
        if own_redis.appendonly:
            # The run's state, its queue and its results were on disk: it just goes on.
            assert waited.returncode == 0, waited.stdout + waited.stderr
        else:
            assert waited.returncode == 3
            assert f"Redis no longer has run '{run_id}'" in waited.stderr and "dify-runner resume" in waited.stderr
            resumed = cli("resume", run_id, "--broker", own_redis.url, "--out", str(tmp_path / "runs"), timeout=120)
            assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        report = report_of(tmp_path / "runs", run_id)
        assert report["run"]["statistics"]["succeeded_tasks"] == 24
        assert len({r["execution_id"] for r in report["results"]}) == len(report["results"]) == 24
    finally:
        fleet.stop()


def test_a_redis_without_persistence_is_reported(tmp_path: Path, redis_url: str) -> None:
    done = cli("submit", str(write_plan(tmp_path, stub_plan([{"id": "a"}]))), "--broker", redis_url,
               "--out", str(tmp_path / "runs"))
    assert done.returncode == 0 and "keeps nothing on disk" in done.stdout


def test_wait_rides_out_a_redis_outage() -> None:
    from datetime import datetime, timezone

    from dify_runner.producer.waiting import wait_for_run

    server = EmbeddedRedis(appendonly=True).start()
    try:
        store = RunStore(redis.Redis.from_url(server.url))
        store.create_run("r1", "plan", 0, 0, datetime.now(timezone.utc))
        server._terminate()  # Redis goes away while the producer waits
        naps: list[float] = []

        def sleep_fn(seconds: float) -> None:
            naps.append(seconds)
            if len(naps) == 3:
                assert server._launch(10)  # back, with its data (appendonly)
            if len(naps) == 4:
                store.finalize("r1")

        info = wait_for_run(store, "r1", sleep_fn=sleep_fn)
        assert info.finished and len(naps) >= 4
    finally:
        server.stop()


def test_wait_says_when_a_run_stalls(store: RunStore) -> None:
    from datetime import datetime, timezone

    from dify_runner.producer.waiting import RunStalled, wait_for_run

    store.create_run("stuck", "plan", 3, 1, datetime.now(timezone.utc))
    store.count("stuck", "succeeded")
    with pytest.raises(RunStalled):
        wait_for_run(store, "stuck", poll_interval=0.05, stall_after=0.3)


def test_resume_stages_the_runs_files_again(tmp_path: Path, fleet: Fleet, redis_url: str,
                                            mock_dify: MockDifyProcess) -> None:
    """A run's local files live in Redis until a worker uploads them; a resume puts them back
    when they are gone (a producer killed before staging, a TTL that ran out)."""
    (tmp_path / "note.txt").write_text("resumed")
    env = {"DIFY_CHAT_KEY": "app-chat"}
    plan = {"name": "files", "workflows": [{"id": "bot", "base_url": mock_dify.base_url,
                                            "api_key_env": "DIFY_CHAT_KEY", "app_mode": "chat"}],
            "datasets": [{"name": "d", "cases": [{"id": "f", "query": "read", "files": [{"file": "note.txt"}],
                                                  "expect": {"contains": "note.txt"}}]}]}
    done = cli("submit", str(write_plan(tmp_path, plan)), "--broker", redis_url, "--out", str(tmp_path / "runs"),
               env=env)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    client = redis.Redis.from_url(redis_url)
    staged = list(client.scan_iter(f"dify-runner:run:{run_id}:file:*"))
    assert len(staged) == 1
    client.delete(*staged)
    with ThreadPoolExecutor(1) as pool:  # resume stages, publishes, then waits for the worker below
        resuming = pool.submit(cli, "resume", run_id, "--broker", redis_url, "--out", str(tmp_path / "runs"), env=env)
        while not list(client.scan_iter(f"dify-runner:run:{run_id}:file:*")) and not resuming.done():
            time.sleep(0.05)
        assert list(client.scan_iter(f"dify-runner:run:{run_id}:file:*")) == staged
        fleet.start(1, concurrency=2, env=env)
        resumed = resuming.result()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    info = wait_finished(RunStore(client), run_id)
    (result,) = list(RunStore(client).iter_test_results(run_id, info.batch_count))
    assert result.status.value == "success", result.error_message
    assert mock_dify.stats()["paths"]["/v1/files/upload"] == 1
