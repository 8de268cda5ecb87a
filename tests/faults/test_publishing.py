"""The producer dies or is interrupted while it publishes; `resume` completes the plan.

Whatever the moment, the run ends with exactly one result per case of its plan, or a
non-zero exit that says what is missing: never a verdict over fewer cases. Moments are
chosen by counting published batches in Redis (the producer is frozen with SIGSTOP at the
chosen count, then signalled), not by sleeping.
"""

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

from dify_runner.mockdify.process import MockDifyProcess

from ..conftest import REPO, Fleet, cli, stub_plan, write_plan

pytestmark = [pytest.mark.faults, pytest.mark.fleet]

CASES, BATCH = 1200, 2  # 600 chords: publishing lasts long enough to be caught part way


def start_run(tmp_path: Path, url: str, plan: dict) -> tuple[subprocess.Popen[str], str]:
    """`dify-runner run` in fleet mode, as a separate process; returns it and its run id."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFY_RUNNER_")}
    producer = subprocess.Popen(
        [sys.executable, "-m", "dify_runner", "run", str(write_plan(tmp_path, plan)), "--broker", url,
         "--out", str(tmp_path / "runs"), "--no-progress"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert producer.stdout is not None
    line = producer.stdout.readline()
    while line and not line.startswith("run "):  # the run id comes before the first message
        line = producer.stdout.readline()
    assert line, producer.stderr.read() if producer.stderr else ""
    return producer, line.split()[1].rstrip(":")


def freeze_at(producer: subprocess.Popen[str], store: RunStore, run_id: str, batches: int) -> int:
    """SIGSTOP the producer once it has published ``batches`` chords; returns how many it had."""
    while True:
        info = store.get_run(run_id)
        if info is not None and info.published_batches >= batches:
            producer.send_signal(signal.SIGSTOP)
            frozen = store.get_run(run_id)
            assert frozen is not None
            return frozen.published_batches
        assert producer.poll() is None, "the producer ended before publishing was caught"
        time.sleep(0.002)


def frozen_run(tmp_path: Path, fleet: Fleet, redis_url: str, moment: float) -> tuple[subprocess.Popen[str], str, int]:
    """A fleet of two workers and `run` of CASES stub cases, frozen at ``moment`` of publishing."""
    fleet.start(2, concurrency=4)
    plan = stub_plan([{"id": f"c{i:04d}"} for i in range(CASES)], execution={"batch_size": BATCH, "concurrency": 8})
    store = RunStore(redis.Redis.from_url(redis_url))
    producer, run_id = start_run(tmp_path, redis_url, plan)
    return producer, run_id, freeze_at(producer, store, run_id, int(CASES / BATCH * moment))


def report_of(tmp_path: Path, run_id: str) -> dict:
    return json.loads((tmp_path / "runs" / run_id / "report.json").read_text())


def assert_whole(report: dict, statuses: set[str]) -> None:
    ids = [r["execution_id"] for r in report["results"]]
    assert len(ids) == len(set(ids)) == CASES
    assert report["run"]["statistics"]["total_tasks"] == CASES and report["run"]["missing_results"] == 0
    assert {r["metadata"]["task_status"] for r in report["results"]} <= statuses


@pytest.mark.parametrize("moment", [0.05, 0.5, 0.85], ids=["early", "middle", "late"])
def test_producer_killed_while_publishing_then_resume(tmp_path: Path, fleet: Fleet, redis_url: str,
                                                      moment: float) -> None:
    producer, run_id, published = frozen_run(tmp_path, fleet, redis_url, moment)
    producer.send_signal(signal.SIGKILL)
    producer.wait()
    assert published < CASES / BATCH  # caught while publishing

    # The manifest was on disk whole before the first message.
    assert len((tmp_path / "runs" / run_id / "manifest.jsonl").read_text().splitlines()) == CASES + 1
    status = cli("status", run_id, "--broker", redis_url)
    assert "publishing interrupted" in status.stdout and f"published {published * BATCH:,} of {CASES:,}" \
        in status.stdout, status.stdout
    waited = cli("wait", run_id, "--broker", redis_url, "--out", str(tmp_path / "runs"), "--no-progress")
    assert waited.returncode == 3 and "dify-runner resume" in waited.stderr, waited.stderr  # at once

    resumed = cli("resume", run_id, "--broker", redis_url, "--out", str(tmp_path / "runs"), "--no-progress")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_whole(report_of(tmp_path, run_id), {"succeeded"})


@pytest.mark.parametrize("moment", [0.05, 0.5], ids=["early", "middle"])
def test_interrupt_while_publishing_cancels_the_run(tmp_path: Path, fleet: Fleet, redis_url: str,
                                                    moment: float) -> None:
    """No terminal: SIGINT cancels. Unpublished cases end CANCELLED; the report is whole."""
    producer, run_id, _ = frozen_run(tmp_path, fleet, redis_url, moment)
    producer.send_signal(signal.SIGINT)
    producer.send_signal(signal.SIGCONT)
    out, err = producer.communicate(timeout=120)
    assert producer.returncode == 130, out + err
    assert "never published end CANCELLED" in out
    report = report_of(tmp_path, run_id)
    assert_whole(report, {"succeeded", "cancelled"})
    never = [r for r in report["results"] if "before it was published" in (r["error_message"] or "")]
    assert never and report["run"]["statistics"]["cancelled_tasks"] >= len(never)

    resumed = cli("resume", run_id, "--broker", redis_url, "--out", str(tmp_path / "runs"), "--no-progress")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_whole(report_of(tmp_path, run_id), {"succeeded"})


def test_resume_of_a_live_run_calls_dify_once_per_case(tmp_path: Path, fleet: Fleet, redis_url: str,
                                                       mock_dify: MockDifyProcess) -> None:
    fleet.start(2, concurrency=4, env={"MOCK_DIFY_KEY": "app-mock"})
    cases = 120
    plan = {"name": "live", "workflows": [{"id": "wf", "base_url": mock_dify.base_url, "api_key_env": "MOCK_DIFY_KEY",
                                           "response_mode": "blocking"}],
            "datasets": [{"name": "ds", "cases": [{"id": f"c{i:03d}", "inputs": {"q": str(i)}}
                                                  for i in range(cases)]}],
            "execution": {"concurrency": 4, "batch_size": 10}}
    submitted = cli("submit", str(write_plan(tmp_path, plan)), "--broker", redis_url, "--out", str(tmp_path / "runs"))
    run_id = submitted.stdout.strip().splitlines()[-1]
    store = RunStore(redis.Redis.from_url(redis_url))
    while sum(store.progress(run_id).get(s, 0) for s in ("succeeded", "failed", "error")) < 4:
        time.sleep(0.01)
    resumed = cli("resume", run_id, "--broker", redis_url, "--out", str(tmp_path / "runs"), "--no-progress")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    report = report_of(tmp_path, run_id)
    assert len({r["execution_id"] for r in report["results"]}) == len(report["results"]) == cases
    assert mock_dify.stats()["runs"] == cases  # not one case ran twice
    progress = store.progress(run_id)
    assert progress["succeeded"] == cases and progress["retries_waiting"] == 0


def test_two_processes_waiting_on_one_run_write_each_line_once(tmp_path: Path, fleet: Fleet, redis_url: str) -> None:
    fleet.start(1, concurrency=4)
    plan = stub_plan([{"id": f"c{i:03d}"} for i in range(200)], stub={"simulated_delay": 0.02},
                     execution={"batch_size": 10, "concurrency": 4})
    producer, run_id = start_run(tmp_path, redis_url, plan)
    waited = cli("wait", run_id, "--broker", redis_url, "--out", str(tmp_path / "runs"), "--no-progress")
    producer.communicate(timeout=120)
    assert waited.returncode == 0 and producer.returncode == 0, waited.stdout + waited.stderr
    lines = (tmp_path / "runs" / run_id / "results.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(line)["execution_id"] for line in lines}) == 200


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_resume_itself_stopped_while_publishing_then_resumed_again(tmp_path: Path, fleet: Fleet, redis_url: str,
                                                                   signum: int) -> None:
    """The batches a resume makes are known by their members in Redis: a second resume after
    the first one died (or was interrupted) part way still runs each case of the plan once."""
    producer, run_id, _ = frozen_run(tmp_path, fleet, redis_url, 0.05)
    producer.send_signal(signal.SIGKILL)
    producer.wait()
    store = RunStore(redis.Redis.from_url(redis_url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFY_RUNNER_")}
    resume = subprocess.Popen(
        [sys.executable, "-m", "dify_runner", "resume", run_id, "--broker", redis_url, "--out",
         str(tmp_path / "runs"), "--no-progress"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    planned = CASES // BATCH
    freeze_at(resume, store, run_id, planned + 100)  # 100 of its own batches out
    info = store.get_run(run_id)
    assert info is not None and info.publish_state == "publishing"  # caught while publishing
    resume.send_signal(signum)
    resume.send_signal(signal.SIGCONT)
    out, err = resume.communicate(timeout=120)
    if signum == signal.SIGINT:
        assert resume.returncode == 130, out + err
        assert_whole(report_of(tmp_path, run_id), {"succeeded", "cancelled"})
    again = cli("resume", run_id, "--broker", redis_url, "--out", str(tmp_path / "runs"), "--no-progress")
    assert again.returncode == 0, again.stdout + again.stderr
    assert_whole(report_of(tmp_path, run_id), {"succeeded"})
