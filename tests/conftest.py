"""Shared fixtures: a real redis-server per test session, real Celery workers.

Nothing here is mocked: the suite starts its own redis-server on a free port (so runs
never share state with the machine's Redis), in-process workers for unit-level tests
and separate `celery worker` processes for fleet tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from celery import Celery
from dify_runner.config.loader import load_plan
from dify_runner.config.manifest import RunManifest
from dify_runner.config.settings import Settings
from dify_runner.producer.embedded import EmbeddedRedis, InProcessWorker, stop_processes
from dify_runner.producer.expansion import expand
from dify_runner.producer.submission import submit
from dify_runner.producer.waiting import wait_for_run
from dify_runner.worker.app import create_app
from dify_runner.worker.store import RunInfo, RunStore

from dify_runner.mockdify.process import MockDifyProcess

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture
def store(redis_url: str) -> RunStore:
    return RunStore(redis.Redis.from_url(redis_url))


@pytest.fixture
def app(redis_url: str) -> Celery:
    return create_app(redis_url, Settings())


@pytest.fixture
def worker(app: Celery) -> Iterator[InProcessWorker]:
    with InProcessWorker(app, concurrency=8) as running:
        yield running


def write_plan(directory: Path, plan: dict, name: str = "plan.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
    return path


def stub_plan(cases: list[dict], stub: dict | None = None, execution: dict | None = None, **extra: object) -> dict:
    """A plan with one stub workflow and one dataset of ``cases``."""
    workflow: dict = {"id": "wf", "base_url": "stub"}
    if stub is not None:
        workflow["stub"] = stub
    plan: dict = {
        "name": "test",
        "workflows": [workflow],
        "datasets": [{"name": "ds", "cases": cases}],
        "execution": execution or {},
    }
    plan.update(extra)
    return plan


def run_manifest(app: Celery, store: RunStore, manifest: RunManifest, timeout: float = 120) -> RunInfo:
    """Submit and wait, failing the test instead of hanging past ``timeout``."""
    submit(app, store, manifest)
    deadline = time.monotonic() + timeout

    def guard(info: RunInfo, progress: dict[str, int]) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {info.run_id} not finished after {timeout} s: {progress}")

    return wait_for_run(store, manifest.run_id, guard, poll_interval=0.05)


def wait_finished(store: RunStore, run_id: str, timeout: float = 120) -> RunInfo:
    """Poll the store until a run (submitted elsewhere) is finished."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = store.get_run(run_id)
        if info is not None and info.finished:
            return info
        time.sleep(0.05)
    raise TimeoutError(run_id)


def manifest_for(tmp_path: Path, plan: dict) -> RunManifest:
    return expand(load_plan(write_plan(tmp_path, plan)))


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``dify-runner`` as a separate process, as a user would."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIFY_RUNNER_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dify_runner", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd or REPO, timeout=timeout,
    )


class Fleet:
    """Separate `celery worker` processes against the test Redis."""

    def __init__(self, broker_url: str, log_dir: Path) -> None:
        self.broker_url = broker_url
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, count: int, concurrency: int = 8, pool: str = "threads", env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIFY_RUNNER_")}
        full_env.update({"DIFY_RUNNER_BROKER_URL": self.broker_url, **(env or {})})
        names = []
        for index in range(len(self.procs), len(self.procs) + count):
            name = f"w{index}-{os.getpid()}@localhost"
            names.append(name)
            log = open(self.log_dir / f"worker{index}.log", "wb")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "dify_runner.worker.app", "worker", "--pool", pool,
                 "--concurrency", str(concurrency), "--hostname", name, "--without-mingle", "--without-gossip",
                 "--loglevel", "INFO"],
                stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO,
            ))
        self._wait_ready(names)

    def _wait_ready(self, names: list[str], timeout: float = 60) -> None:
        app = create_app(self.broker_url, Settings())
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            replies = app.control.ping(timeout=0.5)
            alive = {name for reply in replies for name in reply}
            if set(names) <= alive:
                return
        raise RuntimeError(f"workers {names} did not start; logs in {self.log_dir}")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("worker*.log")))

    def stop(self) -> None:
        stop_processes(self.procs, timeout=20)


@pytest.fixture
def fleet(redis_url: str, tmp_path: Path) -> Iterator[Fleet]:
    running = Fleet(redis_url, tmp_path)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def mock_dify_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockDifyProcess]:
    log = tmp_path_factory.mktemp("mock") / "mock-dify.log"
    with MockDifyProcess("--latency-ms", "30", "--jitter-ms", "0", "--ping-interval", "0.05",
                         "--api-key", "app-mock", log_path=log) as server:
        yield server


@pytest.fixture
def mock_dify(mock_dify_server: MockDifyProcess) -> MockDifyProcess:
    """The session's mock Dify server, with its stats reset for this test."""
    mock_dify_server.reset()
    return mock_dify_server
